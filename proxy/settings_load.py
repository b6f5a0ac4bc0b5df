"""Settings: built-in defaults <- TOML file <- environment (docs/design.md §2).

The TOML file is `config/default.toml` (shipped inside the wheel as `proxy/_config`) unless
`SIDECACHE_CONFIG` names another one. Every environment variable maps onto one field; an invalid
value raises `SettingsError` with one line naming the setting, the value and what is allowed.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

import msgspec

from proxy.settings import Settings, SettingsError
from proxy.settings_checks import check_consistency

# Environment name -> (section, field). The names are part of the contract (docs/design.md §2).
ENV_FIELDS: dict[str, tuple[str, str]] = {
    "UPSTREAM_BASE_URL": ("upstream", "base_url"),
    "UPSTREAM_API_KEY": ("upstream", "api_key"),
    "ANTHROPIC_BASE_URL": ("upstream", "anthropic_base_url"),
    "UPSTREAM_CONNECT_TIMEOUT": ("upstream", "connect_timeout_s"),
    "UPSTREAM_READ_TIMEOUT": ("upstream", "read_timeout_s"),
    "UPSTREAM_MAX_CONNECTIONS": ("upstream", "max_connections"),
    "UPSTREAM_MAX_IN_FLIGHT": ("upstream", "max_in_flight"),
    "UPSTREAM_TOTAL_TIMEOUT": ("upstream", "total_timeout_s"),
    "UPSTREAM_QUEUE_TIMEOUT": ("upstream", "queue_timeout_s"),
    "BREAKER_FAIL_MAX": ("upstream", "breaker_fail_max"),
    "BREAKER_RESET_S": ("upstream", "breaker_reset_s"),
    "COALESCE_LOCK_MS": ("upstream", "coalesce_lock_ms"),
    "COALESCE_MAX_WAIT_MS": ("upstream", "coalesce_max_wait_ms"),
    "PROMPT_CACHE_KEY": ("upstream", "prompt_cache_key"),
    "UPSTREAM_FLEX": ("upstream", "flex"),
    "UPSTREAM_FLEX_MODELS": ("upstream", "flex_models"),
    "UPSTREAM_RETRIES": ("upstream", "retries"),
    "UPSTREAM_CACHE_FALLBACKS": ("upstream", "cache_fallbacks"),
    "SIDECAR_KEYS": ("tenancy", "sidecar_keys"),
    "CACHE_KEY_SECRET": ("tenancy", "key_secret"),
    "REDIS_URL": ("cache", "redis_url"),
    "REDIS_CLUSTER": ("cache", "redis_cluster"),
    "REDIS_CA_FILE": ("cache", "redis_ca_file"),
    "REDIS_CERT_FILE": ("cache", "redis_cert_file"),
    "REDIS_KEY_FILE": ("cache", "redis_key_file"),
    "CACHE_DEFAULT_TTL": ("cache", "default_ttl"),
    "CACHE_MEMORY_MB": ("cache", "memory_mb"),
    "NEAR_CACHE_MB": ("cache", "near_cache_mb"),
    "DATABASE_URL": ("ledger", "database_url"),
    "LEDGER_PATH": ("ledger", "path"),
    "ALERT_WEBHOOK_URL": ("ledger", "alert_webhook_url"),
    "LEDGER_JOURNAL": ("ledger", "journal_path"),
    "LEDGER_MIGRATE_ON_START": ("ledger", "migrate_on_start"),
    "LEDGER_BATCH_SIZE": ("ledger", "batch_size"),
    "LEDGER_FLUSH_INTERVAL_S": ("ledger", "flush_interval_s"),
    "LEDGER_ENABLED": ("ledger", "enabled"),
    "BUDGET_TENANT_DAILY_USD": ("budget", "tenant_daily_usd"),
    "BUDGET_TENANT_MONTHLY_USD": ("budget", "tenant_monthly_usd"),
    "BUDGET_USER_DAILY_USD": ("budget", "user_daily_usd"),
    "BUDGET_USER_MONTHLY_USD": ("budget", "user_monthly_usd"),
    "BUDGET_ON_STORE_DOWN": ("budget", "on_store_down"),
    "RATE_TENANT_RPM": ("rate", "tenant_rpm"),
    "RATE_TENANT_TPM": ("rate", "tenant_tpm"),
    "RATE_USER_RPM": ("rate", "user_rpm"),
    "RATE_USER_TPM": ("rate", "user_tpm"),
    "RATE_WINDOW_S": ("rate", "window_s"),
    "RATE_OVERRIDES_REFRESH_S": ("rate", "overrides_refresh_s"),
    "PRICING_FILE": ("pricing", "file"),
    "PROXY_HOST": ("server", "proxy_host"),
    "PROXY_PORT": ("server", "proxy_port"),
    "ADMIN_HOST": ("server", "admin_host"),
    "ADMIN_PORT": ("server", "admin_port"),
    "MAX_BODY_MB": ("server", "max_body_mb"),
    "MAX_INFLIGHT_BODY_MB": ("server", "max_inflight_body_mb"),
    "LOG_LEVEL": ("server", "log_level"),
    "HEADER_READ_TIMEOUT": ("server", "header_read_timeout_s"),
    "WORKERS": ("server", "workers"),
    "ADMIN_TOKENS": ("admin", "tokens"),
    "ADMIN_USER_IDS": ("admin", "user_ids"),
    "AI_BATCH_SIZE": ("batch", "size"),
    "AI_BATCH_WAIT_MS": ("batch", "wait_ms"),
    "AI_BATCH_GAP_MS": ("batch", "gap_ms"),
    "AI_BATCH_MAX_WAIT_MS": ("batch", "max_wait_ms"),
    "TRUSTED_USER_HEADER_KEYS": ("tenancy", "trusted_user_header_keys"),
    "INVALIDATION_MAX_RULES": ("invalidation", "max_rules"),
    "INVALIDATION_USER_FLUSH_INTERVAL_S": ("invalidation", "user_flush_interval_s"),
    "SEMANTIC_CACHE": ("semantic", "enabled"),
    "SEMANTIC_EMBEDDER": ("semantic", "embedder"),
    "SEMANTIC_THRESHOLD": ("semantic", "threshold"),
    "SEMANTIC_SERVE_TOOL_CALLS": ("semantic", "serve_tool_calls"),
}
# DATABASE_URL may carry a password and webhook URLs often carry a token.
SECRET_ENV = frozenset(
    {
        "UPSTREAM_API_KEY",
        "SIDECAR_KEYS",
        "CACHE_KEY_SECRET",
        "ADMIN_TOKENS",
        "DATABASE_URL",
        "ALERT_WEBHOOK_URL",
    }
)
_FIELD_ENV = {field: env for env, field in ENV_FIELDS.items()}


def default_config_path() -> Path:
    """`config/default.toml`: inside the installed wheel, or at the top of a source checkout."""
    packaged = resources.files("proxy") / "_config" / "default.toml"
    if packaged.is_file():
        return Path(str(packaged))
    return Path(__file__).resolve().parent.parent / "config" / "default.toml"


def config_dir() -> Path:
    return default_config_path().parent


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    env = os.environ if environ is None else environ
    path = Path(env["SIDECACHE_CONFIG"]) if env.get("SIDECACHE_CONFIG") else default_config_path()
    try:
        with path.open("rb") as fh:
            merged: dict[str, Any] = tomllib.load(fh)
    except OSError as exc:
        raise SettingsError(
            f"SIDECACHE_CONFIG={str(path)!r}: cannot read it ({exc.strerror})"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"SIDECACHE_CONFIG={str(path)!r}: not valid TOML ({exc})") from None
    for name, (section, field) in ENV_FIELDS.items():
        raw = env.get(name)
        if raw is None or raw == "":
            continue
        merged.setdefault(section, {})[field] = _parse_env(name, raw)
    try:
        settings = msgspec.convert(merged, Settings, strict=False)
    except msgspec.ValidationError as exc:
        raise SettingsError(_explain(exc, merged, env)) from None
    check_consistency(settings, env)
    return settings


_SWITCHES = frozenset(
    {
        "SEMANTIC_CACHE",
        "SEMANTIC_SERVE_TOOL_CALLS",
        "PROMPT_CACHE_KEY",
        "UPSTREAM_FLEX",
        "UPSTREAM_CACHE_FALLBACKS",
    }
)
_SWITCH = {"on": True, "off": False, "true": True, "false": False, "1": True, "0": False}


def _parse_env(name: str, raw: str) -> Any:
    if name in ("ADMIN_TOKENS", "ADMIN_USER_IDS", "UPSTREAM_FLEX_MODELS"):
        return [item.strip() for item in raw.split(",") if item.strip()]
    if name == "SIDECAR_KEYS":
        pairs: dict[str, str] = {}
        for item in filter(None, (part.strip() for part in raw.split(","))):
            key, sep, tenant = item.partition("=")
            if not sep or not key.strip() or not tenant.strip():
                raise SettingsError(
                    "invalid setting SIDECAR_KEYS=<redacted>: expected key=tenant[,key=tenant...]"
                )
            pairs[key.strip()] = tenant.strip()
        return pairs
    if name in _SWITCHES:
        return _SWITCH.get(raw.strip().lower(), raw)  # anything else fails as "expected bool"
    if name == "LOG_LEVEL":
        return raw.upper()
    if name == "TRUSTED_USER_HEADER_KEYS":
        items = [item.strip() for item in raw.split(",") if item.strip()]
        return [] if items == ["none"] else items
    return raw


def _explain(exc: msgspec.ValidationError, merged: dict[str, Any], env: Mapping[str, str]) -> str:
    message, _, where = str(exc).partition(" - at `$.")
    # The dotted path up to the first subscript (msgspec shows map keys as `[...]`).
    parts = tuple(where.rstrip("`").split("[", 1)[0].split(".")) if where else ()
    field = parts[:2] if len(parts) >= 2 else parts
    env_name = _FIELD_ENV.get((field[0], field[1])) if len(field) == 2 else None
    allowed = _allowed(message, parts)
    if env_name and env.get(env_name):
        shown = "<redacted>" if env_name in SECRET_ENV else repr(env[env_name])
        return f"invalid setting {env_name}={shown}: {allowed}"
    if env_name in SECRET_ENV:
        return f"invalid setting {'.'.join(field)}=<redacted> (config file): {allowed}"
    value: Any = merged
    for part in parts:
        value = value.get(part) if isinstance(value, dict) else None
    name = ".".join(parts) or "config"
    return f"invalid setting {name}={value!r} (config file): {allowed}"


def _allowed(message: str, parts: tuple[str, ...]) -> str:
    if message.startswith("Invalid enum value"):
        kind: Any = Settings
        for part in parts:
            kind = get_type_hints(kind).get(part) if isinstance(kind, type) else None
        if get_origin(kind) is Literal:
            return f"expected one of {', '.join(map(str, get_args(kind)))}"
    return message.replace("Expected", "expected").replace("`", "")
