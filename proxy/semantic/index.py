"""The in-process search over each partition's vectors: exact (a matrix product), by choice.

A partition holds one tenant's questions for one model, scope, system prompt and conversation
prefix: hundreds of vectors, rarely tens of thousands. At 10,000 vectors of 384 floats an exact
search is one 15 MB matrix-vector product, about a millisecond on one core (`make bench`), with
perfect recall and nothing to build, tune or rebuild on deletion; an approximate index would
buy nothing measurable at these sizes and lose candidates. Partitions are kept in LRU order and
the least recently searched are dropped when the process holds `max_vectors` (they refill from
the store on their next search).
"""

from __future__ import annotations

import time
from collections import OrderedDict

import numpy as np
from numpy.typing import NDArray

from proxy.semantic.match import Candidate
from proxy.semantic.vector_log import VectorRecord

_TOP = 5  # candidates returned per search, most similar first


class Partition:
    """One partition's vectors, their questions and expiries, and how far its log was read."""

    def __init__(self, dimension: int, capacity: int) -> None:
        self._matrix = np.zeros((min(capacity, 64), dimension), dtype=np.float32)
        self._capacity = capacity
        self._digests: list[str] = []
        self._texts: list[str] = []
        self._expires: list[float] = []
        self._row_of: dict[str, int] = {}
        self.cursor = ""  # the shared log's position this partition has read up to
        self.synced_at = 0.0  # monotonic time of the last read of the log

    @property
    def dimension(self) -> int:
        return int(self._matrix.shape[1])

    def __len__(self) -> int:
        return len(self._digests)

    def add(self, record: VectorRecord, vector: NDArray[np.float32]) -> int:
        """Adds or replaces the record's vector; how many vectors the partition gained."""
        row = self._row_of.get(record.digest)
        if row is not None:
            self._matrix[row] = vector
            self._texts[row] = record.text
            self._expires[row] = record.expires_at
            return 0
        dropped = 0
        if len(self._digests) >= self._capacity:
            dropped = self._drop_oldest(max(1, self._capacity // 10))
        row = len(self._digests)
        if row == self._matrix.shape[0]:
            grown = np.zeros((min(row * 2, self._capacity), self._matrix.shape[1]), np.float32)
            grown[:row] = self._matrix[:row]
            self._matrix = grown
        self._matrix[row] = vector
        self._digests.append(record.digest)
        self._texts.append(record.text)
        self._expires.append(record.expires_at)
        self._row_of[record.digest] = row
        return 1 - dropped

    def remove(self, digest: str) -> bool:
        """Never found again (its row is zeroed: it can match nothing)."""
        row = self._row_of.get(digest)
        if row is None:
            return False
        self._matrix[row] = 0.0
        self._expires[row] = 0.0
        return True

    def starting_with(self, prefix: str) -> list[str]:
        return [digest for digest in self._row_of if digest.startswith(prefix)]

    def search(self, query: NDArray[np.float32], now: float) -> list[Candidate]:
        count = len(self._digests)
        if count == 0:
            return []
        similarities = self._matrix[:count] @ query
        top = min(_TOP, count)
        best = np.argpartition(-similarities, top - 1)[:top]
        best = best[np.argsort(-similarities[best])]
        return [
            Candidate(self._digests[i], float(similarities[i]), self._texts[i])
            for i in best.tolist()
            if self._expires[i] > now
        ]

    def _drop_oldest(self, n: int) -> int:
        keep = slice(n, len(self._digests))
        self._matrix[: len(self._digests) - n] = self._matrix[keep].copy()
        self._digests = self._digests[keep]
        self._texts = self._texts[keep]
        self._expires = self._expires[keep]
        self._row_of = {digest: i for i, digest in enumerate(self._digests)}
        return n


class VectorIndex:
    """Every partition this process has searched, bounded in vectors overall."""

    def __init__(self, max_per_partition: int, max_vectors: int) -> None:
        self._max_per_partition = max_per_partition
        self._max_vectors = max_vectors
        self._partitions: OrderedDict[str, Partition] = OrderedDict()
        self.vectors = 0

    def partition(self, name: str, dimension: int) -> Partition:
        """The partition `name` (its name covers the embedder and `dimension`)."""
        found = self._partitions.get(name)
        if found is None:
            found = self._partitions[name] = Partition(dimension, self._max_per_partition)
        else:
            self._partitions.move_to_end(name)
        return found

    def add(self, name: str, record: VectorRecord) -> None:
        vector = np.frombuffer(record.vector, dtype=np.float32)
        partition = self.partition(name, len(vector))
        if len(vector) != partition.dimension or record.expires_at <= time.time():
            return  # a broken record, or an entry already gone
        self.vectors += partition.add(record, vector)
        while self.vectors > self._max_vectors and len(self._partitions) > 1:
            _, oldest = self._partitions.popitem(last=False)
            self.vectors -= len(oldest)

    def remove(self, digest: str) -> bool:
        """Removes `digest` (or, given 16 characters, the entry whose X-Cache-Key it is) from
        every partition held here."""
        found = False
        for partition in self._partitions.values():
            for full in partition.starting_with(digest):
                found = partition.remove(full) or found
        return found
