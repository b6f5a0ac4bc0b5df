"""The Grafana dashboard against a real Prometheus (Debian's `prometheus` binary, private port,
config and storage) scraping a real sidecar that served a known mix: every panel query returns
data, and the new metrics (cost and saved USD, time to first token, overhead) hold the mix's
figures. The JSON is also decoded by grafana-foundation-sdk (types generated from Grafana's
dashboard schema) without losing a field, and checked for what Grafana requires."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import openai
import pytest
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.cog.plugins import register_default_plugins
from grafana_foundation_sdk.models.dashboard import Dashboard
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from proxy.ledger.pricing import PriceTable
from proxy.metrics import Metrics
from proxy.settings import PricingSettings
from tests.fixtures.server_base import free_port
from tests.fixtures.sidecar import Sidecar, SidecarFactory, Stub
from tests.test_admin_health import samples, value
from tests.test_ledger_e2e import CHAT_MODEL, EMBED_MODEL, MAX_TOKENS, chat_messages, price

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy" / "grafana" / "sidecache.json"
DATASOURCES = ROOT / "deploy" / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
DATED = "gpt-4o-mini-2024-07-18"  # priced as gpt-4o-mini, and so labelled
READY_TIMEOUT_S = 20.0
# What Grafana puts in place of its interval variables, and the "All" of each template
# variable (its allValue).
GRAFANA_INTERVALS = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h"}

Json = dict[str, Any]


def dashboard() -> Json:
    data: Json = json.loads(DASHBOARD.read_text())
    return data


def panel_queries(board: Json) -> list[tuple[str, str]]:
    """(panel title and refId, the PromQL Grafana would send with every variable at All)."""
    alls = {f"${v['name']}": v["allValue"] for v in board["templating"]["list"]}
    queries = []
    for panel in board["panels"]:
        for target in panel["targets"]:
            expr = target["expr"]
            for name, replacement in {**GRAFANA_INTERVALS, **alls}.items():
                expr = expr.replace(name, replacement)
            assert "$" not in expr, expr
            queries.append((f"{panel['title']} {target['refId']}", expr))
    return queries


# --- the dashboard JSON, offline -------------------------------------------------------------


def _lost(original: Any, decoded: Any, where: str = "") -> list[str]:
    """Paths of the original's fields missing or changed after the SDK's round trip."""
    if isinstance(original, dict) and isinstance(decoded, dict):
        lost = [f"{where}/{k}" for k in original if k not in decoded]
        for key in original.keys() & decoded.keys():
            lost += _lost(original[key], decoded[key], f"{where}/{key}")
        return lost
    if isinstance(original, list) and isinstance(decoded, list):
        if len(original) != len(decoded):
            return [where]
        return [
            path
            for i, (a, b) in enumerate(zip(original, decoded, strict=True))
            for path in _lost(a, b, f"{where}[{i}]")
        ]
    return [] if original == decoded else [where]


def test_dashboard_decodes_into_grafanas_schema_types() -> None:
    """Every field is one Grafana's schema knows (the round trip through the generated types
    keeps it), each panel type's options and each Prometheus target decode as their own
    types."""
    register_default_plugins()
    board = dashboard()
    decoded = Dashboard.from_json(board)
    assert _lost(board, json.loads(json.dumps(decoded, cls=JSONEncoder))) == []
    assert decoded.panels is not None
    for panel in decoded.panels:
        assert type(panel.options).__module__.endswith(f".{panel.type_val}")
        for target in panel.targets or []:
            assert type(target).__module__.endswith(".prometheus")


def test_dashboard_has_what_grafana_requires() -> None:
    board = dashboard()
    assert board["title"] and re.fullmatch(r"[A-Za-z0-9_-]{1,40}", board["uid"])
    assert isinstance(board["schemaVersion"], int) and board["schemaVersion"] >= 36
    panels = board["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["w"] > 0 and grid["h"] > 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        mine = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not mine & cells, f"{panel['title']} overlaps another panel"
        cells |= mine
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(set(refs)) == len(refs), panel["title"]
    (source,) = json.loads(json.dumps(_yaml(DATASOURCES)["datasources"]))
    uids = {t["datasource"]["uid"] for p in panels for t in p["targets"]}
    uids |= {p["datasource"]["uid"] for p in panels}
    uids |= {v["datasource"]["uid"] for v in board["templating"]["list"]}
    assert uids == {source["uid"]}


def _yaml(path: Path) -> Json:
    import yaml

    data: Json = yaml.safe_load(path.read_text())
    return data


# --- a real Prometheus scraping a real sidecar -----------------------------------------------


class Prometheus:
    def __init__(self, url: str) -> None:
        self.url = url

    def get(self, path: str, **params: str) -> Json:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=5) as answer:
            body: Json = json.loads(answer.read())
        assert body["status"] == "success", body
        data: Json = body["data"]
        return data

    def query(self, expr: str) -> list[Json]:
        result: list[Json] = self.get("/api/v1/query", query=expr)["result"]
        return result


@contextmanager
def private_prometheus(target: str, workdir: Path) -> Iterator[Prometheus]:
    """Debian's prometheus on a free loopback port, scraping `target` every second, its
    storage in `workdir` (the package's own service is not used)."""
    binary = shutil.which("prometheus")
    assert binary, "prometheus not installed: run `make test-servers`"
    config = workdir / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: sidecache\n    metrics_path: /metrics\n"
        f"    static_configs:\n      - targets: ['{target}']\n"
    )
    port = free_port()
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(workdir / "prometheus.log").open("w"),
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            try:
                with urllib.request.urlopen(f"{url}/-/ready", timeout=1) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, (workdir / "prometheus.log").read_text()
            assert process.poll() is None, (workdir / "prometheus.log").read_text()
            time.sleep(0.1)
        yield Prometheus(url)
    finally:
        process.terminate()
        process.wait(timeout=10)


def serve_known_mix(sidecar: Sidecar, stub: Stub) -> None:
    """Chat: a miss and two hits; a stream missed live then hit (replayed); an unpriced
    dated model name's miss; an embeddings miss; an upstream 400."""
    client = sidecar.client()

    def chat(question: str, model: str = CHAT_MODEL) -> str:
        raw = client.chat.completions.with_raw_response.create(
            model=model, messages=chat_messages(question), max_tokens=MAX_TOKENS
        )
        return raw.headers["x-cache"]

    def stream(question: str) -> str:
        raw = client.chat.completions.with_raw_response.create(
            model=CHAT_MODEL, messages=chat_messages(question), max_tokens=MAX_TOKENS, stream=True
        )
        assert [chunk for chunk in raw.parse()]
        return raw.headers["x-cache"]

    assert [chat("What is a prime?") for _ in range(3)] == ["MISS", "HIT", "HIT"]
    assert [stream("Stream me a list.") for _ in range(2)] == ["MISS", "HIT"]
    assert chat("Who priced this?", DATED) == "MISS"
    client.embeddings.create(model=EMBED_MODEL, input=["one", "two"])
    stub.fake.fail_status, stub.fake.fail_next = 400, 1
    with pytest.raises(openai.BadRequestError):
        chat("This one fails upstream.")


def test_every_panel_query_returns_data(
    make_sidecar: SidecarFactory, stub: Stub, tmp_path: Path
) -> None:
    sidecar = make_sidecar()
    target = sidecar.admin_url.removeprefix("http://")
    with private_prometheus(target, tmp_path) as prometheus:
        serve_known_mix(sidecar, stub)
        expected = value(
            samples(sidecar),
            "sidecache_overhead_seconds_count",
            endpoint="chat.completions",
            cache="HIT",
        )
        assert expected == 3
        # Two scrapes after the mix: every rate() has two samples of the mix's series.
        scraped = 'sidecache_overhead_seconds_count{endpoint="chat.completions",cache="HIT"}'
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            found = prometheus.query(f"count_over_time({scraped}[1m])")
            if found and float(found[0]["value"][1]) >= 2:
                break
            assert time.monotonic() < deadline, "Prometheus never scraped the mix"
            time.sleep(0.2)
        empty = [name for name, expr in panel_queries(dashboard()) if not prometheus.query(expr)]
        assert empty == []
        values = prometheus.get(
            "/api/v1/label/endpoint/values", **{"match[]": "sidecache_requests_total"}
        )
        assert {"chat.completions", "embeddings"} <= set(values)


def test_new_metrics_hold_the_known_mix(make_sidecar: SidecarFactory, stub: Stub) -> None:
    sidecar = make_sidecar()
    serve_known_mix(sidecar, stub)
    found = samples(sidecar)
    chat = "chat.completions"
    # Overhead: every hit, and every miss whose upstream call was timed (the failed call's
    # time is unknown to the outcome, so it is left out).
    assert value(found, "sidecache_overhead_seconds_count", endpoint=chat, cache="HIT") == 3
    assert value(found, "sidecache_overhead_seconds_count", endpoint=chat, cache="MISS") == 3
    # Time to first token: the streamed answers only (live miss, replayed hit).
    assert value(found, "sidecache_time_to_first_token_seconds_count", endpoint=chat) == 2
    # Cost and saved USD by the price table's model names (the dated name counted as its model).
    models = {dict(labels)["model"] for name, labels in found if name == "sidecache_cost_usd_total"}
    assert models == {CHAT_MODEL, EMBED_MODEL}
    prime = price(sidecar, CHAT_MODEL, _prompt("What is a prime?"), MAX_TOKENS)
    listed = price(sidecar, CHAT_MODEL, _prompt("Stream me a list."), MAX_TOKENS)
    dated = price(sidecar, DATED, _prompt("Who priced this?"), MAX_TOKENS)
    spent = value(found, "sidecache_cost_usd_total", endpoint=chat, model=CHAT_MODEL)
    saved = value(found, "sidecache_saved_usd_total", endpoint=chat, model=CHAT_MODEL)
    assert spent == pytest.approx(prime + listed + dated) and dated > 0
    assert saved == pytest.approx(2 * prime + listed)
    assert value(found, "sidecache_upstream_queued") == 0


def _prompt(question: str) -> int:
    from proxy.fake_upstream.content import chat_prompt_tokens

    return chat_prompt_tokens(chat_messages(question))


def test_unpriced_models_share_one_label() -> None:
    prices = PriceTable.from_settings(PricingSettings())
    assert prices.priced_name("GPT-4o-mini-2024-07-18") == "gpt-4o-mini"
    assert prices.priced_name("my-own-finetune") is None


def test_overhead_histogram_buckets_as_prometheus_does() -> None:
    """The scrape-time histogram: `le` inclusive, cumulative, +Inf holding everything; a miss's
    overhead is its time minus the upstream's, and a miss without upstream time is left out."""
    metrics = Metrics(CollectorRegistry())
    metrics.observe_answer("embeddings", "HIT", 0.001, None, None)  # exactly on a bound
    metrics.observe_answer("embeddings", "HIT", 99.0, None, None)  # beyond the last bound
    metrics.observe_answer("embeddings", "MISS", 0.5, 300.0, None)  # 0.2 s its own
    metrics.observe_answer("embeddings", "COALESCED", 0.5, None, 0.25)  # no overhead; a TTFT
    found = {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(generate_latest(metrics.registry).decode())
        for sample in family.samples
    }
    name = "sidecache_overhead_seconds"
    assert value(found, f"{name}_bucket", endpoint="embeddings", cache="HIT", le="0.0005") == 0
    assert value(found, f"{name}_bucket", endpoint="embeddings", cache="HIT", le="0.001") == 1
    assert value(found, f"{name}_bucket", endpoint="embeddings", cache="HIT", le="60.0") == 1
    assert value(found, f"{name}_bucket", endpoint="embeddings", cache="HIT", le="+Inf") == 2
    assert value(found, f"{name}_sum", endpoint="embeddings", cache="HIT") == 99.001
    assert value(found, f"{name}_bucket", endpoint="embeddings", cache="MISS", le="0.1") == 0
    assert value(found, f"{name}_bucket", endpoint="embeddings", cache="MISS", le="0.25") == 1
    coalesced = frozenset({("endpoint", "embeddings"), ("cache", "COALESCED")})
    assert (f"{name}_count", coalesced) not in found
    ttft = "sidecache_time_to_first_token_seconds_count"
    assert value(found, ttft, endpoint="embeddings") == 1
