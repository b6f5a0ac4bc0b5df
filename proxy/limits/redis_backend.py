"""The rate limits' logs in Redis, shared by every replica (docs/design.md §13). Each scope's
keys carry its tenant's hash tag (RATE_KEY_PREFIX), so one script touches one Cluster slot.

Per scope: `<key>:r`, a sorted set of the counted requests (score: when, Redis time, ms), one
member per ask, and `<key>:n`, a hash of how many requests each member counts (a lease's batch
is one member, not one per request: its script costs the same for 1 or 256) plus their running
sum (field `_sum`); `<key>:k` and `<key>:a`, the same for token charges. A check reads the sums
instead of adding up the logs.
On the hit path the check goes out on the lean pipe (proxy/cache/pipe.py) next to the GET."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Sequence
from typing import Any

from redis.exceptions import RedisError

from proxy.cache.cluster import RedisClient
from proxy.cache.pipe import PipeError, RedisPipe, command
from proxy.limits.limiter import CounterDown
from proxy.limits.types import Counted, Scope

# KEYS: per scope (requests log, tokens log, token amounts, request counts). ARGV: window ms,
# member, requests wanted (0, 1, or a lease's batch: granted as many as fit, at least one, and
# counted as one member of the log), tokens wanted, then per scope rpm, tpm (0: not limited,
# not counted), then the lease's length in ms (a leased request is scored at its end: counted
# for a whole window after its last possible use).
# Returns {allowed 1|0, retry ms, then per scope: requests used, reset ms, tokens used, reset
# ms, then the requests granted}.
_TAKE_LUA = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local window = tonumber(ARGV[1])
local member, want_r, want_t = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local since = now - window
local n = #KEYS / 4
local lease = tonumber(ARGV[5 + 2 * n] or '0')
local grant = want_r
-- Drops the members that left the window from a log and their amounts (requests or tokens)
-- from its hash, keeping the hash's running '_sum'.
local function expire(log, amounts)
    while true do
        local gone = redis.call('ZRANGEBYSCORE', log, '-inf', since, 'LIMIT', 0, 500)
        if #gone == 0 then return end
        local held = redis.call('HMGET', amounts, unpack(gone))
        local freed = 0
        for j = 1, #gone do freed = freed + (tonumber(held[j]) or 0) end
        redis.call('HDEL', amounts, unpack(gone))
        redis.call('HINCRBY', amounts, '_sum', -freed)
        redis.call('ZREM', log, unpack(gone))
    end
end
local retry = 0
local used_r, used_t, last_t = {}, {}, {}
for i = 1, n do
    local rk, tk, ak, nk = KEYS[4 * i - 3], KEYS[4 * i - 2], KEYS[4 * i - 1], KEYS[4 * i]
    local rpm, tpm = tonumber(ARGV[3 + 2 * i]), tonumber(ARGV[4 + 2 * i])
    used_r[i], used_t[i], last_t[i] = 0, 0, 0
    if rpm > 0 then
        expire(rk, nk)
        local used = tonumber(redis.call('HGET', nk, '_sum')) or 0
        used_r[i] = used
        if want_r > 0 and used + 1 > rpm then
            -- the oldest members, until enough leave the window for one request
            local left, wait, from = used + 1 - rpm, window, 0
            while left > 0 do
                local log = redis.call('ZRANGE', rk, from, from + 99, 'WITHSCORES')
                if #log == 0 then break end
                local counts = {}
                for j = 1, #log, 2 do counts[#counts + 1] = log[j] end
                counts = redis.call('HMGET', nk, unpack(counts))
                for j = 1, #log, 2 do
                    left = left - (tonumber(counts[(j + 1) / 2]) or 0)
                    if left <= 0 then
                        wait = tonumber(log[j + 1]) + window - now
                        break
                    end
                end
                from = from + 100
            end
            retry = math.max(retry, wait)
        elseif want_r > 0 and used + grant > rpm then
            grant = rpm - used  -- a lease takes what is left, never less than one
        end
    end
    if tpm > 0 then
        expire(tk, ak)
        local state = redis.call('HMGET', ak, '_sum', '_last')
        local used = tonumber(state[1]) or 0
        used_t[i], last_t[i] = used, tonumber(state[2]) or 0
        if want_t > 0 and used + want_t > tpm then
            local wait = window
            if want_t <= tpm then
                local left = used + want_t - tpm
                local log = redis.call('ZRANGE', tk, 0, -1, 'WITHSCORES')
                for j = 1, #log, 2 do
                    left = left - (tonumber(redis.call('HGET', ak, log[j])) or 0)
                    if left <= 0 then
                        wait = tonumber(log[j + 1]) + window - now
                        break
                    end
                end
            end
            retry = math.max(retry, wait)
        end
    end
end
local allowed = retry == 0
local out = {allowed and 1 or 0, retry}
for i = 1, n do
    local rk, tk, ak, nk = KEYS[4 * i - 3], KEYS[4 * i - 2], KEYS[4 * i - 1], KEYS[4 * i]
    local rpm, tpm = tonumber(ARGV[3 + 2 * i]), tonumber(ARGV[4 + 2 * i])
    local reset_r, reset_t = 0, 0
    if rpm > 0 then
        if allowed and want_r > 0 then
            redis.call('ZADD', rk, now + lease, member)
            redis.call('HSET', nk, member, grant)
            redis.call('HINCRBY', nk, '_sum', grant)
            redis.call('PEXPIRE', rk, window + lease)
            redis.call('PEXPIRE', nk, window + lease)
            used_r[i] = used_r[i] + grant
            reset_r = window + lease
        elseif used_r[i] > 0 then
            local last = redis.call('ZRANGE', rk, -1, -1, 'WITHSCORES')
            reset_r = tonumber(last[2]) + window - now
        end
    end
    if tpm > 0 and allowed and want_t > 0 then
        redis.call('ZADD', tk, now, member)
        redis.call('HSET', ak, member, want_t, '_last', now)
        redis.call('HINCRBY', ak, '_sum', want_t)
        redis.call('PEXPIRE', tk, window)
        redis.call('PEXPIRE', ak, window)
        used_t[i], last_t[i] = used_t[i] + want_t, now
    end
    if used_t[i] > 0 and last_t[i] > since then reset_t = last_t[i] + window - now end
    out[#out + 1] = used_r[i]
    out[#out + 1] = reset_r
    out[#out + 1] = used_t[i]
    out[#out + 1] = reset_t
end
out[#out + 1] = allowed and grant or 0
return out
"""

# KEYS: per scope (tokens amounts). ARGV: member, the real tokens. A charge that has left the
# window already is not brought back.
_CORRECT_LUA = """
for i = 1, #KEYS do
    local old = redis.call('HGET', KEYS[i], ARGV[1])
    if old then
        redis.call('HSET', KEYS[i], ARGV[1], ARGV[2])
        redis.call('HINCRBY', KEYS[i], '_sum', tonumber(ARGV[2]) - tonumber(old))
    end
end
return 0
"""
_PARTS_KEPT = 10_000
# A scope's keys, in the order the take script reads them.
_SUFFIXES = ("r", "k", "a", "n")
_TAKE_SHA = hashlib.sha1(_TAKE_LUA.encode()).hexdigest().encode()


class RedisCounter:
    backend = "redis"

    def __init__(self, client: RedisClient, pipe: RedisPipe | None, timeout_ms: int) -> None:
        self._client = client
        self._pipe = pipe  # the hit path's connection, when the URL allows one
        self._timeout_s = timeout_ms / 1000
        self._take = client.register_script(_TAKE_LUA)
        self._correct = client.register_script(_CORRECT_LUA)
        self._parts: dict[tuple[tuple[Scope, ...], int, int, int, int], tuple[bytes, bytes]] = {}

    def take(
        self,
        scopes: Sequence[Scope],
        member: str,
        requests: int,
        tokens: int,
        window_ms: int,
        lease_ms: int = 0,
    ) -> Awaitable[Counted]:
        if self._pipe is None:
            keys = [f"{s.key}:{k}" for s in scopes for k in _SUFFIXES]
            args = [str(window_ms), member, str(requests), str(tokens)]
            args += [str(v) for s in scopes for v in (s.rpm, s.tpm)]
            return self._by_client(keys, [*args, str(lease_ms)])
        prefix, suffix = self._encoded(scopes, window_ms, requests, tokens, lease_ms)
        member_bytes = member.encode()
        request = b"%s$%d\r\n%s\r\n%s" % (prefix, len(member_bytes), member_bytes, suffix)
        return self._by_pipe(self._pipe, self._pipe.send_now(request), scopes, member, requests,
                             tokens, window_ms, lease_ms)  # fmt: skip

    def _encoded(
        self, scopes: Sequence[Scope], window_ms: int, requests: int, tokens: int, lease_ms: int
    ) -> tuple[bytes, bytes]:
        """The EVALSHA command as sent, before and after its member: the same for every hit of
        a limited tenant (tokens 0), so kept for those."""
        key = (tuple(scopes), window_ms, requests, tokens, lease_ms)
        found = self._parts.get(key) if not tokens else None
        if found is None:
            keys = [f"{s.key}:{k}".encode() for s in scopes for k in _SUFFIXES]
            limits = [b"%d" % v for s in scopes for v in (s.rpm, s.tpm)]
            before = [b"EVALSHA", _TAKE_SHA, b"%d" % len(keys), *keys, b"%d" % window_ms]
            after = [b"%d" % requests, b"%d" % tokens, *limits, b"%d" % lease_ms]
            head = b"*%d\r\n" % (len(before) + 1 + len(after))
            found = (head + _bulk(before), _bulk(after))  # the member goes between
            if not tokens:
                if len(self._parts) >= _PARTS_KEPT:
                    self._parts.clear()
                self._parts[key] = found
        return found

    async def _by_pipe(
        self,
        pipe: RedisPipe,
        sent: Awaitable[Any],
        scopes: Sequence[Scope],
        member: str,
        requests: int,
        tokens: int,
        window_ms: int,
        lease_ms: int,
    ) -> Counted:
        try:
            try:
                reply = await sent
            except PipeError as exc:
                if "NOSCRIPT" not in str(exc):
                    raise
                keys = [f"{s.key}:{k}".encode() for s in scopes for k in _SUFFIXES]
                args = [b"%d" % window_ms, member.encode(), b"%d" % requests, b"%d" % tokens]
                args += [b"%d" % v for s in scopes for v in (s.rpm, s.tpm)]
                args.append(b"%d" % lease_ms)
                script = _TAKE_LUA.encode()  # EVAL loads it: the next EVALSHA finds it
                reply = await pipe.send_now(
                    command(b"EVAL", script, b"%d" % len(keys), *keys, *args)
                )
        except PipeError as exc:
            raise CounterDown(str(exc)) from None
        return _counted(reply)

    async def _by_client(self, keys: list[str], args: list[str]) -> Counted:
        try:
            async with asyncio.timeout(self._timeout_s):
                reply = await self._take(keys=keys, args=args)
        except (RedisError, OSError, TimeoutError) as exc:
            raise CounterDown(type(exc).__name__) from None
        return _counted(reply)

    async def correct(
        self, scopes: Sequence[Scope], member: str, tokens: int, window_ms: int
    ) -> None:
        keys = [f"{s.key}:a" for s in scopes]
        try:
            async with asyncio.timeout(self._timeout_s):
                await self._correct(keys=keys, args=[member, str(tokens)])
        except (RedisError, OSError, TimeoutError) as exc:
            raise CounterDown(type(exc).__name__) from None


def _bulk(parts: list[bytes]) -> bytes:
    return b"".join(b"$%d\r\n%s\r\n" % (len(part), part) for part in parts)


def _counted(reply: Any) -> Counted:
    if not isinstance(reply, list) or not all(isinstance(v, int) for v in reply):
        raise CounterDown("Redis answered the rate-limit check with something else")
    return reply
