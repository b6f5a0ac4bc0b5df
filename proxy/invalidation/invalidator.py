"""Invalidation rules made, shared between replicas, and checked on hits (docs/design.md §3).

Without Redis the rules live in this process. With Redis, one script increments the shared
generation (`INVALIDATION_GENERATION_KEY`), adds the rules to a sorted set
(`INVALIDATION_RULES_KEY`, scored by time so rules older than the longest TTL are trimmed) and
publishes them, all atomically, so every replica learns them in generation order. A replica
also reads the shared generation with every hit, in the same round trip as the entry
(`RedisStore`): a replica that has not yet heard of a rule reloads the rules before it answers.
That is what makes an invalidation effective on every replica at once, at the cost of one small
extra reply per hit and no extra round trip.

Both tables are bounded by `max_rules` (docs/design.md §3): the book here collapses rules
(`RuleBook`), and the script collapses the shared sorted set the same way, so a flood of rules
costs its tenant misses, never memory, and never serves a stale entry. A collapse in Redis is not
announced: a replica that holds the precise rules is as correct as one that reloads the broader
ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

import msgspec
from redis.exceptions import RedisError

from proxy.cache.cluster import RedisClient
from proxy.cache.entry import EntryMeta
from proxy.cache.store import CacheStore
from proxy.failures import StoreUnavailable
from proxy.invalidation.rules import Rule, RuleBook
from proxy.invalidation.script import ADD_RULES, ADD_RULES_KEYS
from proxy.invalidation.selectors import Selector
from proxy.vocabulary import (
    INVALIDATION_CHANNEL,
    INVALIDATION_GENERATION_KEY,
    INVALIDATION_RULES_KEY,
)

log = logging.getLogger("sidecache.invalidation")
_RETRY_S = 1.0
_encode = msgspec.json.Encoder().encode
_decode_selector = msgspec.json.Decoder(Selector).decode
_PRUNE_EVERY = 64  # rules added between two prunings of expired ones


class Stamp(msgspec.Struct, frozen=True):
    """When an invalidation took effect: its generation and the (shared) clock's time."""

    generation: int
    at: float


class Invalidator:
    def __init__(
        self,
        store: CacheStore,
        redis: RedisClient | None,
        *,
        max_age_s: int,
        timeout_ms: int,
        on_rule: Callable[[str], None] | None = None,
        max_rules: int = 10_000,
        user_flush_interval_s: float = 60.0,
    ) -> None:
        self._store = store
        self._redis = redis
        self._max_age_s = max_age_s
        self._timeout_s = timeout_ms / 1000
        self._on_rule = on_rule
        self._max_rules = max_rules
        self._book = RuleBook(max_rules)
        # (tenant, user) -> when this process last flushed that user's entries; bounded like
        # the rules, oldest forgotten first (forgetting one only allows one more rule).
        self._user_flushes: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._user_flush_interval_s = user_flush_interval_s
        self._known: set[int] = set()  # generations whose rules are in the book
        self._added = 0
        self.generation = 0  # every rule up to this generation is known here
        self._catching_up: asyncio.Future[bool] | None = None
        self._listener: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self._redis is not None:
            await self._catch_up()
            self._listener = asyncio.create_task(self._listen(), name="sidecache-invalidations")

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener

    @property
    def rules(self) -> int:
        return len(self._book)

    async def is_stale(self, meta: EntryMeta) -> bool:
        """Whether a rule covers this entry; when this replica is behind the shared generation
        and cannot catch up, every entry it could not check counts as stale."""
        shared = self._store.shared_generation
        if shared > self.generation and not await self._catch_up(shared):
            return True
        return self._book.is_stale(meta)

    async def invalidate(self, selectors: Sequence[Selector], source: str) -> Stamp:
        """Adds one rule per selector under one new generation; raises StoreUnavailable when the
        shared rules cannot be written (nothing was invalidated then)."""
        if self._redis is None:
            now = time.time()
            stamp = Stamp(max(int(now * 1_000_000), self.generation + 1), now)
            self._add(stamp.generation, stamp.at, selectors)
            self.generation = stamp.generation
        else:
            stamp = await self._publish(selectors)
        if self._on_rule is not None:
            self._on_rule(source)
        return stamp

    async def flush_user(self, tenant: str, user_id: str, source: str) -> None:
        """Invalidates a user's user-scoped entries, at most once per user per
        `user_flush_interval_s` in this process: anyone holding a tenant's key may name any
        user (docs/design.md §3), so each flip of a persona must not cost a rule. Within the
        interval the entry met is still not served (the caller's persona check refuses it);
        what is given up is invalidating that user's entries made since the last flush for the
        persona they switch back to. Raises StoreUnavailable like `invalidate`."""
        key = (tenant, user_id)
        now = time.monotonic()
        last = self._user_flushes.get(key)
        if last is not None and now - last < self._user_flush_interval_s:
            return
        await self.invalidate([Selector(tenant=tenant, user_id=user_id, scope="user")], source)
        self._user_flushes[key] = now
        self._user_flushes.move_to_end(key)
        if len(self._user_flushes) > self._max_rules:
            self._user_flushes.popitem(last=False)

    async def _publish(self, selectors: Sequence[Selector]) -> Stamp:
        args: list[str | int] = [
            INVALIDATION_CHANNEL,
            self._max_age_s,
            self._max_rules,
            *(_encode(s).decode() for s in selectors),
        ]
        try:
            async with asyncio.timeout(self._timeout_s * 4):
                generation, previous, at = await self._redis.eval(  # type: ignore[union-attr]
                    ADD_RULES, len(ADD_RULES_KEYS), *ADD_RULES_KEYS, *args
                )
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(
                f"Redis is unreachable; nothing was invalidated ({type(exc).__name__})."
            ) from None
        stamp = Stamp(int(generation), float(at))
        self._add(stamp.generation, stamp.at, selectors)  # the announcement may come later
        self._advance(stamp.generation, int(previous))
        return stamp

    def _add(self, generation: int, at: float, selectors: Sequence[Selector]) -> None:
        if generation in self._known:
            return
        self._known.add(generation)
        for selector in selectors:
            self._book.add(Rule(selector, generation, at))
        self._added += 1
        if self._added % _PRUNE_EVERY == 0:
            self._book.prune(time.time() - self._max_age_s)
            self._known = self._book.generations()

    def _announced(self, message: str) -> None:
        head, _, body = message.partition("\n")
        generation, previous, at = head.split(" ")
        selectors = [_decode_selector(line) for line in body.split("\n") if line]
        self._add(int(generation), float(at), selectors)
        self._advance(int(generation), int(previous))

    def _advance(self, generation: int, previous: int) -> None:
        """Moves to `generation` when every rule before it is known here (`previous` is the
        generation it followed), else reloads them all: an announcement was missed."""
        if previous == self.generation:
            self.generation = generation
        elif generation > self.generation:
            self._schedule_catch_up()

    def _schedule_catch_up(self) -> asyncio.Future[bool]:
        """The reload under way, or a new one: a finished reload may predate the generation a
        caller now needs (one left behind by an announcement, or by a cancelled waiter)."""
        task = self._catching_up
        if task is None or task.done():
            task = self._catching_up = asyncio.ensure_future(self._reload())
        return task

    async def _catch_up(self, wanted: int = 0) -> bool:
        """Reloads the shared rules until this replica knows generation `wanted` (one reload at a
        time, shared by every waiting hit). A reload that was already under way may have read
        the rules before `wanted` existed: then one more is made, which cannot have (and if
        Redis has since lost the generation, what it holds is all there is to know)."""
        for _ in range(2):
            if not await asyncio.shield(self._schedule_catch_up()):
                return False
            if self.generation >= wanted:
                break
        return True

    async def _reload(self) -> bool:
        assert self._redis is not None
        try:
            async with asyncio.timeout(self._timeout_s * 4):
                async with self._redis.pipeline(transaction=True) as pipe:
                    pipe.get(INVALIDATION_GENERATION_KEY)
                    pipe.zrange(INVALIDATION_RULES_KEY, 0, -1, withscores=True)
                    shared, members = await pipe.execute()
        except (RedisError, OSError) as exc:
            log.warning("cannot read the shared invalidation rules: %s", type(exc).__name__)
            return False
        # One invalidation is one member per selector under one generation: each generation is
        # added whole, since `_add` skips a generation it already knows.
        found: dict[int, tuple[float, list[Selector]]] = {}
        for member, at in members:
            text = member.decode() if isinstance(member, bytes) else member
            generation, _, selector = text.partition(" ")
            found.setdefault(int(generation), (float(at), []))[1].append(_decode_selector(selector))
        for generation, (at, selectors) in found.items():
            self._add(generation, at, selectors)
        self.generation = max(self.generation, int(shared or 0))
        return True

    async def _listen(self) -> None:
        """Takes announcements as they come; after a reconnect, reloads what it may have missed."""
        assert self._redis is not None
        while True:
            try:
                async with self._redis.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(INVALIDATION_CHANNEL)
                    await self._catch_up()
                    async for message in pubsub.listen():
                        data = message.get("data")
                        if isinstance(data, bytes):
                            self._announced(data.decode())
            except (RedisError, OSError):
                await asyncio.sleep(_RETRY_S)
            except (ValueError, msgspec.DecodeError) as exc:
                log.warning("ignored a malformed invalidation announcement: %s", exc)
