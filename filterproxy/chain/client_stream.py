"""`ClientStream`: the compiled base class of the client streams on the data path.

When the gateway is compiled, the chain's calls of the response path (per chunk:
``send_data``; per upstream read: ``hold`` and ``flush``) reach a subclass of it — the
HTTP/1.1 exchange — directly, where any other `IDownstream` (HTTP/2 streams, test
doubles) is called as a Python object. (The interface itself is declared in an
interpreted module, `filterproxy.chain.interfaces`: mypyc does not compile zope
interfaces.)
"""

from __future__ import annotations

from zope.interface import classImplements

from filterproxy.chain.interfaces import IDownstream
from filterproxy.http.headers import Headers

__all__ = ["ClientStream"]


class ClientStream:
    """Base class of the client streams on the data path (see the module's description):
    every method must be overridden."""

    def __init__(self, scheme: str = "http", client_ip: str = "") -> None:
        self.scheme = scheme
        self.client_ip = client_ip

    def send_head(self, status: int, headers: Headers, end_stream: bool) -> None:
        raise NotImplementedError

    def send_data(self, data: bytes, end_stream: bool) -> None:
        raise NotImplementedError

    def hold(self) -> None:
        raise NotImplementedError

    def flush(self) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError

    def register_producer(self, producer: object) -> None:
        raise NotImplementedError

    def unregister_producer(self) -> None:
        raise NotImplementedError


classImplements(ClientStream, IDownstream)


classImplements(ClientStream, IDownstream)
