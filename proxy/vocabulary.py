"""The words every layer shares: the understood endpoints, the cache statuses a response can
carry, and the Redis keyspace. Declared once here; everything else imports them.

Redis keys all start with `sc:`. A key that a script, a transaction or a multi-key command
touches together with others carries a Redis Cluster hash tag (`{...}`), so they share a slot.
"""

from __future__ import annotations

from enum import StrEnum


class Endpoint(StrEnum):
    """An endpoint the sidecar understands (caches, batches, costs); the value is the name the
    ledger, the metrics and the invalidation selectors use."""

    CHAT = "chat.completions"
    COMPLETIONS = "completions"
    EMBEDDINGS = "embeddings"
    MODERATIONS = "moderations"
    RESPONSES = "responses"  # OpenAI's Responses API
    MESSAGES = "messages"  # Anthropic's Messages API

    @property
    def path(self) -> str:
        """Its route on the proxy port (and below the upstream's base URL)."""
        return "/v1/" + self.value.replace(".", "/")


# The metrics label of every other /v1/* route, which is relayed unchanged.
PASSTHROUGH = "other"


class CacheStatus(StrEnum):
    """The `X-Cache` header of an understood answer."""

    HIT = "HIT"  # served from the cache
    MISS = "MISS"  # this request's own upstream call answered it
    BYPASS = "BYPASS"  # Cache-Control: no-cache or no-store; the upstream answered
    COALESCED = "COALESCED"  # another request's identical upstream call answered it


class CacheMatch(StrEnum):
    """How a hit matched (`X-Cache-Match`, the ledger's `cache_match`)."""

    EXACT = "exact"  # the same request, byte for byte once canonical
    SEMANTIC = "semantic"  # a paraphrase of the last user message, same partition, guards passed


# -- the Redis keyspace ----------------------------------------------------------------------

SHARED_SECRET_KEY = "sc:secret"  # the tenant-hash secret replicas agree on when none is set
FLIGHTS_CHANNEL = "sc:flights"  # "the entry for this key is stored" notices between replicas
INVALIDATION_GENERATION_KEY = "sc:{inv}:gen"
INVALIDATION_RULES_KEY = "sc:{inv}:rules"
INVALIDATION_CHANNEL = "sc:invalidations"
# Templates, filled with `%` (an operator, not a call: the entry key is made on every hit).
ENTRY_KEY = "sc:e:{%s}"  # a stored answer (or embedding item), by its key's digest
SEMANTIC_LOG_KEY = "sc:s:{%s}"  # a semantic partition's vectors, appended in order (a stream)
# A semantic hit an operator reported wrong, by the entry's X-Cache-Key: never served again.
SEMANTIC_WRONG_KEY = "sc:w:%s"
LOCK_KEY = "sc:l:{%s}"  # an entry's cross-replica single-flight lock: the entry's slot
BUDGET_KEY_PREFIX = "sc:b:{%s}"  # every spend counter of one tenant (and its users): one slot
RATE_KEY_PREFIX = "sc:rl:{%s}"  # every rate-limit log of one tenant (and its users): one slot
RATE_OVERRIDES_KEY = "sc:rl:overrides"  # the admin's per-tenant and per-user limits (a hash)
