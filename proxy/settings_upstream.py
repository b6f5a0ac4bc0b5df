"""The upstream sections of the settings' schema: `[upstream]` (the default upstream and the
limits every call shares) and each `[[upstreams]]` routing entry (proxy/upstream/routes.py).
The rest of the schema is `proxy.settings`."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from proxy.settings_types import Positive, Seconds

# A model-name glob of UPSTREAM_FLEX_MODELS (fnmatch: `*`, `?`, `[...]`), no spaces or commas.
ModelGlob = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9._:/@*?\[\]!-]+$")]

# An upstream's name (X-Upstream, metrics labels, the ledger's `upstream` column).
UpstreamName = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,39}$")]
BaseUrl = Annotated[str, msgspec.Meta(pattern=r"^https?://[^\s/]+")]


class UpstreamSettings(msgspec.Struct, forbid_unknown_fields=True):
    base_url: Annotated[str, msgspec.Meta(pattern=r"^https?://[^\s/]+")] = (
        "https://api.openai.com/v1"
    )
    # Where `/v1/messages` (Anthropic's Messages API) goes, when not to base_url (docs/design.md
    # §11); None: base_url, for OpenAI-compatible servers that serve both.
    anthropic_base_url: Annotated[str, msgspec.Meta(pattern=r"^https?://[^\s/]+")] | None = None
    api_key: str | None = None
    connect_timeout_s: Seconds = 5.0
    read_timeout_s: Seconds = 120.0
    max_connections: Positive = 256
    # Upstream calls in flight at once; the rest wait by X-Priority, then FIFO.
    max_in_flight: Positive = 64
    # The longest one understood upstream call may take, answer body and relayed stream
    # included (-> 504); long enough for the longest legitimate generation.
    total_timeout_s: Seconds = 600.0
    # The longest a request waits for an upstream slot (-> 503 + Retry-After); low priority
    # (warming) may wait up to total_timeout_s, since no client is waiting on it.
    queue_timeout_s: Seconds = 5.0
    breaker_fail_max: Positive = 5
    breaker_reset_s: Seconds = 30.0
    # Cross-replica single-flight (with Redis): the leader's lock lives this long unless
    # renewed, so a crashed leader delays followers at most about this much.
    coalesce_lock_ms: Annotated[int, msgspec.Meta(ge=100)] = 3000
    # How long a follower on another replica waits in all before calling upstream itself.
    coalesce_max_wait_ms: Annotated[int, msgspec.Meta(ge=0)] = 60_000
    # Chat and Responses requests without a `prompt_cache_key` get one derived from the tenant
    # and their system prompt (proxy/handlers/prompt_cache.py, docs/design.md §11).
    prompt_cache_key: bool = True
    # The flex lane (proxy/upstream/flex.py): low-priority work for these models goes at
    # `service_tier: "flex"`, retried once at the standard tier after a 429 or a timeout.
    flex: bool = False
    flex_models: list[ModelGlob] = msgspec.field(
        default_factory=lambda: ["o3*", "o4-mini*", "gpt-5*"]
    )
    # Connection errors and 502/503/504 before the first byte are retried this many times
    # (exponential back-off, full jitter, Retry-After honoured) within total_timeout_s.
    retries: Annotated[int, msgspec.Meta(ge=0, le=10)] = 2
    # False: answers a fallback served are not stored (the cache key is the requested model's).
    cache_fallbacks: bool = True

    @property
    def anthropic_upstream(self) -> str | None:
        """The Messages API's own upstream, when it is not base_url's."""
        url = self.anthropic_base_url
        return url if url and base_root(url) != base_root(self.base_url) else None


class RouteSettings(msgspec.Struct, forbid_unknown_fields=True):
    """One `[[upstreams]]` entry (proxy/upstream/routes.py); unset limits are [upstream]'s."""

    name: UpstreamName
    base_url: BaseUrl
    # Model globs; the first upstream (in file order) with a matching glob serves a model.
    models: list[ModelGlob] = msgspec.field(default_factory=lambda: ["*"])
    # "": the credential the sidecar would send anyway (the client's, or UPSTREAM_API_KEY);
    # else the environment variable holding this upstream's own key (read at start-up).
    api_key_env: str = ""
    # "azure": Azure OpenAI's deployments paths, `api-version` query and `api-key` header.
    api: Literal["openai", "azure"] = "openai"
    api_version: str = "2024-10-21"
    # Azure deployment per model; a model not named here is its own deployment name.
    deployments: dict[str, str] = {}
    breaker_fail_max: Positive | None = None
    breaker_reset_s: Seconds | None = None
    max_in_flight: Positive | None = None
    # Filled in at start-up from api_key_env (proxy/settings_checks.py); not a config field.
    api_key: str | None = None


def base_root(url: str) -> str:
    """A base URL without its trailing `/` and `/v1` (request paths start with /v1)."""
    url = url.rstrip("/")
    return url[:-3] if url.endswith("/v1") else url
