"""body-accumulate: holds the request body until it is whole, up to ``max_request_bytes``."""
