"""Google Vertex AI without Google: tests/vertex_server.py as a process, with a service
account key file whose ``token_uri`` is that server, so google-auth obtains real (mock)
access tokens from it the way it does from Google. `vertex_mock` is the context manager;
`VertexMock` reads and steers the running server."""

from __future__ import annotations

import json
import secrets
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from .conftest import Process

SERVER_SCRIPT = Path(__file__).resolve().parent.parent / "vertex_server.py"


def client_email(project: str) -> str:
    """The service account's email in *project* (what the key file and server agree on)."""
    return f"vertex-test@{project}.iam.gserviceaccount.com"


def service_account_file(
    directory: Path, token_uri: str, project: str = "test-project"
) -> tuple[Path, str]:
    """Write a service-account JSON key for *project* into *directory*, with a freshly
    generated 2048-bit RSA key and *token_uri*; its path and the public key's PEM."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public_pem = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    email = client_email(project)
    info = {
        "type": "service_account",
        "project_id": project,
        "private_key_id": secrets.token_hex(20),
        "private_key": private_pem,
        "client_email": email,
        "client_id": str(100_000_000_000_000_000_000 + secrets.randbelow(10**20)),
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": token_uri,
        "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
        "client_x509_cert_url": f"https://www.googleapis.com/robot/v1/metadata/x509/{email}",
        "universe_domain": "googleapis.com",
    }
    path = directory / "vertex-service-account.json"
    path.write_text(json.dumps(info, indent=2))
    path.chmod(0o600)
    return path, public_pem


@dataclass(frozen=True)
class VertexMock:
    """The running tests/vertex_server.py: where it listens, the key file that gets tokens
    from it, and its control endpoints."""

    process: Process
    port: int
    key_file: Path
    project: str
    client_email: str

    @property
    def url(self) -> str:
        """Its base URL (Vertex, the token endpoint and the metadata server alike)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def token_uri(self) -> str:
        """The OAuth token endpoint the key file names."""
        return f"{self.url}/token"

    def requests(self) -> list[dict[str, Any]]:
        """The Vertex calls so far: path, method, location, model, lower-case headers,
        body, token, anthropic_beta."""
        return self._get("/control/requests")  # type: ignore[no-any-return]

    def tokens(self) -> list[dict[str, Any]]:
        """The tokens issued so far: token, issued_at, expires_in, via (jwt|metadata)."""
        return self._get("/control/tokens")  # type: ignore[no-any-return]

    def set_lifetime(self, seconds: int) -> None:
        """Tokens issued from now on last *seconds*."""
        self._post("/control/lifetime", {"seconds": seconds})

    def expire_tokens(self) -> None:
        """Every token issued so far expires now (Vertex answers 401 ACCESS_TOKEN_EXPIRED)."""
        self._post("/control/expire")

    def reset(self) -> None:
        """Forget the recorded calls and the token log, restore the lifetime; tokens
        already issued stay valid."""
        self._post("/control/reset")

    def metadata_env(self) -> dict[str, str]:
        """The environment that points google-auth's metadata client (GCE, GKE Workload
        Identity) at this server. ``GCE_METADATA_HOST`` is read when
        ``google.auth.compute_engine`` is imported, so set it before that (a new process)."""
        host = f"127.0.0.1:{self.port}"
        return {"GCE_METADATA_HOST": host, "GCE_METADATA_IP": host}

    def _get(self, path: str) -> Any:
        response = httpx.get(self.url + path, timeout=10)
        response.raise_for_status()
        return response.json()

    def _post(self, path: str, document: Mapping[str, Any] | None = None) -> None:
        response = httpx.post(self.url + path, json=document or {}, timeout=10)
        response.raise_for_status()


@contextmanager
def vertex_mock(directory: Path, env: Mapping[str, str] | None = None) -> Iterator[VertexMock]:
    """tests/vertex_server.py on a free port for the ``with`` block, with a service-account
    key file in *directory* whose signature, email and ``token_uri`` it checks. *env*
    adds or overrides ``VERTEX_MOCK_*`` variables (``VERTEX_MOCK_PROJECT`` also names the
    key file's project)."""
    env = dict(env or {})
    project = env.get("VERTEX_MOCK_PROJECT") or "test-project"
    email = client_email(project)
    # The server reads the public key per token request, so it can be written once the
    # port (and with it the key file's token_uri) is known.
    public_key_file = directory / "vertex-service-account.pub.pem"
    process = Process(
        [sys.executable, str(SERVER_SCRIPT)],
        env={
            "VERTEX_MOCK_PROJECT": project,
            "VERTEX_MOCK_CLIENT_EMAIL": email,
            "VERTEX_MOCK_PUBLIC_KEY_FILE": str(public_key_file),
            **env,
        },
    )
    try:
        port = int(process.wait_for(r"PORT (\d+)").group(1))
        key_file, public_pem = service_account_file(
            directory, f"http://127.0.0.1:{port}/token", project
        )
        public_key_file.write_text(public_pem)
        yield VertexMock(process, port, key_file, project, email)
    finally:
        process.stop()
