"""The dashboard page against a real sidecar (issue 5, item 7): with a token it shows the
figures the API returns, and invalidating from its form makes the next request a MISS."""

from __future__ import annotations

import time

from playwright.sync_api import Page, expect

from tests.admin_support import TOKEN, TOKENS
from tests.fixtures.sidecar import SidecarFactory
from tests.invalidation_support import admin_call, chat_status

FORMAL = {"X-Persona-Tone": "formal", "X-User-Id": "u-browser"}


def overview_requests(admin_url: str, wanted: int) -> int:
    """The overview's request count once the ledger has flushed `wanted` rows (about 1 s)."""
    deadline = time.monotonic() + 10
    while True:
        found = admin_call(admin_url, TOKEN, "GET", "overview?window=1h").json()["requests"]
        if found >= wanted or time.monotonic() > deadline:
            return int(found)
        time.sleep(0.1)


def test_invalidating_from_the_form_makes_the_next_request_a_miss(
    page: Page, make_sidecar: SidecarFactory
) -> None:
    sidecar = make_sidecar(ADMIN_TOKENS=TOKENS)
    assert chat_status(sidecar.url, "Summarise the water cycle.", **FORMAL) == "MISS"
    assert chat_status(sidecar.url, "Summarise the water cycle.", **FORMAL) == "HIT"
    assert chat_status(sidecar.url, "Summarise the water cycle.") == "MISS"  # no persona
    requests = overview_requests(sidecar.admin_url, 3)
    assert requests == 3

    page.goto(sidecar.admin_url + "/")
    page.fill("#token", TOKEN)
    page.click("#login-form button[type=submit]")
    expect(page.locator("#fig-requests")).to_have_text(f"{requests:,}")
    expect(page.locator("#fig-hit-rate")).to_have_text("33.3%")
    expect(page.locator("#chart-costs svg")).to_have_count(1)

    form = page.locator("#invalidate-form")
    form.locator("select[name=persona_dim]").select_option("tone")
    form.locator("input[name=persona_value]").fill("formal")
    form.locator("button[type=submit]").click()
    result = page.locator("#invalidate-result")
    expect(result).to_be_visible()
    expect(result).to_contain_text('"generation": 1')

    assert chat_status(sidecar.url, "Summarise the water cycle.", **FORMAL) == "MISS"
    assert chat_status(sidecar.url, "Summarise the water cycle.") == "HIT"  # not covered
