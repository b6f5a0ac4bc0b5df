"""The services a running sidecar is made of, built once at start-up and passed to handlers
through the aiohttp app (`RUNTIME` key). Nothing here is a module-level singleton."""

from __future__ import annotations

import asyncio
import logging
import secrets
from dataclasses import dataclass, field

from aiohttp import web
from prometheus_client import CollectorRegistry
from redis.exceptions import RedisError

from proxy.body import InflightBodies
from proxy.budget import BudgetBook
from proxy.cache.cluster import RedisClient
from proxy.cache.memory import MemoryStore
from proxy.cache.open_redis import open_redis
from proxy.cache.store import CacheStore
from proxy.dispatch.batcher import Batcher
from proxy.dispatch.flight import FlightTable
from proxy.dispatch.peers import PeerFlights
from proxy.dispatch.runner import FlightRunner
from proxy.invalidation.invalidator import Invalidator
from proxy.keys import KeyMaker
from proxy.ledger import LedgerWriter, PriceTable, open_ledger
from proxy.ledger.collector import register_ledger_metrics
from proxy.limits import Limiter
from proxy.limits.limiter import Counter
from proxy.limits.memory import MemoryCounter
from proxy.limits.overrides import LimitOverrides
from proxy.limits.redis_backend import RedisCounter
from proxy.metrics import Metrics
from proxy.persona import PersonaParser
from proxy.semantic.build import open_semantic
from proxy.semantic.cache import SemanticCache
from proxy.settings import Settings
from proxy.tenancy import TenantResolver
from proxy.tracing import Tracer, Untraced, open_tracer
from proxy.ttl import TtlPolicy
from proxy.upstream.breakers import BreakerBoard
from proxy.upstream.client import UpstreamClient
from proxy.upstream.flex import FlexLane
from proxy.upstream.gate import UpstreamGate
from proxy.upstream.guarded import GuardedUpstream
from proxy.upstream.lanes import Lane
from proxy.upstream.routes import DEFAULT, RouteTable
from proxy.vocabulary import SHARED_SECRET_KEY

log = logging.getLogger("sidecache")


@dataclass(frozen=True, slots=True)
class Runtime:
    settings: Settings
    store: CacheStore
    upstream_client: UpstreamClient  # the HTTP session (pass-through uses it as it is)
    upstream: GuardedUpstream  # every understood call: gate, breaker, metrics
    keys: KeyMaker
    personas: PersonaParser
    ttl: TtlPolicy
    tenants: TenantResolver
    metrics: Metrics
    redis: RedisClient | None
    flights: FlightTable
    gate: UpstreamGate
    breakers: BreakerBoard
    peers: PeerFlights | None  # cross-replica single-flight, with Redis
    runner: FlightRunner  # runs each flight's upstream call
    batcher: Batcher  # micro-batches of single-input embeddings and moderations
    prices: PriceTable
    ledger: LedgerWriter
    budgets: BudgetBook
    invalidations: Invalidator
    bodies: InflightBodies  # request-body bytes held at once (MAX_INFLIGHT_BODY_MB)
    limiter: Limiter  # rate limits (docs/design.md §13); `active` false: no work at all
    limit_overrides: LimitOverrides  # the admin's per-tenant and per-user limits
    semantic: SemanticCache | None = None  # with SEMANTIC_CACHE=on
    # Traces (proxy/tracing.py): Untraced unless an OTLP endpoint is configured.
    tracer: Tracer = field(default_factory=Untraced)


RUNTIME = web.AppKey("runtime", Runtime)


async def open_runtime(
    settings: Settings, registry: CollectorRegistry | None = None, proxy_url: str | None = None
) -> Runtime:
    """`proxy_url`: how this process reaches its own proxy port (the `upstream:` semantic
    embedder sends its embeddings through it); None where nothing needs it."""
    metrics = Metrics(registry or CollectorRegistry())
    tracer = open_tracer()
    redis: RedisClient | None = None
    store: CacheStore
    counter: Counter = MemoryCounter()
    if settings.cache.redis_url:
        errors = metrics.cache_errors
        opened = await open_redis(
            settings.cache,
            on_error=lambda op: errors.labels(op).inc(),
            watch_near=metrics.watch_near,
        )
        redis, store = opened.client, opened.store
        # The rate check shares the hit's connection (one write with its GET); on a cluster it
        # goes through redis-py (its keys share the tenant's slot, not the entry's).
        counter = RedisCounter(redis, opened.pipe, settings.cache.redis_timeout_ms)
    else:
        store = MemoryStore(int(settings.cache.memory_mb * 1024 * 1024))
    metrics.cache_up.labels(store.backend).set_function(lambda: float(store.available))
    metrics.cache_entries.set_function(lambda: float(store.usage()[0]))
    metrics.cache_bytes.set_function(lambda: float(store.usage()[1]))
    invalidations = Invalidator(
        store,
        redis,
        max_age_s=settings.ttl.max,
        timeout_ms=settings.cache.redis_timeout_ms,
        on_rule=lambda source: metrics.invalidations.labels(source).inc(),
        max_rules=settings.invalidation.max_rules,
        user_flush_interval_s=settings.invalidation.user_flush_interval_s,
    )
    await invalidations.start()
    secret = await _key_secret(settings, redis)
    keys = KeyMaker(secret, settings.cache)
    upstream = settings.upstream
    peers = None
    if redis is not None:
        peers = PeerFlights(
            redis,
            upstream.coalesce_lock_ms,
            upstream.coalesce_max_wait_ms,
            settings.cache.redis_timeout_ms,
        )
        await peers.start()
    routes = RouteTable.from_settings(settings)
    breakers = BreakerBoard(
        upstream.base_url,
        upstream.breaker_fail_max,
        upstream.breaker_reset_s,
        anthropic=upstream.anthropic_upstream,
        upstreams=[
            (
                r.name,
                r.fail_max or upstream.breaker_fail_max,
                r.reset_s or upstream.breaker_reset_s,
            )
            for r in routes.routes.values()
        ]
        if settings.upstreams
        else (),
    )
    metrics.watch_breakers(breakers)
    client = UpstreamClient.open(settings.upstream)
    gate = UpstreamGate(
        upstream.max_in_flight, upstream.queue_timeout_s, upstream.total_timeout_s, tracer=tracer
    )
    metrics.watch_gate(gate)
    guarded = GuardedUpstream(
        client,
        gate,
        breakers,
        metrics,
        upstream.total_timeout_s,
        tracer=tracer,
        routes=routes,
        lanes=open_lanes(settings, routes, client, gate, tracer),
        retries=upstream.retries,
    )
    flights = FlightTable()
    prices = PriceTable.from_settings(settings.pricing)
    ledger = await open_ledger(settings)
    budgets = BudgetBook.from_settings(settings, redis=redis, sink=ledger.sink)
    await budgets.start()
    register_ledger_metrics(metrics.registry, writer=ledger, prices=prices, budgets=budgets)
    semantic = await open_semantic(settings, store, redis, keys, metrics.registry, proxy_url)
    limiter = Limiter(
        settings.rate,
        counter,
        on_unenforced=metrics.rate_limit_unenforced.inc,
        on_limited=lambda scope, kind: metrics.rate_limited.labels(scope, kind).inc(),
    )
    limit_overrides = LimitOverrides(limiter, redis, settings.rate.overrides_refresh_s)
    await limit_overrides.start()
    return Runtime(
        settings=settings,
        store=store,
        upstream_client=client,
        upstream=guarded,
        keys=keys,
        personas=PersonaParser(settings.persona),
        ttl=TtlPolicy(settings),
        tenants=TenantResolver(settings, keys),
        metrics=metrics,
        redis=redis,
        flights=flights,
        gate=gate,
        breakers=breakers,
        peers=peers,
        runner=FlightRunner(
            store,
            flights,
            guarded,
            peers,
            FlexLane.from_settings(upstream),
            cache_fallbacks=upstream.cache_fallbacks,
        ),
        batcher=Batcher(settings.batch, guarded),
        prices=prices,
        ledger=ledger,
        budgets=budgets,
        invalidations=invalidations,
        bodies=InflightBodies(
            settings.server.max_inflight_body_bytes, settings.server.max_body_bytes
        ),
        limiter=limiter,
        limit_overrides=limit_overrides,
        semantic=semantic,
        tracer=tracer,
    )


async def close_runtime(runtime: Runtime) -> None:
    await runtime.runner.close()  # let shared calls land (and be stored)
    await runtime.batcher.close()
    if runtime.semantic is not None:
        await runtime.semantic.close()
    if runtime.peers is not None:
        await runtime.peers.close()
    await runtime.invalidations.close()
    await runtime.limit_overrides.close()
    await runtime.upstream_client.close()
    await runtime.budgets.close()
    await runtime.ledger.close()  # flushes every record (to the journal if the DB is down)
    await runtime.store.close()
    await runtime.tracer.close()  # exports the spans still queued


def open_lanes(
    settings: Settings,
    routes: RouteTable,
    client: UpstreamClient,
    gate: UpstreamGate,
    tracer: Tracer,
) -> dict[str, Lane]:
    """Each upstream's lane: `client`'s session at its base URL (the default upstream is
    `client` itself), its own gate when it sets max_in_flight, else the shared `gate`."""
    if not settings.upstreams:
        return {DEFAULT: Lane(DEFAULT, client, gate)}
    up = settings.upstream
    lanes = {}
    for route in routes.routes.values():
        own = route.max_in_flight
        lane_gate = (
            gate
            if own is None
            else UpstreamGate(own, up.queue_timeout_s, up.total_timeout_s, tracer=tracer)
        )
        lanes[route.name] = Lane(
            route.name, client.for_route(route), lane_gate, route.api_key, route.api == "azure"
        )
    return lanes


async def _key_secret(settings: Settings, redis: RedisClient | None) -> bytes:
    """The configured secret, else one shared through Redis, else a random one per process."""
    if settings.tenancy.key_secret:
        return settings.tenancy.key_secret.encode()
    candidate = secrets.token_hex(32)
    if redis is None:
        return candidate.encode()
    try:
        async with asyncio.timeout(2):
            await redis.set(SHARED_SECRET_KEY, candidate, nx=True)
            shared = await redis.get(SHARED_SECRET_KEY)
    except (RedisError, OSError):
        shared = None
    if shared is None:
        log.warning("Redis unreachable at start-up: tenant ids use a per-process secret")
        return candidate.encode()
    return shared if isinstance(shared, bytes) else shared.encode()
