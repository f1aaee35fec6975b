"""route: chooses a route and its cluster from the request (path, headers, model)."""
