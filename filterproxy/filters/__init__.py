"""The filter API: everything a filter — built in or yours — imports.

A filter subclasses `StreamFilter` and overrides the hooks it needs (see
``docs/filters.md``). The public names, all importable from here:

- `StreamFilter`, `IStreamFilter`: what a filter is; `FilterStatus`, `DataResult`,
  `HeadersResult`: what its hooks return; `RequestHead`, `ResponseHead`, `StreamInfo`:
  what they see; `RequestTooLarge`, `ContinueInsideHook`: what the chain raises at them;
- `IFilterCallbacks`: what every filter may call (``self.callbacks``);
  `IStreamOwner`: the opt-in calls of a filter that owns its stream
  (``self.callbacks.own_stream()``);
- `FilterState`: the request's typed state, shared between filters
  (``stream_info.state``);
- `FilterContext`, `Resources`: what ``configure`` gets — the config, the entry's key
  path, and the process's shared things.

`filterproxy.testing.FilterHarness` runs filters in the real chain for tests.
"""

from filterproxy.filters.api import (
    ContinueInsideHook,
    DataResult,
    FilterContext,
    FilterStatus,
    HeadersResult,
    IFilterCallbacks,
    IStreamFilter,
    RequestHead,
    RequestTooLarge,
    ResponseHead,
    StreamFilter,
    StreamInfo,
)
from filterproxy.filters.resources import Resources
from filterproxy.filters.state import FilterState
from filterproxy.filters.stream_owner import IStreamOwner

__all__ = [
    "ContinueInsideHook",
    "DataResult",
    "FilterContext",
    "FilterState",
    "FilterStatus",
    "HeadersResult",
    "IFilterCallbacks",
    "IStreamFilter",
    "IStreamOwner",
    "RequestHead",
    "RequestTooLarge",
    "Resources",
    "ResponseHead",
    "StreamFilter",
    "StreamInfo",
]
