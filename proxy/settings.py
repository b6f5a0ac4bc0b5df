"""The settings' schema: every section and field, typed and bounded (docs/design.md §2).

The upstream sections are `proxy.settings_upstream`; reading them all (defaults <- TOML <-
environment) is `proxy.settings_load`.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from proxy.settings_types import Port, Positive, Seconds
from proxy.settings_upstream import RouteSettings, UpstreamSettings

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]

NEAR_CACHE_MB_DEFAULT = 64.0  # on: +16% hits/s over plain Redis in bench hits_by_store

# The persona dimensions, in the fixed order every key and API uses (docs/design.md §3).
PERSONA_DIMENSIONS = ("experience", "learning_style", "tone", "density", "interests")


class ServerSettings(msgspec.Struct, forbid_unknown_fields=True):
    proxy_host: str = "0.0.0.0"
    proxy_port: Port = 8080
    admin_host: str = "127.0.0.1"
    admin_port: Port = 8081
    max_body_mb: Annotated[float, msgspec.Meta(gt=0, le=1024)] = 32
    # Request-body bytes understood requests may hold at once (proxy/body.py).
    max_inflight_body_mb: Annotated[float, msgspec.Meta(gt=0, le=65536)] = 128
    log_level: LogLevel = "INFO"
    access_log: bool = False
    # The longest a request head may take to arrive (proxy/connection.py); idle keep-alive
    # connections and bodies are not timed by it.
    header_read_timeout_s: Seconds = 10.0
    # Processes sharing both ports (proxy/workers/): 1 is one process, no supervisor.
    workers: Annotated[int, msgspec.Meta(ge=1, le=64)] = 1

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)

    @property
    def max_inflight_body_bytes(self) -> int:
        return int(self.max_inflight_body_mb * 1024 * 1024)


class TenancySettings(msgspec.Struct, forbid_unknown_fields=True):
    # Managed mode only: sidecar key -> tenant name, or "tenant:user" for a key bound to one
    # user (docs/design.md §3). Never logged.
    sidecar_keys: dict[str, str] = {}
    key_secret: str | None = None
    # Managed mode: the tenants whose keys not bound to a user may name any user (X-User-Id,
    # the body's user); "*" is every tenant (the default), an empty list none.
    trusted_user_header_keys: list[str] = msgspec.field(default_factory=lambda: ["*"])

    def key_bindings(self) -> dict[str, tuple[str, str | None]]:
        """Sidecar key -> (tenant, the user it is bound to or None)."""
        bindings: dict[str, tuple[str, str | None]] = {}
        for key, value in self.sidecar_keys.items():
            tenant, bound, user = value.partition(":")
            bindings[key] = (tenant.strip(), user.strip() if bound else None)
        return bindings


class AdminSettings(msgspec.Struct, forbid_unknown_fields=True):
    tokens: list[str] = []
    user_ids: list[str] = []


class CacheSettings(msgspec.Struct, forbid_unknown_fields=True):
    redis_url: (
        Annotated[str, msgspec.Meta(pattern=r"^(redis|rediss|unix|redis\+sentinel)://")] | None
    ) = None
    # TLS (rediss://, or ?ssl=true with Sentinel): the CA to trust (else the system's), and a
    # client certificate and its key for servers that ask for one (proxy/cache/redis_url.py).
    redis_ca_file: str | None = None
    redis_cert_file: str | None = None
    redis_key_file: str | None = None
    # Whether REDIS_URL names a Redis Cluster node; auto asks it (proxy/cache/cluster.py).
    redis_cluster: Literal["auto", "on", "off"] = "auto"
    memory_mb: Annotated[float, msgspec.Meta(gt=0)] = 256
    # The near cache in front of Redis (proxy/cache/near_store.py); 0 is off; ignored without
    # Redis (the memory store is already in process).
    near_cache_mb: Annotated[float, msgspec.Meta(ge=0)] = NEAR_CACHE_MB_DEFAULT
    default_ttl: Positive = 300
    redis_timeout_ms: Positive = 250
    redis_max_connections: Positive = 64
    # Persona dimensions that key an entry when the request does not say (X-Cache-Persona-Dims),
    # and per-endpoint or per-model overrides ("chat.completions", "gpt-4o-mini", ...).
    persona_dims: list[str] = msgspec.field(
        default_factory=lambda: ["experience", "learning_style", "tone", "density", "interests"]
    )
    persona_dims_by: dict[str, list[str]] = {}


class TtlSettings(msgspec.Struct, forbid_unknown_fields=True):
    embeddings: Positive = 7 * 86400
    moderations: Positive = 86400
    deterministic_factor: Annotated[float, msgspec.Meta(ge=1)] = 12.0
    personalisation_cut: Annotated[float, msgspec.Meta(ge=0, le=0.95)] = 0.5
    min: Positive = 10
    max: Positive = 30 * 86400


class PersonaSettings(msgspec.Struct, forbid_unknown_fields=True):
    experience: list[str] = msgspec.field(
        default_factory=lambda: ["beginner", "intermediate", "advanced", "expert"]
    )
    learning_style: list[str] = msgspec.field(
        default_factory=lambda: ["visual", "auditory", "reading", "kinesthetic"]
    )
    tone: list[str] = msgspec.field(
        default_factory=lambda: ["formal", "friendly", "encouraging", "direct"]
    )
    density: list[str] = msgspec.field(default_factory=lambda: ["concise", "balanced", "detailed"])
    interests_max: Annotated[int, msgspec.Meta(ge=1, le=100)] = 10


class BatchSettings(msgspec.Struct, forbid_unknown_fields=True):
    """The adaptive micro-batching window (proxy/dispatch/batcher.py, docs/design.md §4)."""

    size: Annotated[int, msgspec.Meta(ge=1, le=2048)] = 10
    # How long a request that opens a batch on an idle lane waits for company.
    wait_ms: Annotated[float, msgspec.Meta(ge=0, le=10_000)] = 5.0
    # On a busy lane (a request came less than this ago), each arrival keeps the batch open
    # this much longer ...
    gap_ms: Annotated[float, msgspec.Meta(ge=0, le=10_000)] = 50.0
    # ... but never past this long after the batch opened (the added latency's bound).
    max_wait_ms: Annotated[float, msgspec.Meta(ge=0, le=10_000)] = 200.0


class LedgerSettings(msgspec.Struct, forbid_unknown_fields=True):
    # False: no request is written to the ledger (budgets still count spend). For measuring.
    enabled: bool = True
    database_url: str | None = None
    path: str = "./sidecache.db"
    alert_webhook_url: str | None = None
    # Append-only journal for flushes the database refused; default: next to `path`.
    journal_path: str | None = None
    migrate_on_start: bool = True
    batch_size: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 5000
    flush_interval_s: Seconds = 1.0
    queue_max: Annotated[int, msgspec.Meta(ge=1)] = 100_000
    retry_max_s: Seconds = 30.0
    connect_timeout_s: Seconds = 5.0
    pool_max_size: Annotated[int, msgspec.Meta(ge=1, le=100)] = 4


Usd = Annotated[float, msgspec.Meta(ge=0)]
Share = Annotated[float, msgspec.Meta(gt=0, le=1)]


class BudgetSettings(msgspec.Struct, forbid_unknown_fields=True):
    """USD limits per UTC day and calendar month; 0 means unlimited."""

    tenant_daily_usd: Usd = 0.0
    tenant_monthly_usd: Usd = 0.0
    user_daily_usd: Usd = 0.0
    user_monthly_usd: Usd = 0.0
    alert_thresholds: list[Share] = msgspec.field(default_factory=lambda: [0.5, 0.8, 1.0])
    webhook_timeout_s: Seconds = 3.0
    overrides_refresh_s: Seconds = 30.0
    # The spend store (Redis) cannot be reached: "open" serves requests unchecked, "closed"
    # refuses them with 503 `budget_store_unavailable` (both counted in
    # sidecache_budget_unchecked_total).
    on_store_down: Literal["open", "closed"] = "open"
    # How long a pre-flight reservation holds its estimate when no settle comes (the process
    # died mid-call): longer than any upstream call.
    reservation_hold_s: Annotated[float, msgspec.Meta(gt=0)] = 300.0
    # Over budget, a request for a model matching a glob is sent with the cheaper model named
    # instead of answered 429 (the first glob that matches, in the file's order; a budget
    # override's own table comes first: proxy/budget/downgrades.py).
    downgrade_to: dict[str, Annotated[str, msgspec.Meta(min_length=1)]] = {}


class RateSettings(msgspec.Struct, forbid_unknown_fields=True):
    """Requests and tokens per window (a minute) per tenant and per user; 0 means no limit."""

    tenant_rpm: Annotated[int, msgspec.Meta(ge=0)] = 0
    tenant_tpm: Annotated[int, msgspec.Meta(ge=0)] = 0
    user_rpm: Annotated[int, msgspec.Meta(ge=0)] = 0
    user_tpm: Annotated[int, msgspec.Meta(ge=0)] = 0
    # The limits' window: a minute, as the names say; shorter only to test them quickly.
    window_s: Annotated[float, msgspec.Meta(ge=1, le=3600)] = 60.0
    # How often each replica re-reads the admin's limit overrides from Redis.
    overrides_refresh_s: Annotated[float, msgspec.Meta(gt=0)] = 5.0

    @property
    def any(self) -> bool:
        return bool(self.tenant_rpm or self.tenant_tpm or self.user_rpm or self.user_tpm)


class ModelPriceSetting(msgspec.Struct, forbid_unknown_fields=True):
    """USD per million tokens; `cached_input` and `cache_write` default to `input`,
    `reasoning` to `output`."""

    input: Usd
    output: Usd = 0.0
    cached_input: Usd | None = None
    cache_write: Usd | None = None
    reasoning: Usd | None = None
    taken: str | None = None
    source: str | None = None


class PricingSettings(msgspec.Struct, forbid_unknown_fields=True):
    # A price table replacing config/pricing.toml; `models` below are applied on top of it.
    file: str | None = None
    models: dict[str, ModelPriceSetting] = {}
    chars_per_token: Annotated[float, msgspec.Meta(gt=0)] = 4.0
    default_output_tokens: Annotated[int, msgspec.Meta(ge=0)] = 512


class InvalidationSettings(msgspec.Struct, forbid_unknown_fields=True):
    # Rules held (per replica, and in Redis); past it a tenant's rules collapse into one
    # whole-tenant rule (docs/design.md §3).
    max_rules: Positive = 10_000
    # At most one automatic persona-change rule per user in this many seconds per replica.
    user_flush_interval_s: Annotated[float, msgspec.Meta(ge=0)] = 60.0


class SemanticSettings(msgspec.Struct, forbid_unknown_fields=True):
    """The opt-in semantic cache (docs/design.md §10)."""

    enabled: bool = False
    # `local` (all-MiniLM-L6-v2 in this process) or `upstream:<model>` (the upstream's
    # embeddings, through this sidecar's own embedding cache, with the request's credential).
    embedder: Annotated[str, msgspec.Meta(pattern=r"^(local|upstream:\S+)$")] = "local"
    # Cosine similarity a candidate needs before the guards look at it; chosen on the tuning
    # half of tests/data/semantic_pairs.jsonl (README, "Semantic cache").
    threshold: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.75
    # Answers holding tool calls are served only to the exact question unless this is on.
    serve_tool_calls: bool = False
    # Vectors one partition keeps (oldest dropped first), and vectors all partitions held in
    # this process keep together (least recently searched partitions dropped first).
    max_per_partition: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 10_000
    max_vectors: Annotated[int, msgspec.Meta(ge=1)] = 100_000


class Settings(msgspec.Struct, forbid_unknown_fields=True):
    server: ServerSettings = msgspec.field(default_factory=ServerSettings)
    upstream: UpstreamSettings = msgspec.field(default_factory=UpstreamSettings)
    tenancy: TenancySettings = msgspec.field(default_factory=TenancySettings)
    admin: AdminSettings = msgspec.field(default_factory=AdminSettings)
    cache: CacheSettings = msgspec.field(default_factory=CacheSettings)
    ttl: TtlSettings = msgspec.field(default_factory=TtlSettings)
    persona: PersonaSettings = msgspec.field(default_factory=PersonaSettings)
    batch: BatchSettings = msgspec.field(default_factory=BatchSettings)
    ledger: LedgerSettings = msgspec.field(default_factory=LedgerSettings)
    budget: BudgetSettings = msgspec.field(default_factory=BudgetSettings)
    rate: RateSettings = msgspec.field(default_factory=RateSettings)
    pricing: PricingSettings = msgspec.field(default_factory=PricingSettings)
    invalidation: InvalidationSettings = msgspec.field(default_factory=InvalidationSettings)
    semantic: SemanticSettings = msgspec.field(default_factory=SemanticSettings)
    # Routing (proxy/upstream/routes.py): none means UPSTREAM_BASE_URL as upstream `default`.
    upstreams: list[RouteSettings] = []
    # model (glob) -> ["upstream" | "upstream:model", ...], tried in order after its upstream.
    fallbacks: dict[str, list[str]] = {}

    @property
    def managed_mode(self) -> bool:
        return self.upstream.api_key is not None


class SettingsError(ValueError):
    """A setting has a value that is not allowed; the message is one line for the operator."""
