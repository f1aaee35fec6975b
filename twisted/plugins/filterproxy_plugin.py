"""twistd plugin: ``twistd -n filterproxy -c conf.yaml``."""

from twisted.application.service import ServiceMaker

filterproxy = ServiceMaker(
    "filterproxy",
    "filterproxy.server.tap",
    "An LLM gateway: filter-chain streaming reverse proxy for OpenAI-compatible APIs.",
    "filterproxy",
)
