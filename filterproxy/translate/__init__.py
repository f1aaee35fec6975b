"""Translation between the LLM APIs clients speak and the ones upstreams speak.

Plain functions for requests and whole answers, and per-stream state machines fed the
upstream's bytes (`MessagesFromChatStream`, `ChatFromMessagesStream`); no I/O, so every
piece is testable without sockets. The ``translate`` filter
(`filterproxy.filters.translate`) is the glue that puts them in the chain.
"""

from filterproxy.translate.chat_client import (
    ChatFromMessagesStream,
    chat_response,
    messages_request,
)
from filterproxy.translate.common import CHAT, MESSAGES, RESPONSES, Untranslatable
from filterproxy.translate.messages_client import (
    MessagesFromChatStream,
    chat_request,
    count_tokens_estimate,
    messages_response,
)

__all__ = [
    "CHAT",
    "MESSAGES",
    "RESPONSES",
    "ChatFromMessagesStream",
    "MessagesFromChatStream",
    "Untranslatable",
    "chat_request",
    "chat_response",
    "count_tokens_estimate",
    "messages_request",
    "messages_response",
]
