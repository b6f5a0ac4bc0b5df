"""The ledger writer: `record()` packs and queues in O(1) on the request path (records.pack
says why packed); a background task flushes by size or time to the sink; what the sink refuses
goes to the journal and is replayed, in order, when the sink works again (docs/design.md §5).

Nothing is lost on the way: a batch is taken off the queue only by the task that then writes
or journals it, and put back if that task is cancelled; a batch the database may already have
taken is written again at worst, which the sinks ignore by record id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from itertools import islice

from proxy.ledger.backoff import SinkBackoff
from proxy.ledger.journal import Journal, encode_frame
from proxy.ledger.records import LedgerRecord, pack, packed_id
from proxy.ledger.sink import LedgerSink
from proxy.ledger.stats import CostTally, TokenTally, WriterStats
from proxy.settings import LedgerSettings

log = logging.getLogger("sidecache.ledger")
WARN_INTERVAL_S = 60.0

_DEFAULTS = LedgerSettings()  # the writer's defaults are the settings' (one place to change)


class LedgerWriter:
    def __init__(
        self,
        sink: LedgerSink,
        journal: Journal,
        *,
        batch_size: int = _DEFAULTS.batch_size,
        flush_interval_s: float = _DEFAULTS.flush_interval_s,
        queue_max: int = _DEFAULTS.queue_max,
        retry_min_s: float = 0.5,
        retry_max_s: float = _DEFAULTS.retry_max_s,
        rejects: Journal | None = None,
        enabled: bool = True,
    ) -> None:
        self.enabled = enabled  # False (LEDGER_ENABLED=false): record_outcome records nothing
        self.tokens = TokenTally()  # the recorded requests' tokens, for the metrics
        self.costs = CostTally()  # and their cost and saved USD
        self.sink = sink
        self.journal = journal
        self.rejects = rejects or Journal(journal.path.with_name(journal.path.name + ".rejected"))
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.queue_max = queue_max
        self._backoff = SinkBackoff(retry_min_s, retry_max_s)
        self._queue: deque[bytes] = deque()  # packed records
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False  # close() has begun: the background task stops
        self._closed = False  # close() has drained the queue: records go to the journal
        self._replay_offset = 0
        self._dropped_since_warning = 0
        self._warned_at = -WARN_INTERVAL_S
        self.written = self.duplicates = self.journaled = self.replayed = 0
        self.dropped = self.rejected = self.failures = 0

    @property
    def stats(self) -> WriterStats:
        return WriterStats(
            sink=self.sink.name,
            sink_up=self._backoff.up,
            queued=len(self._queue),
            written=self.written,
            duplicates=self.duplicates,
            journaled=self.journaled,
            replayed=self.replayed,
            journal_pending=self.journal.pending_records,
            dropped=self.dropped,
            rejected=self.rejected,
            failures=self.failures,
        )

    def record(self, rec: LedgerRecord) -> None:
        """Queues one record; never blocks, never raises. Once close() has finished, the record
        goes straight to the journal (a blocking append: shutdown only)."""
        try:
            if self._closed:
                self._journal_now(rec)
            elif len(self._queue) >= self.queue_max:
                self._drop()
            else:
                self._queue.append(pack(rec))
                if len(self._queue) >= self.batch_size:
                    self._wake.set()
        except Exception:
            log.exception("ledger: could not queue a record")

    async def start(self) -> None:
        await self.journal.open()
        await self.rejects.open()
        if self._task is None:
            if self.journal.pending:
                self._wake.set()
            self._task = asyncio.create_task(self._run(), name="sidecache-ledger-writer")

    async def flush(self) -> None:
        """Writes everything queued now, first replaying the journal; whatever the database
        refuses is journaled. Tries the database even inside a retry pause. A no-op after
        close()."""
        if not self._closed:
            await self._flush(force=True)

    async def close(self, timeout_s: float = 10.0) -> None:
        """Stops the background task and flushes everything: to the database if it answers
        within `timeout_s`, else to the journal. Records that arrive meanwhile are included.
        Safe to call twice, and from a SIGTERM shutdown path."""
        if self._closing:
            return
        self._closing = True
        self._wake.set()
        deadline = asyncio.get_running_loop().time() + timeout_s
        if self._task is not None:
            # The loop sees `_closing` after its current flush; cancel it only if that hangs.
            done, _ = await asyncio.wait({self._task}, timeout=timeout_s)
            if not done:
                self._task.cancel()
                await asyncio.wait({self._task}, timeout=1.0)
            self._task = None
        try:
            async with asyncio.timeout_at(deadline):
                await self._flush(force=True)
        except TimeoutError:
            log.warning("ledger: database too slow at shutdown; journaling the rest")
        async with self._lock:
            while self._queue:
                batch = self._take()
                if not await self._journal(batch):
                    log.error("ledger: %d records could not be journaled at shutdown", len(batch))
                    self._queue.extendleft(reversed(batch))
                    break
            self._closed = True
        with contextlib.suppress(Exception):
            await self.sink.close()

    async def _run(self) -> None:
        while not self._closing:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.flush_interval_s):
                    await self._wake.wait()
            by_size = self._wake.is_set()
            self._wake.clear()
            if self._closing:
                return
            try:
                await self._flush(force=False, whole_batches=by_size)
            except Exception:
                log.exception("ledger: flush failed")

    async def _flush(self, *, force: bool, whole_batches: bool = False) -> None:
        """`whole_batches` (the queue's size started it): only full batches, the rest waits, so
        records arriving while a batch is written do not make many small transactions."""
        async with self._lock:
            use_sink = force or self._backoff.due
            if use_sink and self.journal.pending:
                use_sink = await self._replay()
            while self._queue and (len(self._queue) >= self.batch_size or not whole_batches):
                batch = self._take()
                try:
                    if use_sink and not self.journal.pending:
                        if await self._write(batch):
                            continue
                        use_sink = False
                    journaled = await self._journal(batch)
                except asyncio.CancelledError:
                    self._queue.extendleft(reversed(batch))
                    raise
                if not journaled:
                    self._queue.extendleft(reversed(batch))
                    return

    def _take(self) -> list[bytes]:
        queue = self._queue  # whole-deque copies: no Python step per record
        if len(queue) <= self.batch_size:
            batch = list(queue)
            queue.clear()
        else:
            batch = list(islice(queue, self.batch_size))
            self._queue = deque(islice(queue, self.batch_size, None))
        return batch

    async def _write(self, batch: list[bytes]) -> bool:
        """True once the database holds every record of `batch` (or refused some as bad data,
        which are set aside); False when it is unavailable."""
        try:
            inserted = await self.sink.write(batch)
        except Exception as exc:
            if self.sink.is_poison(exc) and len(batch) > 1:
                return await self._write_singly(batch)
            if self.sink.is_poison(exc):
                await self._reject(batch, exc)
                return True
            self._unavailable(exc)
            return False
        self.written += inserted
        self.duplicates += len(batch) - inserted
        self._available()
        return True

    async def _write_singly(self, batch: list[bytes]) -> bool:
        for rec in batch:
            if not await self._write([rec]):
                return False
        return True

    async def _reject(self, batch: list[bytes], exc: BaseException) -> None:
        self.rejected += len(batch)
        log.error(
            "ledger: the database refused record %s as bad data (%s); kept in %s",
            packed_id(batch[0]),
            type(exc).__name__,
            self.rejects.path,
        )
        try:
            await self.rejects.append(batch)
        except OSError as err:
            log.error("ledger: cannot keep refused records in %s: %s", self.rejects.path, err)

    async def _replay(self) -> bool:
        """Writes the journal to the database from where the last attempt stopped; empties it
        when all of it is in. False if the database failed on the way."""
        offset = self._replay_offset
        while True:
            try:
                records, end = await self.journal.read_from(offset, self.batch_size)
            except OSError as exc:
                log.error("ledger: cannot read the journal %s: %s", self.journal.path, exc)
                return False
            if not records:
                break
            if not await self._write(records):
                self._replay_offset = offset
                return False
            self.replayed += len(records)
            offset = end
        try:
            await self.journal.clear(expected_end=offset)
        except OSError as exc:
            log.error("ledger: cannot empty the journal %s: %s", self.journal.path, exc)
            self._replay_offset = offset
            return False
        self._replay_offset = 0
        log.info("ledger: journal replayed into %s", self.sink.description)
        return True

    async def _journal(self, batch: list[bytes]) -> bool:
        try:
            await self.journal.append(batch)
        except OSError as exc:
            log.error("ledger: cannot append to the journal %s: %s", self.journal.path, exc)
            return False
        self.journaled += len(batch)
        return True

    def _journal_now(self, rec: LedgerRecord) -> None:
        self.journal.append_sync(encode_frame([pack(rec)]))
        self.journal.pending_records += 1
        self.journaled += 1

    def _unavailable(self, exc: BaseException) -> None:
        self.failures += 1
        if self._backoff.failed():
            log.warning(
                "ledger: %s unavailable (%s: %s); journaling to %s until it returns",
                self.sink.description,
                type(exc).__name__,
                exc,
                self.journal.path,
            )

    def _available(self) -> None:
        if self._backoff.succeeded():
            log.info("ledger: %s is back", self.sink.description)

    def _drop(self) -> None:
        self.dropped += 1
        self._dropped_since_warning += 1
        now = time.monotonic()
        if now - self._warned_at >= WARN_INTERVAL_S:
            log.warning(
                "ledger: queue full (%d records): dropped %d records since the last warning",
                self.queue_max,
                self._dropped_since_warning,
            )
            self._warned_at = now
            self._dropped_since_warning = 0
