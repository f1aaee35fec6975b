"""What the gateway runs on: the reactor (epoll with direct dispatch), listening endpoints,
per-reactor deadlines, connection teardown, lazy TLS, and the list of private APIs of
the libraries relied on."""
