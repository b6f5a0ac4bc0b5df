"""The semantic cache as the pipeline and the admin port see it (docs/design.md §10).

`probe` runs after an exact miss: it embeds the request's question, names its partition (all of
the request but the question, exactly), brings the partition up to date from the shared log at
most every `SYNC_S`, searches it and lets the guards choose. The pipeline then reads the chosen
entry like an exact one (invalidation rules apply) and serves it; or, on a miss whose answer was
stored, calls `remember` so that the next paraphrase finds it, on this replica at once and on
the others within `SYNC_S`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import numpy as np

from proxy.cache.store import CacheStore
from proxy.keys import KeyMaker, ScopePart
from proxy.semantic.embedder import Embedder, Vector
from proxy.semantic.guards import read_text
from proxy.semantic.index import VectorIndex
from proxy.semantic.match import Candidate, pick
from proxy.semantic.metrics import SemanticMetrics
from proxy.semantic.question import split_question
from proxy.semantic.vector_log import VectorLog, VectorRecord
from proxy.settings import SemanticSettings
from proxy.vocabulary import SEMANTIC_WRONG_KEY

log = logging.getLogger("sidecache.semantic")
# How stale a replica's view of a partition may be: an entry stored on one replica is found
# by another within this (docs/design.md §10 promises a second).
SYNC_S = 0.5


class Probe(NamedTuple):
    """One request's semantic lookup: what `remember` needs, and the candidate chosen."""

    partition: str
    vector: Vector
    question: str
    chosen: Candidate | None
    rejected: bool = False  # candidates reached the threshold, and the verifier refused them


class SemanticCache:
    def __init__(
        self,
        settings: SemanticSettings,
        embedder: Embedder,
        log: VectorLog,
        store: CacheStore,
        keys: KeyMaker,
        metrics: SemanticMetrics,
        wrong_ttl_s: int,
    ) -> None:
        self.threshold = settings.threshold
        self.serve_tool_calls = settings.serve_tool_calls
        self.metrics = metrics
        self._embedder = embedder
        self._log = log
        self._store = store
        self._keys = keys
        self._index = VectorIndex(settings.max_per_partition, settings.max_vectors)
        self._wrong_ttl_s = wrong_ttl_s
        self._reject: Callable[[str], None] = lambda guard: metrics.rejections.labels(guard).inc()
        self._writes: set[asyncio.Task[None]] = set()
        metrics.vectors.set_function(lambda: float(self._index.vectors))

    @property
    def ready(self) -> bool:
        return self._embedder.ready

    async def start(self) -> None:
        await self._embedder.start()

    async def close(self) -> None:
        if self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)
        await self._embedder.close()

    async def probe(
        self,
        tenant: str,
        endpoint: str,
        scope: ScopePart,
        body: Mapping[str, Any],
        credentials: Mapping[str, str],
        threshold: float,
    ) -> Probe | None:
        """None when the request has no question or it cannot be embedded now."""
        question = split_question(body)
        if question is None:
            return None
        started = time.perf_counter()
        try:
            vector = await self._embedder.embed(question.text, credentials)
        except Exception as exc:  # the model failed on this text: a plain miss, never a 500
            log.warning("semantic embedding failed: %s", type(exc).__name__)
            return None
        if vector is None:
            return None
        index_name = f"{self._embedder.name}/{len(vector)}"
        partition = self._keys.partition_key(tenant, endpoint, question.rest, scope, index_name)
        name = partition.digest
        await self._sync(name, len(vector))
        candidates = self._index.partition(name, len(vector)).search(vector, time.time())
        chosen = pick(read_text(question.text), candidates, threshold, self._reject)
        self.metrics.lookup_seconds.observe(time.perf_counter() - started)
        rejected = chosen is None and bool(candidates) and candidates[0].similarity >= threshold
        return Probe(name, vector, question.text, chosen, rejected)

    def remember(self, probe: Probe, digest: str, ttl_s: int) -> None:
        """Indexes a stored answer's question here at once; shares it in the background."""
        record = VectorRecord(
            digest=digest,
            vector=np.ascontiguousarray(probe.vector, dtype=np.float32).tobytes(),
            text=probe.question,
            expires_at=time.time() + ttl_s,
        )
        self._index.add(probe.partition, record)
        self.metrics.stored.inc()
        if self._log.shared:
            task = asyncio.create_task(self._log.append(probe.partition, record, ttl_s))
            self._writes.add(task)
            task.add_done_callback(self._writes.discard)

    def forget(self, digest: str) -> None:
        """The entry is gone or stale: not a candidate here any more."""
        self._index.remove(digest)

    async def mark_wrong(self, short_id: str) -> bool:
        """Never serve the entry `short_id` (its X-Cache-Key) semantically again, on any replica;
        counted in `sidecache_semantic_wrong_total`. False when no such entry is indexed here
        (it is marked all the same: another replica may hold it)."""
        await self._store.put(SEMANTIC_WRONG_KEY % short_id, b"1", self._wrong_ttl_s)
        self.metrics.wrong.inc()
        return self._index.remove(short_id)

    async def _sync(self, name: str, dimension: int) -> None:
        partition = self._index.partition(name, dimension)
        now = time.monotonic()
        if not self._log.shared or now - partition.synced_at < SYNC_S:
            return
        partition.synced_at = now
        read = await self._log.read(name, partition.cursor)
        if read is None:
            return
        records, partition.cursor = read
        for record in records:
            self._index.add(name, record)
