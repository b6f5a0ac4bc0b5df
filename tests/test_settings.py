"""Settings (docs/design.md §2): defaults <- TOML <- environment, one clear line for a bad value,
and a wheel that still finds its packaged defaults."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from proxy.settings import Settings, SettingsError
from proxy.settings_load import ENV_FIELDS, default_config_path, load_settings

REPO = Path(__file__).resolve().parent.parent
SECRET_VALUES = ("sk-live-upstream-5ecret", "sk-sidecar-5ecret", "admin-tok-5ecret", "hmac-5ecret")
LONG = "admin-token-0123456789"  # an admin token long enough for a non-loopback bind


def clean_environ(**extra: str) -> dict[str, str]:
    """This process's environment without any Sidecache setting, plus `extra`."""
    names = {*ENV_FIELDS, "SIDECACHE_CONFIG"}
    env = {k: v for k, v in os.environ.items() if k not in names}
    env["PYTHONPATH"] = str(REPO)
    env.update(extra)
    return env


def write_toml(tmp_path: Path, text: str) -> str:
    path = tmp_path / "sidecache.toml"
    path.write_text(text)
    return str(path)


def test_defaults_match_the_contract() -> None:
    settings = load_settings({})
    # config/default.toml says exactly what the built-in defaults say.
    assert settings == Settings()
    assert settings.upstream.base_url == "https://api.openai.com/v1"
    assert settings.upstream.api_key is None
    assert not settings.managed_mode
    assert (settings.server.proxy_port, settings.server.admin_port) == (8080, 8081)
    assert settings.server.admin_host == "127.0.0.1"
    assert settings.cache.redis_url is None
    assert settings.cache.default_ttl == 300
    assert settings.batch.size == 10
    assert settings.server.max_body_mb == 32
    assert settings.ledger.path == "./sidecache.db"
    assert settings.ledger.database_url is None
    assert default_config_path().is_file()


def test_toml_overrides_defaults_and_environment_overrides_toml(tmp_path: Path) -> None:
    path = write_toml(
        tmp_path,
        "[server]\nproxy_port = 9000\nlog_level = 'WARNING'\n"
        "[cache]\ndefault_ttl = 42\n[ttl]\nmax = 600\n",
    )
    from_file = load_settings({"SIDECACHE_CONFIG": path})
    assert from_file.server.proxy_port == 9000
    assert from_file.server.log_level == "WARNING"
    assert from_file.cache.default_ttl == 42
    assert from_file.ttl.max == 600
    # What the file leaves out keeps the built-in default.
    assert from_file.server.admin_port == 8081
    assert from_file.batch.size == 10

    both = load_settings({"SIDECACHE_CONFIG": path, "PROXY_PORT": "9100", "CACHE_DEFAULT_TTL": "7"})
    assert both.server.proxy_port == 9100
    assert both.cache.default_ttl == 7
    assert both.server.log_level == "WARNING"  # not in the environment: the file's value
    # An empty variable counts as unset.
    assert load_settings({"SIDECACHE_CONFIG": path, "PROXY_PORT": ""}).server.proxy_port == 9000


Getter = Callable[[Settings], Any]

# Every environment name of docs/design.md §2: (name, value, where it lands, expected, companions).
ENV_TABLE: list[tuple[str, str, Getter, Any, dict[str, str]]] = [
    ("UPSTREAM_BASE_URL", "http://127.0.0.1:9/v1", lambda s: s.upstream.base_url,
     "http://127.0.0.1:9/v1", {}),
    ("UPSTREAM_API_KEY", "sk-upstream", lambda s: s.upstream.api_key, "sk-upstream",
     {"SIDECAR_KEYS": "k1=acme"}),
    ("REDIS_URL", "redis://127.0.0.1:6390/2", lambda s: s.cache.redis_url,
     "redis://127.0.0.1:6390/2", {}),
    ("DATABASE_URL", "postgresql://u@h/db", lambda s: s.ledger.database_url,
     "postgresql://u@h/db", {}),
    ("PROXY_PORT", "18080", lambda s: s.server.proxy_port, 18080, {}),
    ("ADMIN_PORT", "18081", lambda s: s.server.admin_port, 18081, {}),
    ("ADMIN_HOST", "0.0.0.0", lambda s: s.server.admin_host, "0.0.0.0", {"ADMIN_TOKENS": LONG}),
    ("ADMIN_TOKENS", "tok1, tok2", lambda s: s.admin.tokens, ["tok1", "tok2"], {}),
    ("ADMIN_USER_IDS", "alice,bob", lambda s: s.admin.user_ids, ["alice", "bob"], {}),
    ("AI_BATCH_SIZE", "64", lambda s: s.batch.size, 64, {}),
    ("AI_BATCH_WAIT_MS", "1000", lambda s: s.batch.wait_ms, 1000.0,
     {"AI_BATCH_MAX_WAIT_MS": "1000"}),
    ("CACHE_DEFAULT_TTL", "900", lambda s: s.cache.default_ttl, 900, {}),
    ("CACHE_MEMORY_MB", "16", lambda s: s.cache.memory_mb, 16.0, {}),
    ("LEDGER_PATH", "/tmp/ledger.db", lambda s: s.ledger.path, "/tmp/ledger.db", {}),
    ("ALERT_WEBHOOK_URL", "https://hooks.example/x", lambda s: s.ledger.alert_webhook_url,
     "https://hooks.example/x", {}),
    ("MAX_BODY_MB", "2.5", lambda s: s.server.max_body_mb, 2.5, {}),
    ("LOG_LEVEL", "debug", lambda s: s.server.log_level, "DEBUG", {}),
]  # fmt: skip


# The names docs/design.md §2 fixes (the table above must cover every one).
DESIGN_ENV_NAMES = {
    "UPSTREAM_BASE_URL", "UPSTREAM_API_KEY", "REDIS_URL", "DATABASE_URL", "PROXY_PORT",
    "ADMIN_PORT", "ADMIN_HOST", "ADMIN_TOKENS", "ADMIN_USER_IDS", "AI_BATCH_SIZE",
    "AI_BATCH_WAIT_MS", "CACHE_DEFAULT_TTL", "CACHE_MEMORY_MB", "LEDGER_PATH",
    "ALERT_WEBHOOK_URL", "MAX_BODY_MB", "LOG_LEVEL",
}  # fmt: skip


def test_the_table_covers_every_design_name() -> None:
    assert {row[0] for row in ENV_TABLE} == DESIGN_ENV_NAMES
    assert DESIGN_ENV_NAMES.issubset(ENV_FIELDS)


@pytest.mark.parametrize(
    ("name", "value", "get", "expected", "companions"), ENV_TABLE, ids=[r[0] for r in ENV_TABLE]
)
def test_every_environment_name_maps_to_its_setting(
    name: str, value: str, get: Getter, expected: Any, companions: dict[str, str]
) -> None:
    assert name in ENV_FIELDS
    assert get(load_settings({})) != expected
    assert get(load_settings({name: value, **companions})) == expected


def test_sidecar_keys_map_keys_to_tenants() -> None:
    settings = load_settings({"UPSTREAM_API_KEY": "sk-up", "SIDECAR_KEYS": "k1=acme, k2 = beta"})
    assert settings.managed_mode
    assert settings.tenancy.sidecar_keys == {"k1": "acme", "k2": "beta"}


# (environment, the setting it names, the value shown, what must be said about what is allowed)
BAD_VALUES: list[tuple[dict[str, str], str, str, tuple[str, ...]]] = [
    ({"PROXY_PORT": "abc"}, "PROXY_PORT", "'abc'", ("int",)),
    ({"PROXY_PORT": "0"}, "PROXY_PORT", "'0'", (">= 1",)),
    ({"PROXY_PORT": "70000"}, "PROXY_PORT", "'70000'", ("<= 65535",)),
    ({"ADMIN_PORT": "-5"}, "ADMIN_PORT", "'-5'", (">= 1",)),
    ({"LOG_LEVEL": "LOUD"}, "LOG_LEVEL", "'LOUD'", ("DEBUG", "INFO", "WARNING", "ERROR")),
    ({"AI_BATCH_SIZE": "0"}, "AI_BATCH_SIZE", "'0'", (">= 1",)),
    ({"AI_BATCH_WAIT_MS": "soon"}, "AI_BATCH_WAIT_MS", "'soon'", ("float",)),
    ({"REDIS_URL": "http://x"}, "REDIS_URL", "'http://x'", ("redis", "rediss", "unix")),
    ({"UPSTREAM_BASE_URL": "ftp://x"}, "UPSTREAM_BASE_URL", "'ftp://x'", ("https?",)),
    ({"MAX_BODY_MB": "-1"}, "MAX_BODY_MB", "'-1'", ("> 0",)),
    ({"CACHE_DEFAULT_TTL": "forever"}, "CACHE_DEFAULT_TTL", "'forever'", ("int",)),
    ({"ADMIN_HOST": "0.0.0.0"}, "ADMIN_HOST", "'0.0.0.0'", ("ADMIN_TOKENS", "127.0.0.1")),
    (
        {"ADMIN_HOST": "0.0.0.0", "ADMIN_TOKENS": "short-tok"},
        "ADMIN_TOKENS",
        "<1 tokens>",
        ("16 characters",),
    ),
    (
        {"MAX_BODY_MB": "64", "MAX_INFLIGHT_BODY_MB": "32"},
        "MAX_INFLIGHT_BODY_MB",
        "32",
        ("at least MAX_BODY_MB",),
    ),
    (
        {"AI_BATCH_WAIT_MS": "300", "AI_BATCH_MAX_WAIT_MS": "200"},
        "AI_BATCH_MAX_WAIT_MS",
        "200",
        ("at least AI_BATCH_WAIT_MS (300)",),
    ),
    (
        {"AI_BATCH_GAP_MS": "50", "AI_BATCH_MAX_WAIT_MS": "40"},
        "AI_BATCH_MAX_WAIT_MS",
        "40",
        ("AI_BATCH_GAP_MS (50)",),
    ),
    ({"UPSTREAM_API_KEY": SECRET_VALUES[0]}, "SIDECAR_KEYS", "<empty>", ("key=tenant",)),
    ({"SIDECAR_KEYS": SECRET_VALUES[1]}, "SIDECAR_KEYS", "<redacted>", ("key=tenant",)),
]


@pytest.mark.parametrize(
    ("env", "setting", "shown", "allowed"),
    BAD_VALUES,
    ids=[f"{s}={next(iter(e.values()))[:12]}" for e, s, _, _ in BAD_VALUES],
)
def test_bad_value_is_one_line_naming_setting_value_and_what_is_allowed(
    env: dict[str, str], setting: str, shown: str, allowed: tuple[str, ...]
) -> None:
    # Secrets set alongside must never reach the message, whatever failed.
    secrets = {"CACHE_KEY_SECRET": SECRET_VALUES[3]}
    if "ADMIN_HOST" not in env:
        secrets["ADMIN_TOKENS"] = SECRET_VALUES[2]
    environ = {**secrets, **env}
    with pytest.raises(SettingsError) as caught:
        load_settings(environ)
    message = str(caught.value)
    assert "\n" not in message
    assert f"{setting}={shown}" in message
    for fragment in allowed:
        assert fragment in message
    for secret in SECRET_VALUES:
        assert secret not in message


def test_admin_bind_beyond_loopback_is_allowed_with_tokens() -> None:
    assert load_settings({"ADMIN_HOST": "::1"}).server.admin_host == "::1"
    with_tokens = load_settings({"ADMIN_HOST": "0.0.0.0", "ADMIN_TOKENS": LONG})
    assert with_tokens.server.admin_host == "0.0.0.0"


@pytest.mark.parametrize(
    ("toml", "setting", "allowed"),
    [
        ("[server]\nproxy_port = 'eighty'\n", "server.proxy_port", "int"),
        ("[server]\nlog_level = 'LOUD'\n", "server.log_level", "DEBUG, INFO, WARNING, ERROR"),
        ("[ttl]\nmin = 100\nmax = 50\n", "ttl.min", "ttl.max"),
        ("[cache]\npersona_dims = ['shoe_size']\n", "cache.persona_dims", "experience"),
        ("[server]\nno_such_setting = 1\n", "no_such_setting", "unknown"),
    ],
    ids=["type", "enum", "min-over-max", "dimension", "unknown-field"],
)
def test_bad_value_in_config_file(tmp_path: Path, toml: str, setting: str, allowed: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings({"SIDECACHE_CONFIG": write_toml(tmp_path, toml)})
    message = str(caught.value)
    assert "\n" not in message
    assert setting in message
    assert allowed.lower() in message.lower()


@pytest.mark.parametrize(
    "toml",
    [
        f"[tenancy]\nsidecar_keys = '{SECRET_VALUES[1]}'\n",
        f"[tenancy]\nsidecar_keys = {{ '{SECRET_VALUES[1]}' = 5 }}\n",
        f"[admin]\ntokens = '{SECRET_VALUES[2]}'\n",
        f"[upstream]\napi_key = ['{SECRET_VALUES[0]}']\n",
    ],
    ids=["keys-as-string", "key-with-bad-tenant", "tokens-as-string", "api-key-as-list"],
)
def test_secret_in_config_file_never_appears_in_the_message(tmp_path: Path, toml: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings({"SIDECACHE_CONFIG": write_toml(tmp_path, toml)})
    message = str(caught.value)
    assert "\n" not in message
    assert "<redacted>" in message
    for secret in SECRET_VALUES:
        assert secret not in message


@pytest.mark.parametrize("kind", ["missing", "directory", "invalid"])
def test_unreadable_or_invalid_toml(tmp_path: Path, kind: str) -> None:
    if kind == "missing":
        path = str(tmp_path / "nope.toml")
    elif kind == "directory":
        path = str(tmp_path)
    else:
        path = write_toml(tmp_path, "[server\nproxy_port = = 1\n")
    with pytest.raises(SettingsError) as caught:
        load_settings({"SIDECACHE_CONFIG": path})
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"SIDECACHE_CONFIG={path!r}")
    assert ("TOML" in message) == (kind == "invalid")


def test_cli_exits_2_with_one_line_on_a_bad_setting() -> None:
    env = clean_environ(PROXY_PORT="abc", UPSTREAM_API_KEY=SECRET_VALUES[0], SIDECAR_KEYS="k=t")
    done = subprocess.run(
        [sys.executable, "-m", "proxy", "serve"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert "PROXY_PORT='abc'" in lines[0]
    assert SECRET_VALUES[0] not in done.stderr
    assert done.stdout == ""


_WHEEL_PROBE = """
import json, proxy
from proxy.settings import Settings
from proxy.settings_load import default_config_path, load_settings
print(json.dumps({
    "proxy": proxy.__file__,
    "config": str(default_config_path()),
    "defaults": load_settings({}) == Settings(),
}))
"""


def test_installed_wheel_finds_its_packaged_config(tmp_path: Path) -> None:
    wheels, target, elsewhere = tmp_path / "wheels", tmp_path / "site", tmp_path / "cwd"
    elsewhere.mkdir()
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "-w", str(wheels), str(REPO)],
        check=True,
        timeout=120,
        capture_output=True,
    )
    (wheel,) = wheels.glob("sidecache-*.whl")
    subprocess.run(
        [*pip, "install", "--no-deps", "--target", str(target), str(wheel)],
        check=True,
        timeout=120,
        capture_output=True,
    )
    env = clean_environ(PYTHONPATH=str(target))
    done = subprocess.run(
        [sys.executable, "-c", _WHEEL_PROBE],
        env=env,
        cwd=elsewhere,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    found = json.loads(done.stdout)
    assert Path(found["proxy"]).is_relative_to(target)
    assert Path(found["config"]).is_relative_to(target)
    assert Path(found["config"]).is_file()
    assert found["defaults"] is True


def test_a_wait_longer_than_the_default_cap_raises_the_cap_when_the_cap_is_not_set() -> None:
    """A deployment that set AI_BATCH_WAIT_MS above 200 before the cap existed still starts,
    its window unchanged; only a cap set below the waits it caps is refused."""
    settings = load_settings({"AI_BATCH_WAIT_MS": "300"})
    assert settings.batch.max_wait_ms == 300
    assert load_settings({}).batch.max_wait_ms == 200
