"""filterproxy: an LLM gateway on Twisted."""

__version__ = "0.1.0"
