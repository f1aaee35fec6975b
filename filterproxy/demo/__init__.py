"""The demo: a mock upstream that streams like a provider, and the config that serves it."""
