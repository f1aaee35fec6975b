"""header-rewrite: sets, adds and removes request and response headers."""
