"""When the gateway loads pyOpenSSL: the decision (filterproxy.runtime.lazytls.uses_tls), the
config key, and hiding it while Twisted's networking is imported (in a fresh
interpreter: this one has imported it long ago)."""

from __future__ import annotations

import textwrap

import pytest

from filterproxy.config import ConfigError
from filterproxy.extensions.builtin import parse_config
from filterproxy.runtime.lazytls import uses_tls

from .fresh_interpreter import run_python


def config(cluster_url: str = "http://127.0.0.1:9101", extra: str = "") -> object:
    return parse_config(
        textwrap.dedent(
            f"""
            clusters: {{local: {{url: "{cluster_url}"}}}}
            routes: [{{cluster: local}}]
            {extra}
            """
        ),
        environ={},
    )


CLEARTEXT = ["tcp:8080:interface=127.0.0.1"]
ADMIN = "tcp:9901:interface=127.0.0.1"


def test_a_cleartext_config_needs_no_tls() -> None:
    assert not uses_tls(config(), CLEARTEXT, ADMIN)  # type: ignore[arg-type]
    assert not uses_tls(config(), ["unix:/run/fp.sock", "systemd:domain=INET:index=0"], None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("cluster_url", "extra", "listeners", "admin"),
    [
        ("https://api.openai.com", "", CLEARTEXT, ADMIN),
        ("http://127.0.0.1:9101", "preload_tls: true", CLEARTEXT, ADMIN),
        ("http://127.0.0.1:9101", "", ["ssl:8443:privateKey=k.pem"], ADMIN),
        ("http://127.0.0.1:9101", "", CLEARTEXT, "ssl:9901:privateKey=k.pem"),
        ("http://127.0.0.1:9101", 'mock_upstream: "ssl:9100:privateKey=k.pem"', CLEARTEXT, None),
    ],
)
def test_tls_anywhere_loads_it_at_start(
    cluster_url: str, extra: str, listeners: list[str], admin: str | None
) -> None:
    assert uses_tls(config(cluster_url, extra), listeners, admin)  # type: ignore[arg-type]


def test_preload_tls_must_be_a_boolean() -> None:
    with pytest.raises(ConfigError) as raised:
        config(extra="preload_tls: sometimes")
    assert "preload_tls" in str(raised.value)


def test_twisted_networking_imported_with_openssl_hidden_works_and_tls_loads_later() -> None:
    """Inside the block pyOpenSSL is missing as if not installed, and Twisted's TCP,
    reactor and endpoints import without it; afterwards it imports, and the TLS layer
    the gateway uses (twisted.protocols.tls) works."""
    code = """
        import sys
        from filterproxy.runtime.lazytls import openssl_hidden
        with openssl_hidden():
            try:
                import OpenSSL
            except ModuleNotFoundError as e:
                print("hidden:", e.name)
            from filterproxy.runtime.reactor import install_if_unset
            install_if_unset()
            import twisted.internet.endpoints
            import filterproxy.server.service
        print("loaded inside:", "OpenSSL" in sys.modules)
        from twisted.internet.ssl import CertificateOptions
        from twisted.protocols.tls import TLSMemoryBIOFactory
        print("loaded after:", "OpenSSL" in sys.modules, CertificateOptions().getContext() is not None)
    """
    assert run_python(code).splitlines() == [
        "hidden: OpenSSL",
        "loaded inside: False",
        "loaded after: True True",
    ]
