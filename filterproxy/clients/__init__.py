"""Clients of services the gateway talks to besides the upstreams (Redis)."""
