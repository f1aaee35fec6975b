"""The gateway's listening endpoints: the ``tcp:``/``tcp6:``/``ssl:`` descriptions a config
names, with a default backlog, bound with ``SO_REUSEPORT`` when workers share a port, and
``ssl:`` listeners whose certificate a reload renews (`ReloadableServerTLS`). Used by the
service with one process or many, and by the demo's mock upstream for its backlog."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.internet.interfaces import (
    IListeningPort,
    IOpenSSLServerConnectionCreator,
    IStreamServerEndpoint,
)
from zope.interface import implementer

if TYPE_CHECKING:
    from twisted.internet.ssl import CertificateOptions

# Twisted's TCP and TLS modules are imported where they are used: `twistd filterproxy`
# imports this module before it has read the config, and decides then whether pyOpenSSL
# is loaded at all (see filterproxy.runtime.lazytls).

__all__ = [
    "DEFAULT_BACKLOG",
    "ReloadableServerTLS",
    "ReusePortEndpoint",
    "ReusePortTLSEndpoint",
    "reuse_port_endpoint",
    "with_default_backlog",
]


_UNESCAPED_COLON = re.compile(r"(?<!\\):")

#: The listen backlog of tcp:, tcp6: and ssl: listeners that do not set one. Twisted's
#: default of 50 drops connection attempts when a burst of clients arrives at once (each
#: dropped SYN costs the client a 1 s retransmission); nginx uses 511, Envoy 1024.
DEFAULT_BACKLOG = 1024


def with_default_backlog(description: str) -> str:
    """*description* with ``backlog=`` added for tcp:, tcp6: and ssl: endpoints without one
    (the kernel caps it at net.core.somaxconn)."""
    kind = description.split(":", 1)[0]
    if kind not in ("tcp", "tcp6", "ssl") or "backlog=" in description:
        return description
    return f"{description}:backlog={DEFAULT_BACKLOG}"


@implementer(IOpenSSLServerConnectionCreator)
class ReloadableServerTLS:
    """The server TLS options of an ``ssl:`` listener, re-read from its key and
    certificate files by `reload` (a renewed certificate, on a config reload) while the
    listener keeps listening. New connections use the new certificate."""

    def __init__(self, description: str, options: dict[str, str]) -> None:
        self.description = description
        self.files = options
        self.current = _server_tls_options(description, options)

    def load(self) -> CertificateOptions:
        """Read the files again (raises ValueError with what is wrong)."""
        return _server_tls_options(self.description, self.files)

    def serverConnectionForTLS(self, tlsProtocol: Any) -> Any:
        return self.current.serverConnectionForTLS(tlsProtocol)


@implementer(IStreamServerEndpoint)
class ReusePortEndpoint:
    """A TCP server endpoint whose port may be shared by other processes (with
    *reuse*; without, a plain TCP listener)."""

    def __init__(
        self,
        reactor: Any,
        port: int,
        interface: str = "",
        backlog: int = DEFAULT_BACKLOG,
        *,
        reuse: bool = True,
    ) -> None:
        self.reactor = reactor
        self.port = port
        self.interface = interface
        self.backlog = backlog
        self.reuse = reuse

    def listen(self, factory: Any) -> defer.Deferred[IListeningPort]:
        return defer.execute(self._listen, factory)

    def _listen(self, factory: Any) -> IListeningPort:
        from twisted.internet import tcp

        from filterproxy.runtime._reuseport import ReusePort

        port_type = ReusePort if self.reuse else tcp.Port
        port: IListeningPort = port_type(
            self.port, factory, self.backlog, self.interface, self.reactor
        )
        port.startListening()
        return port


@implementer(IStreamServerEndpoint)
class ReusePortTLSEndpoint:
    """TLS over a `ReusePortEndpoint`: the ``ssl:`` listeners, with a certificate that
    a config reload can replace."""

    def __init__(self, tcp_endpoint: ReusePortEndpoint, options: ReloadableServerTLS) -> None:
        self.tcp_endpoint = tcp_endpoint
        self.options = options

    @property
    def port(self) -> int:
        return self.tcp_endpoint.port

    def listen(self, factory: Any) -> defer.Deferred[IListeningPort]:
        from filterproxy.runtime.teardown import tls_factory

        return self.tcp_endpoint.listen(tls_factory(self.options, False, factory))


_SSL_KEYS = {"port", "interface", "backlog", "privateKey", "certKey", "extraCertChain"}


def _server_tls_options(description: str, options: dict[str, str]) -> CertificateOptions:
    """Server TLS options from an ``ssl:`` description's key and certificate files."""
    from cryptography import x509
    from OpenSSL.crypto import X509
    from twisted.internet.ssl import CertificateOptions, PrivateCertificate

    unsupported = sorted(set(options) - _SSL_KEYS)
    if unsupported:
        raise ValueError(
            f"listener {description!r}: ssl: listeners take "
            f"{', '.join(sorted(_SSL_KEYS))}; not {', '.join(unsupported)}"
        )
    if "privateKey" not in options:
        raise ValueError(f"listener {description!r}: give privateKey=FILE (and certKey=FILE)")
    try:
        key_pem = Path(options["privateKey"]).read_bytes()
        cert_pem = Path(options.get("certKey", options["privateKey"])).read_bytes()
        # The certificates after the first in certKey are its chain (what cert-manager
        # and ACME clients write: leaf, then intermediates), sent with it; then those of
        # extraCertChain.
        chain = x509.load_pem_x509_certificates(cert_pem)[1:] + (
            x509.load_pem_x509_certificates(Path(options["extraCertChain"]).read_bytes())
            if "extraCertChain" in options
            else []
        )
    except (OSError, ValueError) as e:
        raise ValueError(f"listener {description!r}: {e}") from None
    try:
        identity = PrivateCertificate.loadPEM(cert_pem + b"\n" + key_pem)
    except Exception as e:  # OpenSSL's errors say little: name the files
        raise ValueError(
            f"listener {description!r}: cannot use the key {options['privateKey']!r} with "
            f"the certificate {options.get('certKey', options['privateKey'])!r} ({e!r})"
        ) from None
    return CertificateOptions(
        privateKey=identity.privateKey.original,
        certificate=identity.original,
        extraCertChain=[X509.from_cryptography(c) for c in chain] or None,
    )


def reuse_port_endpoint(
    reactor: Any, description: str, *, reuse: bool = True
) -> ReusePortEndpoint | ReusePortTLSEndpoint:
    """An endpoint that binds with SO_REUSEPORT (with *reuse*), for a
    ``tcp:PORT[:interface=ADDR][:backlog=N]``, ``tcp6:`` or
    ``ssl:PORT:privateKey=FILE[:certKey=FILE][:extraCertChain=FILE]`` description.

    Raises:
        ValueError: the listener cannot be shared between workers (UNIX, systemd), or an
            ssl: listener's files cannot be read.
    """
    parts = [p.replace("\\:", ":") for p in _UNESCAPED_COLON.split(description)]
    kind = parts[0]
    if kind not in ("tcp", "tcp6", "ssl"):
        raise ValueError(
            f"listener {description!r}: --workers shares tcp:, tcp6: and ssl: listeners only "
            "(a UNIX or systemd socket cannot be bound by each worker); run one worker"
        )
    options: dict[str, str] = {}
    positional: list[str] = []
    for part in parts[1:]:
        key, eq, value = part.partition("=")
        if eq:
            options[key] = value
        else:
            positional.append(part)
    port = int(options.get("port", positional[0] if positional else "0"))
    interface = options.get("interface", "::" if kind == "tcp6" else "")
    tcp_endpoint = ReusePortEndpoint(
        reactor, port, interface, int(options.get("backlog", DEFAULT_BACKLOG)), reuse=reuse
    )
    if kind == "ssl":
        return ReusePortTLSEndpoint(tcp_endpoint, ReloadableServerTLS(description, options))
    return tcp_endpoint
