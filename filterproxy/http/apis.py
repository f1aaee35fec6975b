"""The client APIs the gateway knows, and which one a request speaks (by its path)."""

from __future__ import annotations

from typing import Final

__all__ = ["ALL_APIS", "CHAT", "MESSAGES", "RESPONSES", "client_api"]

#: OpenAI Chat Completions (``/v1/chat/completions``).
CHAT: Final = "chat"
#: Anthropic Messages (``/v1/messages``).
MESSAGES: Final = "messages"
#: OpenAI Responses (``/v1/responses``).
RESPONSES: Final = "responses"
ALL_APIS: Final = frozenset({CHAT, MESSAGES, RESPONSES})


def client_api(path: str) -> str | None:
    """The API a request path belongs to (query string ignored), or None for any other
    path (models, embeddings, …)."""
    path = path.split("?", 1)[0].rstrip("/")
    if path.endswith("/chat/completions"):
        return CHAT
    if path.endswith("/messages") or path.endswith("/messages/count_tokens"):
        return MESSAGES
    if "/responses" in path:
        return RESPONSES
    return None
