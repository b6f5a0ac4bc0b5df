"""The dashboard page in a real headless Chromium (Debian's `chromium`, driven by Playwright).

The page is served by `add_page_routes` next to FAKE admin API routes that answer fixed JSON in
the shapes documented at the top of admin/static/dashboard.js and record what the page posts.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from playwright.sync_api import ConsoleMessage, Page, expect

from admin.page import add_page_routes
from tests.fixtures.sidecar import LoopThread, http_request

TOKEN = "admin-token-for-the-browser"
SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "dashboard.png"

OVERVIEW = {
    "requests": 12345,
    "hits": 8000,
    "hit_rate": 0.648,
    "cost_usd": 12.34,
    "saved_usd": 0.0000072,  # a fraction of a cent: three significant digits
    "prompt_tokens": 1234567,
    "completion_tokens": 89000,
    "cached_tokens": 400000,
    "cache_write_tokens": 2500,
    "reasoning_tokens": 31000,
}
# Two models per hour: the page sums them into one point per bucket (4 points).
COSTS = {
    "series": [
        {
            "bucket": f"2026-11-24T{hour:02d}:00:00Z",
            "group": model,
            "requests": 3,
            "cost_usd": cost,
            "saved_usd": cost / 2,
        }
        for hour, base in ((10, 1.0), (11, 2.5), (12, 1.75), (13, 3.0))
        for model, cost in (("gpt-4o-mini", base), ("gpt-4o", base / 4))
    ]
}
# By endpoint: two days of chat, one of the new Messages endpoint (summed per endpoint).
BY_ENDPOINT = {
    "series": [
        {"bucket": f"2026-11-{day}T00:00:00Z", "group": group, "requests": n,
         "cost_usd": cost, "saved_usd": cost / 4, "prompt_tokens": 10 * n,
         "completion_tokens": 2 * n, "cached_tokens": n, "cache_write_tokens": written,
         "reasoning_tokens": n // 2}
        for day, group, n, cost, written in (
            (23, "chat.completions", 10, 1.0, 0), (24, "chat.completions", 30, 2.0, 0),
            (24, "messages", 8, 0.5, 40),
        )
    ]
}  # fmt: skip
CACHE = {
    "by_endpoint": [
        {"key": "chat.completions", "requests": 100, "hits": 60, "hit_rate": 0.6},
        {"key": "embeddings", "requests": 50, "hits": 45, "hit_rate": 0.9},
    ],
    "by_persona": [
        {"dimension": "experience", "value": "beginner", "hit_rate": 0.55},
        {"dimension": "tone", "value": "formal", "hit_rate": 0.25},
        {"dimension": "density", "value": "concise", "hit_rate": 0.8},
    ],
}
CIRCUITS: dict[str, Any] = {
    "upstream": "open",
    "circuits": [
        {
            "name": "upstream",
            "state": "open",
            "failures": 5,
            "last_failure": {"at": "2026-11-24T13:05:00Z", "error": "timeout"},
            "opened_at": "2026-11-24T13:05:00Z",
            "opened_count": 1,
        },
        {
            "name": "redis",
            "state": "closed",
            "failures": 0,
            "last_failure": None,
            "opened_at": None,
            "opened_count": 0,
        },
    ],
}
UPSTREAMS: dict[str, Any] = {
    "upstreams": [
        {"name": "primary", "host": "api.openai.com", "models": ["gpt-*"], "state": "open",
         "served": 30, "share": 0.25, "retries": 4},
        {"name": "backup", "host": "vllm:8000", "models": ["*"], "state": "closed",
         "served": 90, "share": 0.75, "retries": 0},
    ],
    "fallbacks": [{"from": "primary", "to": "backup", "count": 12}],
    "retries": 4,
    "fallbacks_total": 12,
}  # fmt: skip
RATE_LIMITS: dict[str, Any] = {
    "defaults": {"tenant_rpm": 60, "tenant_tpm": 0, "user_rpm": 0, "user_tpm": 0, "window_s": 60},
    "backend": "redis",
    "overrides": [],
    "tenants": [
        {
            "tenant": "t-acme",
            "requests": {"limit": 60, "used": 12, "remaining": 48, "reset_ms": 41500},
            "tokens": None,
        }
    ],
    "budget_downgrades": 3,
}
INVALIDATED = {"invalidated": {"entries": 7, "generations": 2}}


class FakeApi:
    """The admin API's routes with canned answers; `posts` records (path, body) of each POST."""

    def __init__(self) -> None:
        self.posts: list[tuple[str, Any]] = []
        self.gets: list[str] = []
        self.circuits: dict[str, Any] = copy.deepcopy(CIRCUITS)

    def app(self) -> web.Application:
        app = web.Application()
        add_page_routes(app)
        base = "/api/admin/dashboard"
        app.router.add_get(f"{base}/overview", self._answer(lambda: OVERVIEW))
        app.router.add_get(f"{base}/costs", self._costs)
        app.router.add_get(f"{base}/cache", self._answer(lambda: CACHE))
        app.router.add_get(f"{base}/circuits", self._answer(lambda: self.circuits))
        app.router.add_get(f"{base}/upstreams", self._answer(lambda: UPSTREAMS))
        app.router.add_get(f"{base}/rate-limits", self._answer(lambda: RATE_LIMITS))
        app.router.add_post(f"{base}/circuits/reset", self._reset)
        app.router.add_post(f"{base}/cache/invalidate", self._invalidate)
        return app

    def _answer(
        self, body: Callable[[], dict[str, Any]]
    ) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handler(request: web.Request) -> web.Response:
            if request.headers.get("Authorization") != f"Bearer {TOKEN}":
                return web.json_response(
                    {
                        "error": {
                            "message": "Invalid admin token.",
                            "type": "authentication_error",
                            "param": None,
                            "code": "invalid_token",
                        }
                    },
                    status=401,
                )
            self.gets.append(str(request.rel_url))
            return web.json_response(body())

        return handler

    async def _costs(self, request: web.Request) -> web.Response:
        by_endpoint = request.query.get("group_by") == "request_type"
        return await self._answer(lambda: BY_ENDPOINT if by_endpoint else COSTS)(request)

    async def _reset(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.posts.append((request.path, body))
        for breaker in self.circuits["circuits"]:
            if breaker["name"] == body["breaker"]:
                breaker.update(state="closed", failures=0, opened_at=None)
        states = {b["name"]: b["state"] for b in self.circuits["circuits"]}
        return web.json_response({"reset": [body["breaker"]], "states": states, "audited": True})

    async def _invalidate(self, request: web.Request) -> web.Response:
        self.posts.append((request.path, await request.json()))
        return web.json_response(INVALIDATED)


@pytest.fixture
def api(loop_thread: LoopThread) -> Iterator[tuple[FakeApi, str]]:
    fake = FakeApi()

    async def start() -> web.AppRunner:
        runner = web.AppRunner(fake.app(), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        return runner

    runner = loop_thread.run(start())
    try:
        yield fake, f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        loop_thread.run(runner.cleanup())


@pytest.fixture
def console_errors(page: Page) -> list[str]:
    """Console errors of the page (a CSP violation shows up here)."""
    errors: list[str] = []

    def record(message: ConsoleMessage) -> None:
        if message.type == "error":
            errors.append(message.text)

    page.on("console", record)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    return errors


def sign_in(page: Page, url: str, token: str = TOKEN) -> None:
    page.goto(url + "/")
    page.fill("#token", token)
    page.click("#login-form button[type=submit]")


def test_page_shows_the_figures_and_charts_the_api_returns(
    page: Page, api: tuple[FakeApi, str], console_errors: list[str]
) -> None:
    fake, url = api
    page.set_viewport_size({"width": 1100, "height": 800})
    sign_in(page, url)

    expect(page.locator("#fig-requests")).to_have_text("12,345")
    expect(page.locator("#fig-hit-rate")).to_have_text("64.8%")
    expect(page.locator("#fig-cost")).to_have_text("$12.34")
    expect(page.locator("#fig-saved")).to_have_text("$0.0000072")
    for kind, shown in (
        ("input", "1,234,567"),
        ("cached", "400,000"),
        ("cache-write", "2,500"),
        ("output", "89,000"),
        ("reasoning", "31,000"),
    ):
        expect(page.locator(f"#fig-tokens-{kind}")).to_have_text(shown)
    # One row per endpoint, its days summed: requests, cost, saved, then the token kinds.
    expect(page.locator("#endpoints tbody tr")).to_have_count(2)
    expect(page.locator("#endpoints tr[data-endpoint='chat.completions'] td")).to_have_text(
        ["chat.completions", "40", "$3.00", "$0.75", "400", "40", "0", "80", "20"]
    )
    expect(page.locator("#endpoints tr[data-endpoint=messages] td")).to_have_text(
        ["messages", "8", "$0.50", "$0.125", "80", "8", "40", "16", "4"]
    )

    # One point per hour for each series, the two models of an hour summed.
    for series in ("cost", "saved"):
        group = page.locator(f"#chart-costs svg g[data-series={series}]")
        expect(group.locator("circle.point")).to_have_count(4)
        points = group.locator("polyline").get_attribute("points") or ""
        assert len(points.split()) == 4
    titles = page.locator("#chart-costs g[data-series=cost] circle title").all_text_contents()
    assert titles[1] == "11-24 11:00: cost $3.125"

    endpoints = page.locator("#chart-endpoints svg rect.bar")
    expect(endpoints).to_have_count(2)
    expect(page.locator("#chart-endpoints .bar-row .value")).to_have_text(["60.0%", "90.0%"])
    persona = page.locator("#chart-persona svg .bar-row")
    expect(persona).to_have_count(3)
    assert persona.evaluate_all("rows => rows.map(r => r.dataset.label)") == [
        "experience=beginner",
        "tone=formal",
        "density=concise",
    ]
    widths = [
        float(w or 0)
        for w in page.locator("#chart-persona rect.bar").evaluate_all(
            "bars => bars.map(b => b.getAttribute('width'))"
        )
    ]
    assert widths[2] > widths[0] > widths[1] > 0

    expect(page.locator("#breakers tbody tr")).to_have_count(2)
    expect(page.locator("#breakers tr[data-breaker=upstream] td.state")).to_have_text("open")
    expect(page.locator("#breakers tr[data-breaker=redis] td.state")).to_have_text("closed")

    upstream_cells = page.locator("#breakers tr[data-breaker=upstream] td")
    expect(upstream_cells.nth(3)).to_have_text("2026-11-24T13:05:00Z timeout")

    expect(page.locator("#upstreams tbody tr")).to_have_count(2)
    primary = page.locator("#upstreams tr[data-upstream=primary] td")
    expect(primary.nth(2)).to_have_text("open")
    expect(primary.nth(4)).to_have_text("25.0 %")
    expect(primary.nth(5)).to_have_text("4")
    expect(page.locator("#fallbacks")).to_have_text("Fallbacks: primary → backup: 12")
    # Rate limits: each tenant's use, and the replica's over-budget downgrades.
    expect(page.locator("#fig-downgrades")).to_have_text("3")
    expect(page.locator("#rate-limits tbody tr td")).to_have_text(
        ["t-acme", "12 / 60", "—", "41.5 s"]
    )
    assert sorted(fake.gets) == [
        "/api/admin/dashboard/cache?window=24h",
        "/api/admin/dashboard/circuits",
        "/api/admin/dashboard/costs?window=24h&bucket=day&group_by=request_type",
        "/api/admin/dashboard/costs?window=24h&bucket=hour&group_by=model",
        "/api/admin/dashboard/overview?window=24h",
        "/api/admin/dashboard/rate-limits",
        "/api/admin/dashboard/upstreams",
    ]
    assert page.evaluate("sessionStorage.getItem('sidecache.adminToken')") == TOKEN
    assert page.evaluate("localStorage.length") == 0
    assert console_errors == []

    SCREENSHOT.parent.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOT), full_page=True)
    assert SCREENSHOT.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_reset_button_posts_the_breaker_and_shows_its_new_state(
    page: Page, api: tuple[FakeApi, str], console_errors: list[str]
) -> None:
    fake, url = api
    sign_in(page, url)
    row = page.locator("#breakers tr[data-breaker=upstream]")
    expect(row.locator("td.state")).to_have_text("open")

    row.locator("button.reset").click()

    expect(row.locator("td.state")).to_have_text("closed")
    expect(row.locator("td").nth(4)).to_have_text("")
    assert fake.gets.count("/api/admin/dashboard/circuits") == 2  # reloaded after the reset
    assert fake.posts == [("/api/admin/dashboard/circuits/reset", {"breaker": "upstream"})]
    assert console_errors == []


def test_invalidate_form_posts_the_selectors_and_shows_the_answer(
    page: Page, api: tuple[FakeApi, str], console_errors: list[str]
) -> None:
    fake, url = api
    sign_in(page, url)
    form = page.locator("#invalidate-form")
    form.locator("input[name=user_id]").fill("u42")
    page.click("#add-selector")
    expect(page.locator("#selectors li")).to_have_text(['{"user_id":"u42"}'])
    form.locator("input[name=model]").fill("gpt-4o-mini")
    form.locator("select[name=persona_dim]").select_option("tone")
    form.locator("input[name=persona_value]").fill("formal")

    form.locator("button[type=submit]").click()

    result = page.locator("#invalidate-result")
    expect(result).to_be_visible()
    assert json.loads(result.text_content() or "") == INVALIDATED
    assert fake.posts == [
        (
            "/api/admin/dashboard/cache/invalidate",
            {
                "selectors": [
                    {"user_id": "u42"},
                    {"model": "gpt-4o-mini", "persona": {"tone": "formal"}},
                ]
            },
        )
    ]
    expect(page.locator("#selectors li")).to_have_count(0)

    form.locator("input[name=all]").check()
    form.locator("button[type=submit]").click()
    expect(form.locator("input[name=all]")).not_to_be_checked()
    assert fake.posts[-1][1] == {"selectors": [{"all": True}]}
    assert console_errors == []


def test_an_api_error_is_shown_and_a_bad_token_asks_again(
    page: Page, api: tuple[FakeApi, str]
) -> None:
    _, url = api
    sign_in(page, url, token="wrong")

    expect(page.locator("#error")).to_have_text("Invalid admin token.")
    expect(page.locator("#login")).to_be_visible()
    expect(page.locator("#dashboard")).to_be_hidden()
    assert page.evaluate("sessionStorage.getItem('sidecache.adminToken')") is None


def test_static_files_are_served_with_a_strict_policy(api: tuple[FakeApi, str]) -> None:
    _, url = api
    for path, kind in (
        ("/", "text/html"),
        ("/static/dashboard.js", "text/javascript"),
        ("/static/charts.js", "text/javascript"),
        ("/static/dashboard.css", "text/css"),
    ):
        answer = http_request(url, "GET", path)
        assert answer.status == 200, path
        assert answer.headers["content-type"] == f"{kind}; charset=utf-8"
        assert answer.headers["content-security-policy"].startswith("default-src 'self'")
        assert answer.headers["x-content-type-options"] == "nosniff"
    html = http_request(url, "GET", "/").body.decode()
    # Nothing inline that the CSP would block: scripts, handlers, style attributes.
    assert re.search(r"<script>|<style|\son[a-z]+=|\sstyle=", html) is None
    for path in ("/static/missing.js", "/static/..%2Fpage.py", "/static/.hidden.js"):
        assert http_request(url, "GET", path).status == 404, path
