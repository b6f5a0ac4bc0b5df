"""Over-budget downgrade (docs/design.md §13): which cheaper model, the request as sent with
it, and the `X-Downgraded-From` header its answer carries."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import msgspec

from proxy.handlers.parse import ParsedRequest

if TYPE_CHECKING:
    from proxy.runtime import Runtime

DOWNGRADED_FROM_HEADER = "X-Downgraded-From"  # set by the proxy's answer-headers signal
_encode = msgspec.json.Encoder().encode


def downgrade_for(runtime: Runtime, parsed: ParsedRequest, model: str) -> str | None:
    """The cheaper model a request over budget is sent with (its user's or tenant's budget
    override's table, else `[budget.downgrade_to]`); None: the 429 stands."""
    return runtime.budgets.downgrades.cheaper(parsed.identity.tenant, parsed.user_id, model)


def with_model(parsed: ParsedRequest, model: str) -> ParsedRequest:
    """`parsed` asking for `model`: its body, and the bytes sent upstream, say so."""
    body = {**parsed.body, "model": model}
    return dataclasses.replace(parsed, body=body, raw=_encode(body))
