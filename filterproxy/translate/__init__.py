"""Translation between the LLM APIs clients speak and the ones upstreams speak.

Plain functions for requests and whole answers, and per-stream state machines fed the
upstream's bytes; no I/O, so every piece is testable without sockets. Each module is named
for the client's API over the upstream's: `chat_over_messages` (a Chat Completions client
served by a Messages upstream: `messages_request`, `chat_response`,
`ChatFromMessagesStream`), `messages_over_chat` (the reverse: `chat_request`,
`messages_response`, `MessagesFromChatStream`) and `responses_over_chat` (a Responses
client over Chat Completions: `responses_request`, `responses_answer`,
`ResponsesFromChatStream`; over a Messages upstream through `Piped`). The ``translate`` filter
(`filterproxy.extensions.translate.filter`) is the glue that puts them in the chain.
"""

from filterproxy.translate.chat_over_messages import (
    ChatFromMessagesStream,
    chat_response,
    messages_request,
)
from filterproxy.translate.common import CHAT, MESSAGES, RESPONSES, Untranslatable
from filterproxy.translate.messages_over_chat import (
    MessagesFromChatStream,
    chat_request,
    count_tokens_estimate,
    messages_response,
)
from filterproxy.translate.responses_over_chat import (
    Piped,
    ResponsesFromChatStream,
    responses_answer,
    responses_request,
)

__all__ = [
    "CHAT",
    "MESSAGES",
    "RESPONSES",
    "ChatFromMessagesStream",
    "MessagesFromChatStream",
    "Piped",
    "ResponsesFromChatStream",
    "Untranslatable",
    "chat_request",
    "chat_response",
    "count_tokens_estimate",
    "messages_request",
    "messages_response",
    "responses_answer",
    "responses_request",
]
