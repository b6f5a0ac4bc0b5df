"""Who may call the admin API (401/403, OpenAI-shaped), what needs no token, and bad
parameters (400 naming them)."""

from __future__ import annotations

from typing import Any

import pytest

from admin.openapi import ROUTES as OPERATIONS
from admin.openapi import full_path
from tests.admin_support import BASE, TOKEN, TOKENS, call
from tests.fixtures.sidecar import Sidecar, SidecarFactory

# Every operation of the OpenAPI document, with a body and path it accepts and its success.
ACCEPTED: dict[tuple[str, str], tuple[Any, int]] = {
    ("post", "/cache/invalidate"): ({"selectors": [{"all": True}]}, 200),
    ("post", "/cache/warm"): ({"api_key": "sk-k", "requests": [
        {"endpoint": "moderations", "body": {"input": "hi"}}]}, 202),
    ("get", "/cache/warm/{job}"): (None, 404),  # no such job: but past the token check
    ("put", "/rate-limits"): ({"scope": "tenant", "id": "t-acme", "rpm": 60}, 200),
    ("delete", "/rate-limits"): ({"scope": "tenant", "id": "t-acme"}, 200),
    # The semantic cache is off by default: past the token check, a 409.
    ("post", "/cache/feedback"): ({"key": "0123456789abcdef", "wrong": True}, 409),
}  # fmt: skip
ROUTES = [
    pytest.param(method.upper(), full_path(path).replace("{job}", "warm_0"),
                 *ACCEPTED.get((method, path), (None, 200)), id=f"{method} {path}")
    for path, method, *_ in OPERATIONS
]  # fmt: skip


def error_of(answer: Any, status: int) -> dict[str, Any]:
    assert answer.status == status, answer.body
    assert answer.headers["content-type"].startswith("application/json")
    error: dict[str, Any] = answer.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


@pytest.mark.parametrize(("method", "path", "body", "ok"), ROUTES)
def test_no_tokens_configured_closes_the_api(
    make_sidecar: SidecarFactory, method: str, path: str, body: Any, ok: int
) -> None:
    sidecar = make_sidecar()
    error = error_of(call(sidecar, path, method=method, body=body, token="anything"), 401)
    assert "ADMIN_TOKENS" in error["message"]
    assert error["type"] == "authentication_error"


@pytest.mark.parametrize(("method", "path", "body", "ok"), ROUTES)
def test_missing_and_wrong_tokens_are_401(
    make_sidecar: SidecarFactory, method: str, path: str, body: Any, ok: int
) -> None:
    sidecar = make_sidecar(ADMIN_TOKENS=TOKENS)
    missing = error_of(call(sidecar, path, method=method, body=body, token=None), 401)
    assert missing["code"] == "missing_admin_token"
    wrong = error_of(call(sidecar, path, method=method, body=body, token=TOKEN + "x"), 401)
    assert wrong["code"] == "invalid_admin_token"
    assert TOKEN not in wrong["message"]
    assert call(sidecar, path, method=method, body=body).status == ok
    other = call(sidecar, path, method=method, body=body, token="admin-token-alpha-123")
    assert other.status == ok


def test_admin_user_ids(make_sidecar: SidecarFactory) -> None:
    sidecar = make_sidecar(ADMIN_TOKENS=TOKENS, ADMIN_USER_IDS="alice,bob")
    path = f"{BASE}/overview"
    missing = error_of(call(sidecar, path), 403)
    assert (missing["type"], missing["param"]) == ("permission_error", "X-Admin-User")
    assert error_of(call(sidecar, path, user="mallory"), 403)["code"] == "admin_user_not_allowed"
    assert call(sidecar, path, user="bob").status == 200
    # The token is checked first: a listed user with a wrong token is still a 401.
    error_of(call(sidecar, path, user="bob", token="nope"), 401)


def test_open_routes_need_no_token(make_sidecar: SidecarFactory) -> None:
    sidecar = make_sidecar(ADMIN_TOKENS=TOKENS, ADMIN_USER_IDS="alice")
    for path in ("/healthz", "/readyz", "/metrics", "/api/admin/openapi.json"):
        assert call(sidecar, path, token=None).status == 200, path
    doc = call(sidecar, "/api/admin/openapi.json", token=None).json()
    assert doc["openapi"].startswith("3.")
    assert f"{BASE}/circuits/reset" in doc["paths"]


def test_unknown_admin_routes(make_sidecar: SidecarFactory) -> None:
    sidecar = make_sidecar(ADMIN_TOKENS=TOKENS)
    assert error_of(call(sidecar, f"{BASE}/nope"), 404)["code"] == "unknown_url"
    error_of(call(sidecar, f"{BASE}/nope", token=None), 401)  # no route map for strangers
    assert call(sidecar, f"{BASE}/overview", method="DELETE").status == 405


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ("overview?window=2h", "window"),
        ("costs?bucket=week", "bucket"),
        ("costs?group_by=persona", "group_by"),
        ("costs?window=", "window"),
        ("performance?window=1y", "window"),
        ("users?limit=0", "limit"),
        ("users?limit=101", "limit"),
        ("users?limit=ten", "limit"),
        ("cache?window=7", "window"),
    ],
)
def test_bad_query_parameters_are_400_naming_them(
    make_sidecar: SidecarFactory, query: str, param: str
) -> None:
    sidecar = make_sidecar(ADMIN_TOKENS=TOKENS)
    error = error_of(call(sidecar, f"{BASE}/{query}"), 400)
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"breaker": "nope"}, "breaker"),
        ({"breaker": 5}, "breaker"),
        ({"breakers": "chat"}, "breakers"),
        (b"{", "body"),
        (b"[]", None),
    ],
)
def test_bad_reset_bodies_are_400(admin_sidecar: Sidecar, body: Any, param: str) -> None:
    answer = call(admin_sidecar, f"{BASE}/circuits/reset", method="POST", body=body)
    assert error_of(answer, 400)["param"] == param


def test_breaker_names_match_the_board(admin_sidecar: Sidecar) -> None:
    document = admin_sidecar.request("GET", "/api/admin/openapi.json", admin=True).json()
    breaker = document["components"]["schemas"]["ResetBody"]["properties"]["breaker"]
    assert set(breaker["anyOf"][0]["enum"]) == set(admin_sidecar.runtime.breakers.breakers)
