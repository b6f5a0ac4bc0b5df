"""Helpers for the invalidation and warming tests: one chat request's X-Cache, and the admin
calls, against any sidecar (in-process or a replica process) by its URLs."""

from __future__ import annotations

from typing import Any

import openai

from tests.fixtures.sidecar import API_KEY, HttpAnswer, http_request

BASE = "/api/admin/dashboard"


def chat_status(
    url: str, prompt: str, *, model: str = "gpt-4o-mini", api_key: str = API_KEY, **headers: str
) -> str:
    """X-Cache of one chat request through the official SDK."""
    client = openai.OpenAI(base_url=url, api_key=api_key, max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": prompt}], extra_headers=headers
    )
    raw.parse()
    return raw.headers["x-cache"]


def admin_call(admin_url: str, token: str, method: str, path: str, body: Any = None) -> HttpAnswer:
    return http_request(
        admin_url, method, f"{BASE}/{path}", body, {"Authorization": f"Bearer {token}"}
    )


def invalidate(admin_url: str, token: str, *selectors: dict[str, Any]) -> dict[str, Any]:
    answer = admin_call(admin_url, token, "POST", "cache/invalidate", {"selectors": selectors})
    assert answer.status == 200, answer.body
    found: dict[str, Any] = answer.json()
    return found
