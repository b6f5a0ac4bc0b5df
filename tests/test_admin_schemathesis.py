"""Schemathesis against a live sidecar's admin port, driven by the OpenAPI document it serves
(issue 23, "Done when"): every generated case, valid or not, passes ALL of schemathesis's
checks (`schemathesis.checks.CHECKS`, as `st run --checks all`): no 5xx, status, content type,
headers and body conform to the document, valid data accepted, invalid data rejected, missing
or ignored auth caught, unsupported methods answered 405 with `Allow`. Failures are collected
per operation and reported together, each with schemathesis's own curl reproduction."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import CHECKS, is_check_class, load_all_checks
from schemathesis.core.failures import FailureGroup
from schemathesis.core.parameters import ParameterLocation

from tests.admin_support import TOKEN, TOKENS
from tests.fixtures.sidecar import SidecarFactory

AUTH = {"Authorization": f"Bearer {TOKEN}"}
load_all_checks()
ALL_CHECKS = [check for check in CHECKS.get_all() if not is_check_class(check)]


def checker(
    operation: Any, mode: GenerationMode, base_url: str, seen: list[int], failures: dict[str, str]
) -> Callable[[], None]:
    @settings(
        max_examples=15,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(data=st.data())
    def check(data: st.DataObject) -> None:
        case = data.draw(operation.as_strategy(generation_mode=mode))
        # A case whose headers were made invalid (the token missing or malformed) is sent as
        # made, and must be refused; every other case carries a valid token.
        components = case.meta.components if case.meta is not None else {}
        header = components.get(ParameterLocation.HEADER)
        auth = None if header is not None and header.mode is GenerationMode.NEGATIVE else AUTH
        try:
            response = case.call_and_validate(base_url=base_url, headers=auth, checks=ALL_CHECKS)
            seen.append(response.status_code)
        except FailureGroup as group:
            for failure in group.exceptions:
                key = f"{operation.label} [{mode.value}] {failure.title}"
                failures.setdefault(key, str(group)[:1500])

    return check


def test_every_check_passes_on_every_operation(make_sidecar: SidecarFactory) -> None:
    sidecar = make_sidecar(ADMIN_TOKENS=TOKENS)
    answer = sidecar.request("GET", "/api/admin/openapi.json", admin=True)
    assert answer.status == 200
    schema = schemathesis.openapi.from_dict(answer.json())
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 17
    assert {"ignored_auth", "negative_data_rejection", "unsupported_method"} <= {
        check.__name__ for check in ALL_CHECKS
    }
    seen: list[int] = []
    failures: dict[str, str] = {}
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            checker(operation, mode, sidecar.admin_url, seen, failures)()
    report = "\n\n".join(f"- {key}\n{detail}" for key, detail in sorted(failures.items()))
    assert not failures, f"{len(failures)} failing check(s):\n{report}"
    assert 200 in seen
    assert 400 in seen  # negative cases reached the validation
