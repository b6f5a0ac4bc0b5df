"""Spend counted in Redis, shared by every replica. Every key of one tenant (its totals, their
reservations and markers) carries the tenant's hash tag (BUDGET_KEY_PREFIX), so each script
touches one Cluster slot.

Reservations are entries of a sorted set per total (`<key>:r`, member `<id>|<usd>`, score: when
the hold lapses, Redis time) plus their running sum (`<key>:rs`). Entries rather than a bare
sum: a process that dies between reserve and settle leaves an entry that lapses on its own
(the next reserve subtracts it), where a sum with a TTL would be kept alive by every later
reservation and the dead hold would never go away."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from redis.exceptions import MaxConnectionsError, RedisError

from proxy.budget.spend import RESERVED, RESERVED_SUM, SEEDED, Check, SpendUnavailable, Verdict
from proxy.cache.cluster import RedisClient

# KEYS: per budget (total, reservations, their sum, restored marker).
# ARGV: amount, member, hold ms, check restored markers (1/0), then per budget limit, ttl s.
# Returns {0} (held), {1, index, spent, reserved} (refused) or {2, index...} (not restored).
_RESERVE_LUA = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local amount = tonumber(ARGV[1])
local n = #KEYS / 4
if ARGV[4] == '1' then
    local missing = {}
    for i = 1, n do
        if redis.call('EXISTS', KEYS[4 * i]) == 0 then missing[#missing + 1] = i - 1 end
    end
    if #missing > 0 then
        table.insert(missing, 1, 2)
        return missing
    end
end
for i = 1, n do
    local total, held, sum = KEYS[4 * i - 3], KEYS[4 * i - 2], KEYS[4 * i - 1]
    local lapsed = redis.call('ZRANGEBYSCORE', held, '-inf', now)
    for _, member in ipairs(lapsed) do
        redis.call('INCRBYFLOAT', sum, -tonumber(string.match(member, '|([^|]*)$')))
    end
    if #lapsed > 0 then redis.call('ZREMRANGEBYSCORE', held, '-inf', now) end
    if redis.call('ZCARD', held) == 0 then redis.call('DEL', sum) end  -- no rounding left over
    local spent = tonumber(redis.call('GET', total) or '0')
    local reserved = tonumber(redis.call('GET', sum) or '0')
    local limit = tonumber(ARGV[3 + 2 * i])
    if spent >= limit or spent + reserved + amount > limit then
        return {1, i - 1, tostring(spent), tostring(reserved)}
    end
end
local hold = tonumber(ARGV[3])
for i = 1, n do
    local held, sum = KEYS[4 * i - 2], KEYS[4 * i - 1]
    redis.call('ZADD', held, now + hold, ARGV[2])
    redis.call('INCRBYFLOAT', sum, ARGV[1])
    redis.call('PEXPIRE', held, hold * 2)
    redis.call('PEXPIRE', sum, hold * 2)
end
return {0}
"""

# KEYS: the settle's once-marker, then per budget (total, reservations, their sum).
# ARGV: amount, member, once ttl s, then per budget ttl s. Returns the totals (as strings).
_SETTLE_LUA = """
local member = ARGV[2]
local n = (#KEYS - 1) / 3
for i = 1, n do
    local held, sum = KEYS[3 * i], KEYS[3 * i + 1]
    if member ~= '' and redis.call('ZREM', held, member) == 1 then
        redis.call('INCRBYFLOAT', sum, -tonumber(string.match(member, '|([^|]*)$')))
    end
end
local first = redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[3])
local totals = {}
for i = 1, n do
    local total = KEYS[3 * i - 1]
    if first and tonumber(ARGV[1]) > 0 then
        totals[i] = redis.call('INCRBYFLOAT', total, ARGV[1])
        if redis.call('TTL', total) < 0 then redis.call('EXPIRE', total, ARGV[3 + i]) end
    else
        totals[i] = redis.call('GET', total) or '0'
    end
end
return totals
"""

# KEYS: total, restored marker. ARGV: the ledger's total, ttl s.
_SEED_LUA = """
if redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[2]) then
    if tonumber(ARGV[1]) > tonumber(redis.call('GET', KEYS[1]) or '0') then
        redis.call('SET', KEYS[1], ARGV[1], 'KEEPTTL')
        if redis.call('TTL', KEYS[1]) < 0 then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
    end
end
return 0
"""

T = TypeVar("T")
_BUSY_PAUSE_S = 0.002
# How long a settle's once-marker lasts. A retry after that could count a settle twice, but
# only one whose first try landed with its answer lost; the markers cost ~90 bytes per miss
# for this long (600k keys, ~55 MB, at 1,000 misses a second).
SETTLED_TTL_S = 600


class RedisSpend:
    """Every command is bounded by `timeout_ms` once it has its turn; waiting for the turn is
    bounded apart (`wait_s`), so a burst queues instead of timing out as if Redis were down.

    At most `max_in_flight` commands run at once: the client's plain pool fails a command at
    once when all its connections are busy (and shares them with the cache), so a burst of
    settles queues here rather than losing spend. Any failure raises SpendUnavailable."""

    backend = "redis"

    def __init__(
        self,
        client: RedisClient,
        *,
        timeout_ms: int = 250,
        max_in_flight: int = 8,
        wait_s: float = 5.0,
    ) -> None:
        self._client = client
        self._timeout_s = timeout_ms / 1000
        self._wait_s = wait_s
        self._reserve = client.register_script(_RESERVE_LUA)
        self._settle = client.register_script(_SETTLE_LUA)
        self._seed = client.register_script(_SEED_LUA)
        self._turns = asyncio.Semaphore(max_in_flight)

    async def _run(self, command: Callable[[], Awaitable[T]]) -> T:
        """Runs `command` when a turn is free. A pool with no free connection (shared with the
        cache, which fails at once rather than wait) is not Redis down: the command is tried
        again until `wait_s` has passed."""
        deadline = time.monotonic() + self._wait_s
        try:
            async with asyncio.timeout(self._wait_s):
                await self._turns.acquire()
        except TimeoutError as exc:
            raise SpendUnavailable("no turn") from exc
        try:
            while True:
                try:
                    async with asyncio.timeout(self._timeout_s):
                        return await command()
                except MaxConnectionsError:
                    if time.monotonic() >= deadline:
                        raise
                await asyncio.sleep(_BUSY_PAUSE_S)
        except (RedisError, OSError, TimeoutError) as exc:
            raise SpendUnavailable(type(exc).__name__) from exc
        finally:
            self._turns.release()

    async def get(self, keys: Sequence[str]) -> list[float]:
        values = await self._run(lambda: self._client.mget(list(keys)))
        return [float(v) if v is not None else 0.0 for v in values]

    async def reserve(
        self, checks: Sequence[Check], amount: float, member: str, hold_s: float, seeded: bool
    ) -> Verdict:
        keys = [k for c in checks for k in (c.key, c.key + RESERVED, c.key + RESERVED_SUM,
                                            c.key + SEEDED)]  # fmt: skip
        args = [
            repr(float(amount)),
            member,
            str(max(1, int(hold_s * 1000))),
            "1" if seeded else "0",
        ]
        args += [a for c in checks for a in (repr(float(c.limit_usd)), str(c.ttl_s))]
        answer = await self._run(lambda: self._reserve(keys=keys, args=args))
        assert isinstance(answer, list)
        if answer[0] == 1:
            return Verdict(
                refused=int(answer[1]), spent=float(answer[2]), reserved=float(answer[3])
            )
        if answer[0] == 2:
            return Verdict(unseeded=tuple(int(i) for i in answer[1:]))
        return Verdict()

    async def settle(
        self, keys: Sequence[tuple[str, int]], amount: float, member: str, once: str
    ) -> list[float]:
        names = [once] + [k for key, _ in keys for k in (key, key + RESERVED, key + RESERVED_SUM)]
        args = [repr(float(amount)), member, str(SETTLED_TTL_S), *(str(t) for _, t in keys)]
        totals = await self._run(lambda: self._settle(keys=names, args=args))
        assert isinstance(totals, list)
        return [float(v) for v in totals]

    async def seed(self, key: str, ttl_s: int, total: float) -> None:
        args = [repr(float(total)), str(ttl_s)]
        await self._run(lambda: self._seed(keys=[key, key + SEEDED], args=args))

    async def mark_once(self, key: str, ttl_s: int) -> bool:
        return bool(await self._run(lambda: self._client.set(key, b"1", nx=True, ex=ttl_s)))
