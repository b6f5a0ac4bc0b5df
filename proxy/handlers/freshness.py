"""Whether a stored entry may still be served: the invalidation rules (docs/design.md §3), and the
automatic rule that a user's persona change invalidates that user's user-scoped entries."""

from __future__ import annotations

import contextlib

from proxy.cache.entry import EntryMeta
from proxy.failures import StoreUnavailable
from proxy.handlers.parse import ParsedRequest
from proxy.runtime import Runtime

PERSONA_CHANGE = "persona_change"


async def still_valid(runtime: Runtime, parsed: ParsedRequest, meta: EntryMeta) -> bool:
    """False for an entry a rule covers. A user-scoped entry records the persona it was made
    for: met by its user with another persona, it and every older user-scoped entry of that
    user are invalidated, on every replica, and the request is answered as a miss. At most one
    such rule is made per user per INVALIDATION_USER_FLUSH_INTERVAL_S (`flush_user`); the
    entry met is refused either way."""
    invalidations = runtime.invalidations
    if await invalidations.is_stale(meta):
        runtime.metrics.cache_stale.labels(parsed.endpoint).inc()
        return False
    if meta.scope == "user" and meta.persona != parsed.persona_fields:
        if meta.user_id is not None:  # a user-scoped entry always has one
            with contextlib.suppress(StoreUnavailable):  # this entry is still not served
                await invalidations.flush_user(meta.tenant, meta.user_id, PERSONA_CHANGE)
        runtime.metrics.cache_stale.labels(parsed.endpoint).inc()
        return False
    return True
