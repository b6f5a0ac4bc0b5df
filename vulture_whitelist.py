"""Names vulture reports as unused that are used where it cannot see. Vulture reads this file with
proxy/ and admin/ (`[tool.vulture]` in pyproject.toml); nothing imports or runs it, and mypy does
not check it. Each entry says why.

`make lint` runs vulture at 80 % confidence, which reports unused imports and arguments and
unreachable code; none of these entries is needed there yet. Unused classes, functions,
methods, attributes and variables are reported at 60 %, and these entries are what keeps
`.venv/bin/vulture --min-confidence 60` clean, so that sweep shows only new findings.
"""

from admin import cache_models, models
from proxy.cache.pipe import _Protocol
from proxy.ledger import __getattr__ as ledger_getattr
from proxy.ledger.records import BudgetOverride, LedgerRecord
from proxy.upstream.breakers import _Transitions
from proxy.upstream.gate import Priority
from proxy.wire import Usage

# --- used where vulture cannot see -------------------------------------------------------------

# msgspec struct fields are read by msgspec, which encodes them into the JSON answers (and the
# OpenAPI document), or set by keyword (Usage(total_tokens=...)); vulture sees no attribute read.
Usage.total_tokens
cache_models.Invalidated.rules_held
cache_models.WarmJob.misses
cache_models.WarmJob.coalesced
models.Latency.avg_ms
models.Latency.p95_ms_approx
models.Overview.hit_rate
models.Costs.total_cost_usd
models.Costs.total_saved_usd
models.LatencyRow.avg_ms
models.LatencyRow.p50_ms
models.LatencyRow.p95_ms
models.LatencyRow.p99_ms
models.LatencyRow.max_ms
models.Performance.upstream_errors
models.Performance.slow_queries
models.UserRow.hit_rate
models.HitRate.hit_rate
models.PersonaHitRate.hit_rate
models.CacheStats.by_model
models.CacheStats.by_persona

# Ledger record fields that reach the tables through generated row functions
# (records.row_maker) or msgspec decoding, never by name.
LedgerRecord.response_time_ms
LedgerRecord.cache_hit
BudgetOverride.updated_at

# asyncio calls a Protocol's callbacks on the transport's events.
_Protocol.connection_made
_Protocol.data_received
_Protocol.connection_lost

# pybreaker calls its listeners' hooks on every state change.
_Transitions.state_change

# The module __getattr__ of PEP 562: Python calls it for proxy.ledger's lazily imported names.
ledger_getattr

# Members found by name from the X-Priority header (parse_priority iterates over the enum).
Priority.HIGH
Priority.LOW
