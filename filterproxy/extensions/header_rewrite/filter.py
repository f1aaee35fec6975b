"""header-rewrite: set, append and remove request and response headers.

Rules come from three places and apply in this order, so the most specific wins: the
filter's own (every request), the chosen cluster's, the chosen route's. Values may come
from the environment (``${OPENAI_API_KEY}``), which is how provider keys are injected.

The client's credentials (``Authorization``, ``x-api-key``, ``api-key``) are removed
before the rules apply: a key a client presented to the gateway is never forwarded to a
provider, unless ``forward_client_credentials: true``.

Hop-by-hop headers are stripped and ``X-Forwarded-*`` added by the router whether or
not this filter is in the chain.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from filterproxy.config import ClusterConfig, HeaderPolicy, Node, parse_header_policy
from filterproxy.filters.api import (
    FilterContext,
    FilterStatus,
    RequestHead,
    ResponseHead,
    StreamFilter,
)

__all__ = ["CLIENT_CREDENTIALS", "HeaderRewriteConfig", "HeaderRewriteFilter"]

CLIENT_CREDENTIALS = frozenset({"authorization", "x-api-key", "api-key"})


@dataclass(frozen=True)
class HeaderRewriteConfig:
    policy: HeaderPolicy
    clusters: Mapping[str, ClusterConfig]
    forward_client_credentials: bool = False


class HeaderRewriteFilter(StreamFilter):
    """Applies the filter's, the cluster's and the route's header rules."""

    provides = ("header-rewrite",)

    config: HeaderRewriteConfig

    @classmethod
    def configure(cls, options: Mapping[str, Any], context: FilterContext) -> HeaderRewriteConfig:
        node = Node(dict(options), context.path, context.environ)
        keys = node.mapping({"request_headers", "response_headers", "forward_client_credentials"})
        forward = (
            keys["forward_client_credentials"].boolean()
            if "forward_client_credentials" in keys
            else False
        )
        return HeaderRewriteConfig(parse_header_policy(keys), context.config.clusters, forward)

    def _policies(self) -> list[HeaderPolicy]:
        info = self.callbacks.stream_info
        policies = [self.config.policy]
        if info.cluster is not None and info.cluster in self.config.clusters:
            policies.append(self.config.clusters[info.cluster].headers)
        if info.route is not None:
            policies.append(info.route.headers)
        return policies

    def decode_headers(self, head: RequestHead, end_stream: bool) -> FilterStatus:
        if not self.config.forward_client_credentials:
            head.headers.remove_all(CLIENT_CREDENTIALS)
        for policy in self._policies():
            if policy.request:
                policy.request.apply_to(head.headers)
        return FilterStatus.CONTINUE

    def encode_headers(self, head: ResponseHead, end_stream: bool) -> FilterStatus:
        for policy in self._policies():
            if policy.response:
                policy.response.apply_to(head.headers)
        return FilterStatus.CONTINUE
