"""The admin token, as programs send it (bearer) and as browsers do (Basic)."""

from __future__ import annotations

import base64

from filterproxy.server.admin import authorized

TOKEN = "t0ken-of-the-admin"


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_the_token_as_bearer_or_as_a_basic_password_passes() -> None:
    assert authorized(f"Bearer {TOKEN}", TOKEN) is None
    assert authorized(f"bearer   {TOKEN} ", TOKEN) is None
    assert authorized(basic("admin", TOKEN), TOKEN) is None
    assert authorized(basic("", TOKEN), TOKEN) is None


def test_anything_else_is_401_with_both_challenges() -> None:
    for header in (
        None,
        "",
        f"Token {TOKEN}",
        "Bearer wrong",
        basic(TOKEN, "wrong"),  # the token as the user name is not the password
        "Basic " + base64.b64encode(TOKEN.encode()).decode(),  # no colon
        "Basic not-base64!",
    ):
        refusal = authorized(header, TOKEN)
        assert refusal is not None and refusal.status == 401, header
        schemes = [v.split()[0] for n, v in refusal.headers if n == "www-authenticate"]
        assert schemes == ["Bearer", "Basic"]
    none_configured = authorized(f"Bearer {TOKEN}", None)
    assert none_configured is not None and none_configured.status == 403
