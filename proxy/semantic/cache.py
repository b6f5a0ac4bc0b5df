"""The semantic cache as the pipeline and the admin port see it (docs/design.md §10)."""

from __future__ import annotations


class SemanticCache:
    async def mark_wrong(self, short_id: str) -> bool:
        """Never serve the entry `short_id` (its X-Cache-Key) semantically again, on any replica;
        counted in `sidecache_semantic_wrong_total`. False when no such entry is indexed here
        (it is marked all the same: another replica may hold it)."""
        raise NotImplementedError
