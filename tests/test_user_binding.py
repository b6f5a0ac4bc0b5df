"""Who may name a user (issue 19, item 11). `X-User-Id` is trusted from anyone holding the
tenant's key, so with such a key a client could read or flush any user's private entries by
naming them. In managed mode an operator can stop that: a key written `key=tenant:user` is bound
to that user (its requests are that user's; naming another is a 403), and
TRUSTED_USER_HEADER_KEYS lists the tenants whose unbound keys may name users at all."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.settings import SettingsError
from proxy.settings_load import load_settings
from tests.fixtures.sidecar import HttpAnswer, Sidecar, SidecarFactory, Stub
from tests.test_tenancy import UPSTREAM_KEY, send

ALICE_KEY, BOB_KEY, APP_KEY, TRUSTED_KEY = "sk-sc-alice", "sk-sc-bob", "sk-sc-app", "sk-sc-trust"
MANAGED = {
    "UPSTREAM_API_KEY": UPSTREAM_KEY,
    "SIDECAR_KEYS": f"{ALICE_KEY}=school:alice,{BOB_KEY}=school:bob,{APP_KEY}=school,"
    f"{TRUSTED_KEY}=backend",
    "TRUSTED_USER_HEADER_KEYS": "backend",
}
BEGINNER = {"X-Persona-Experience": "beginner"}
EXPERT = {"X-Persona-Experience": "expert"}
PRIVATE = {"X-Cache-Scope": "user"}


def chat(
    sidecar: Sidecar, key: str, prompt: str, body_user: str | None = None, **headers: str
) -> HttpAnswer:
    body: dict[str, Any] = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": prompt}],
    }
    if body_user is not None:
        body["user"] = body_user
    return send(sidecar, "POST", "/v1/chat/completions", body, key, headers)


def status(sidecar: Sidecar, key: str, prompt: str, **headers: str) -> str:
    answer = chat(sidecar, key, prompt, **headers)
    assert answer.status == 200, answer.body
    return str(answer.headers["x-cache"])


@pytest.fixture(params=["memory", "redis"])
def managed(request: pytest.FixtureRequest, make_sidecar: SidecarFactory) -> Sidecar:
    if request.param == "redis":
        return make_sidecar(**MANAGED, REDIS_URL=request.getfixturevalue("redis_url"))
    return make_sidecar(**MANAGED)


def test_a_bound_key_is_its_user_without_naming_one(managed: Sidecar, stub: Stub) -> None:
    assert status(managed, ALICE_KEY, "Mine.", **PRIVATE, **BEGINNER) == "MISS"
    assert status(managed, ALICE_KEY, "Mine.", **PRIVATE, **BEGINNER) == "HIT"
    # Naming its own user is the same user; the app that may name users sees the same entry.
    assert status(managed, ALICE_KEY, "Mine.", **PRIVATE, **BEGINNER, **{"X-User-Id": "alice"}) == (
        "HIT"
    )
    assert status(managed, BOB_KEY, "Mine.", **PRIVATE, **BEGINNER) == "MISS"
    assert stub.calls == 2


def test_a_spoofed_user_from_a_bound_key_cannot_flush_another_users_entries(
    managed: Sidecar, stub: Stub
) -> None:
    assert status(managed, ALICE_KEY, "Mine.", **PRIVATE, **BEGINNER) == "MISS"
    spoof = chat(managed, BOB_KEY, "Mine.", **PRIVATE, **EXPERT, **{"X-User-Id": "alice"})
    assert spoof.status == 403
    error = spoof.json()["error"]
    assert (error["type"], error["param"]) == ("permission_error", "X-User-Id")
    assert "alice" not in spoof.body.decode()
    assert status(managed, ALICE_KEY, "Mine.", **PRIVATE, **BEGINNER) == "HIT"
    assert managed.runtime.invalidations.rules == 0
    assert stub.calls == 1


def test_an_untrusted_unbound_key_may_not_name_a_user(managed: Sidecar, stub: Stub) -> None:
    assert status(managed, ALICE_KEY, "Mine.", **PRIVATE, **BEGINNER) == "MISS"
    spoof = chat(managed, APP_KEY, "Mine.", **PRIVATE, **EXPERT, **{"X-User-Id": "alice"})
    assert spoof.status == 403
    assert "TRUSTED_USER_HEADER_KEYS" in spoof.json()["error"]["message"]
    # The body's user is the upstream's field: passed on, but never taken as the user id.
    answer = chat(managed, APP_KEY, "Mine.", body_user="alice", **EXPERT)
    assert answer.status == 200
    assert stub.fake.requests[-1].body["user"] == "alice"
    scoped = chat(managed, APP_KEY, "Mine.", body_user="alice", **PRIVATE, **EXPERT)
    assert scoped.status == 400  # user scope needs a user, and this key cannot name one
    assert status(managed, ALICE_KEY, "Mine.", **PRIVATE, **BEGINNER) == "HIT"
    assert managed.runtime.invalidations.rules == 0


def test_a_trusted_key_names_any_user_as_before(managed: Sidecar) -> None:
    """The documented trust: a trusted key's X-User-Id is believed, persona changes included."""
    alice = {"X-User-Id": "alice", **PRIVATE}
    assert status(managed, TRUSTED_KEY, "Theirs.", **alice, **BEGINNER) == "MISS"
    assert status(managed, TRUSTED_KEY, "Theirs.", **alice, **BEGINNER) == "HIT"
    assert status(managed, TRUSTED_KEY, "Theirs.", **alice, **EXPERT) == "MISS"
    assert managed.runtime.invalidations.rules == 1
    answer = chat(managed, TRUSTED_KEY, "Body user.", body_user="carol", **PRIVATE)
    assert answer.status == 200


def test_by_default_every_unbound_key_may_name_users(make_sidecar: SidecarFactory) -> None:
    sidecar = make_sidecar(UPSTREAM_API_KEY=UPSTREAM_KEY, SIDECAR_KEYS=f"{APP_KEY}=school")
    assert status(sidecar, APP_KEY, "Open.", **PRIVATE, **{"X-User-Id": "alice"}) == "MISS"
    assert status(sidecar, APP_KEY, "Open.", **PRIVATE, **{"X-User-Id": "alice"}) == "HIT"


def managed_env(**extra: str) -> dict[str, str]:
    return {"UPSTREAM_API_KEY": "sk-up", "SIDECAR_KEYS": "k1=acme,k2=acme:u-1", **extra}


def test_the_settings_read_bindings_and_trusted_tenants() -> None:
    settings = load_settings(managed_env(TRUSTED_USER_HEADER_KEYS="acme"))
    assert settings.tenancy.key_bindings() == {"k1": ("acme", None), "k2": ("acme", "u-1")}
    assert settings.tenancy.trusted_user_header_keys == ["acme"]
    assert load_settings(managed_env()).tenancy.trusted_user_header_keys == ["*"]
    none = load_settings(managed_env(TRUSTED_USER_HEADER_KEYS="none"))
    assert none.tenancy.trusted_user_header_keys == []


@pytest.mark.parametrize(
    ("environ", "shown"),
    [
        (managed_env(SIDECAR_KEYS="k1=acme:"), "entry #1 must be key=tenant or key=tenant:user"),
        (managed_env(SIDECAR_KEYS="k1=:u1"), "entry #1 must be key=tenant or key=tenant:user"),
        (managed_env(SIDECAR_KEYS="k1=acme,k2=acme:a\x7fb"), "entry #2"),
        (managed_env(TRUSTED_USER_HEADER_KEYS="acme,acmee"), "'acmee' is not a tenant"),
        ({"TRUSTED_USER_HEADER_KEYS": "acme"}, "needs managed mode"),
    ],
)
def test_a_bad_binding_stops_start_up_with_one_line(environ: dict[str, str], shown: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(environ)
    message = str(caught.value)
    assert shown in message
    assert "\n" not in message
    assert "k1" not in message and "k2" not in message  # keys are secrets
