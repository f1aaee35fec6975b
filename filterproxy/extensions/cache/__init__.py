"""cache: answers kept and replayed, identical requests in flight merged (routes with
``cache``).

A request on a cached route is keyed on the request the upstream would get (`keying`)
and its partition (whose answers it may be given). It is answered from the cache when
an entry is there (`store`: this process's memory, or Redis shared by replicas) — as an
event stream or a JSON body, whichever it asks for (`shapes`) — or waits on an
identical request's answer in flight (`flight`), or goes upstream, its complete,
successful answer stored for the route's ``ttl``. The parts: `config`, `keying` (pure),
`shapes` (pure), `store`, `flight`, `filter` (the glue), `metrics`, `admin`
(``/cache`` on the admin listener).
"""

from filterproxy.extensions.cache.filter import CacheFilter

__all__ = ["CacheFilter"]
