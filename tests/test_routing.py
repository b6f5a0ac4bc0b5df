"""Routing (docs/design.md §13, issue 16 items 2 and 6): `[[upstreams]]` in the config send each
model to the first upstream whose globs match it, with its own credential mode; answers say
X-Upstream; the ledger records the upstream and the served model; bad routing stops start-up
naming the setting. Two real fake upstreams on loopback."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from proxy.settings import SettingsError
from proxy.settings_load import load_settings
from proxy.upstream.client import UpstreamClient
from proxy.upstream.lanes import Lane
from proxy.upstream.routes import RouteTable, Target
from tests.fixtures.sidecar import LoopThread, Sidecar, SidecarFactory, Stub, serve_double
from tests.fixtures.upstreams import Routed, chat, routing_toml
from tests.test_ledger_e2e import flush, ledger_of

PRIMARY, BACKUP = "http://127.0.0.1:1/v1", "http://127.0.0.1:2/v1"


def settings_from(tmp_path: Path, toml: str, **env: str) -> Any:
    path = tmp_path / "config.toml"
    path.write_text(toml)
    return load_settings({"SIDECACHE_CONFIG": str(path), **env})


def refused(tmp_path: Path, toml: str, **env: str) -> str:
    with pytest.raises(SettingsError) as caught:
        settings_from(tmp_path, toml, **env)
    return str(caught.value)


def test_without_upstreams_base_url_is_upstream_default() -> None:
    table = RouteTable.from_settings(load_settings({"UPSTREAM_BASE_URL": PRIMARY}))
    assert list(table.routes) == ["default"]
    assert table.chain("anything-at-all") == (Target("default"),)
    assert load_settings({}).upstream.retries == 2


def test_first_matching_upstream_serves_and_chains_follow_fallbacks(tmp_path: Path) -> None:
    fallbacks = {"gpt-4o": ["backup", "backup:gpt-4o-mini"], "gpt-4o-mini": ["backup:o4-mini"]}
    settings = settings_from(tmp_path, routing_toml(PRIMARY, BACKUP, fallbacks))
    table = RouteTable.from_settings(settings)
    assert table.upstream_for("gpt-4.1") == "primary" and table.upstream_for("o3") == "backup"
    # gpt-4o's chain: its upstream, backup, then backup:gpt-4o-mini and gpt-4o-mini's own.
    assert [t.label() for t in table.chain("gpt-4o")] == [
        "primary",
        "backup",
        "backup:gpt-4o-mini",
        "backup:o4-mini",
    ]
    assert table.chain("o3") == (Target("backup"),)


@pytest.mark.parametrize(
    ("fallbacks", "named"),
    [
        ({"gpt-4o": ["nowhere"]}, "fallbacks.'gpt-4o'='nowhere'"),
        ({"gpt-4o": ["primary"]}, "a fallback cycle"),
        ({"gpt-4o": ["backup:o3"], "o3": ["primary:gpt-4o"]}, "a fallback cycle"),
    ],
)
def test_bad_fallbacks_stop_start_up(
    tmp_path: Path, fallbacks: dict[str, list[str]], named: str
) -> None:
    assert named in refused(tmp_path, routing_toml(PRIMARY, BACKUP, fallbacks))


def test_other_bad_routing_stops_start_up_naming_the_setting(tmp_path: Path) -> None:
    only_gpt = f'[[upstreams]]\nname = "a"\nbase_url = "{PRIMARY}"\nmodels = ["gpt-*"]\n'
    message = refused(tmp_path, only_gpt + '[fallbacks]\n"claude-*" = ["a"]\n')
    assert "fallbacks.'claude-*'" in message and "no upstream" in message
    twice = only_gpt + only_gpt.replace(PRIMARY, BACKUP)
    assert "upstreams.name='a'" in refused(tmp_path, twice)
    keyed = only_gpt + 'api_key_env = "SIDECACHE_TEST_NO_SUCH_KEY"\n'
    assert "upstreams[0].api_key_env='SIDECACHE_TEST_NO_SUCH_KEY'" in refused(tmp_path, keyed)
    assert "UPSTREAM_RETRIES='-1'" in refused(tmp_path, "", UPSTREAM_RETRIES="-1")
    spaced = refused(tmp_path, only_gpt.replace('"a"', '"a b"'))
    assert spaced.startswith("invalid setting upstreams=") and "'a b'" in spaced


def test_models_go_to_their_upstream_and_say_which(
    routed: Routed, stub: Stub, backup: Stub
) -> None:
    sidecar = routed()
    first = chat(sidecar, "to the primary", model="gpt-4o-mini")
    assert first.status == 200 and first.headers["x-upstream"] == "primary"
    assert "x-fallback-from" not in first.headers
    other = chat(sidecar, "to the backup", model="o4-mini")
    assert other.status == 200 and other.headers["x-upstream"] == "backup"
    assert (stub.calls, backup.calls) == (1, 1)
    hit = chat(sidecar, "to the primary", model="gpt-4o-mini")
    assert hit.headers["x-cache"] == "HIT" and "x-upstream" not in hit.headers


def test_an_upstream_key_replaces_the_clients_credential(
    routed: Routed, stub: Stub, backup: Stub, monkeypatch: pytest.MonkeyPatch
) -> None:
    # load_settings reads the test's environment mapping, not os.environ: pass the key there.
    sidecar = routed(backup_extra='api_key_env = "BACKUP_KEY"', BACKUP_KEY="sk-backup-own-key")
    answer = chat(sidecar, "managed", model="o4-mini", headers={"api-key": "client-azure-key"})
    assert answer.status == 200
    sent = backup.fake.requests[-1].headers
    assert sent["authorization"] == "Bearer sk-backup-own-key"
    assert "api-key" not in sent  # no credential of the client's reaches it
    assert chat(sidecar, "passed through", model="gpt-4o").status == 200
    assert stub.fake.requests[-1].headers["authorization"].endswith("0123456789")  # the client's


def test_ledger_rows_carry_the_upstream_and_served_model(
    routed: Routed, loop_thread: LoopThread
) -> None:
    sidecar: Sidecar = routed()
    assert chat(sidecar, "ledger primary", model="gpt-4o-mini").status == 200
    assert chat(sidecar, "ledger backup", model="o4-mini").status == 200
    assert chat(sidecar, "ledger primary", model="gpt-4o-mini").headers["x-cache"] == "HIT"
    flush(loop_thread, sidecar)
    sql = "SELECT model, upstream, served_model, cache_status FROM ai_requests ORDER BY created_at"
    rows = loop_thread.run(ledger_of(sidecar).fetch(sql))
    assert [tuple(r.values()) for r in rows] == [
        ("gpt-4o-mini", "primary", "gpt-4o-mini", "MISS"),
        ("o4-mini", "backup", "o4-mini", "MISS"),
        ("gpt-4o-mini", None, None, "HIT"),
    ]


async def test_azure_style_urls_and_key_header(tmp_path: Path) -> None:
    toml = """
[[upstreams]]
name = "azure"
base_url = "https://res.openai.azure.com"
api = "azure"
api_version = "2024-10-21"
deployments = {"gpt-4o" = "prod-4o"}
api_key_env = "AZURE_KEY"
"""
    settings = settings_from(tmp_path, toml, AZURE_KEY="azure-secret")
    route = RouteTable.from_settings(settings).routes["azure"]
    client = UpstreamClient.open(settings.upstream)
    try:
        azure = client.for_route(route)
        assert azure.url("/v1/chat/completions", model="gpt-4o") == (
            "https://res.openai.azure.com/openai/deployments/prod-4o/chat/completions"
            "?api-version=2024-10-21"
        )
        assert azure.url("/v1/embeddings", model="text-embedding-3-small").startswith(
            "https://res.openai.azure.com/openai/deployments/text-embedding-3-small/embeddings?"
        )
        lane = Lane("azure", azure, None, route.api_key, azure=True)  # type: ignore[arg-type]
        sent = lane.headers({"Authorization": "Bearer client", "Content-Type": "x"})
        assert dict(sent) == {"Content-Type": "x", "api-key": "azure-secret"}
        vllm = settings_from(tmp_path, routing_toml("http://vllm:8000/v1", BACKUP))
        plain = client.for_route(RouteTable.from_settings(vllm).routes["primary"])
        assert plain.url("/v1/chat/completions") == "http://vllm:8000/v1/chat/completions"
    finally:
        await client.close()


def test_embeddings_route_and_record_their_upstream(
    routed: Routed, stub: Stub, backup: Stub, loop_thread: LoopThread
) -> None:
    sidecar: Sidecar = routed()
    for inputs in (["one input"], ["two", "inputs"]):  # micro-batched, then a call of its own
        body = {"model": "text-embedding-3-small", "input": inputs}
        answer = sidecar.request("POST", "/v1/embeddings", body)
        assert answer.status == 200 and answer.headers["x-upstream"] == "backup"
    assert (stub.calls, backup.calls) == (0, 2)
    flush(loop_thread, sidecar)
    rows = loop_thread.run(ledger_of(sidecar).fetch("SELECT upstream FROM ai_requests"))
    assert [r["upstream"] for r in rows] == ["backup", "backup"]


class AzureDouble:
    """Azure OpenAI's URL shape on loopback: records each call's path, query and headers."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, dict[str, str]]] = []

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/openai/deployments/{deployment}/chat/completions", self.chat)
        return app

    async def chat(self, request: web.Request) -> web.Response:
        headers = {k.lower(): v for k, v in request.headers.items()}
        self.calls.append((request.path, request.query_string, headers))
        body = await request.json()
        return web.json_response(
            {
                "id": "chatcmpl-azure",
                "object": "chat.completion",
                "created": 1,
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "from azure"},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
            }
        )


def test_an_azure_upstream_is_called_its_way(
    make_sidecar: SidecarFactory, loop_thread: LoopThread, tmp_path: Path
) -> None:
    azure = AzureDouble()
    runner, url = loop_thread.run(serve_double(azure.app()))
    try:
        config = tmp_path / "azure.toml"
        config.write_text(
            f"""
[[upstreams]]
name = "azure"
base_url = "{url.removesuffix("/v1")}"
models = ["gpt-4o*"]
api = "azure"
api_version = "2024-10-21"
deployments = {{"gpt-4o" = "prod-4o"}}
api_key_env = "AZURE_KEY"
"""
        )
        sidecar = make_sidecar(SIDECACHE_CONFIG=str(config), AZURE_KEY="azure-secret-key")
        answer = chat(sidecar, "hello azure", model="gpt-4o")
        assert answer.status == 200 and answer.headers["x-upstream"] == "azure"
        assert answer.json()["choices"][0]["message"]["content"] == "from azure"
        ((path, query, headers),) = azure.calls
        assert (path, query) == (
            "/openai/deployments/prod-4o/chat/completions",
            "api-version=2024-10-21",
        )
        assert headers["api-key"] == "azure-secret-key" and "authorization" not in headers
    finally:
        loop_thread.run(runner.cleanup())
