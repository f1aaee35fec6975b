"""The filter chain's engine (internal): builds the chain from the config (`registry`), runs
one request through it (`manager`, `iteration`) and defines what it talks to on either
side (`interfaces`, `client_stream`). Filters use `filterproxy.filters` instead."""
