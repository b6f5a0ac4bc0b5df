"""Issue 14's row `responses_hits`: a Responses API hit (`POST /v1/responses`) beside chat's, on
the bench's own sidecar in one run.

The Responses request asks what the bench's chat request asks (its system message as
`instructions`, its user message as `input`, the same 105-word answer), so the two differ only
in their wire format. Both are warmed, then run the same loads in alternating rounds
(bench/rounds.py): max hit rate (`wrk -t1 -c32`, bench/hit.lua with each one's body file) and
evenly paced latency (`hey -c1 -q1000`), each figure the median of the rounds. No request of a
run may reach the upstream. The targets are the chat hit's own (bench/hits.py).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import msgspec

from .hits import MAX_RATE_PER_S, PACED_P99_MS
from .procs import HarnessError, request
from .report import Check, Row, ms
from .rounds import ROUNDS, Contender, median_percentile, median_rate, run_rounds
from .stack import Bench


def responses_body(chat: bytes) -> bytes:
    """The Responses request of the bench's chat request (bench/stack.py `chat_body`)."""
    body = msgspec.json.decode(chat)
    system, user = (message["content"] for message in body["messages"])
    return msgspec.json.encode(
        {
            "model": body["model"],
            "instructions": system,
            "input": user,
            "max_output_tokens": body["max_tokens"],
            "temperature": body["temperature"],
        }
    )


@dataclass
class _OwnBody(Contender):
    """A contender that sends its own request body instead of the bench's."""

    body: Path | None = None

    def _with_body(self, bench: Bench) -> Bench:
        return bench if self.body is None else replace(bench, body=self.body)

    def warm_up(self, bench: Bench) -> None:
        super().warm_up(self._with_body(bench))

    def max_rate(self, bench: Bench) -> None:
        super().max_rate(self._with_body(bench))

    def paced(self, bench: Bench) -> None:
        super().paced(self._with_body(bench))


def _store(bench: Bench, url: str, body: Path) -> None:
    """Stores the answer to `body` and checks the next identical request is a hit."""
    headers = {"Authorization": bench.auth, "Content-Type": "application/json"}
    caches = []
    for _ in range(2):
        answer = request("POST", url, body=body.read_bytes(), headers=headers)
        if answer.status != 200:
            raise HarnessError(f"a Responses warm-up got {answer.status}: {answer.body[:300]!r}")
        caches.append(answer.headers.get("x-cache", "(no X-Cache header)"))
    if caches[1] != "HIT":
        raise HarnessError(f"no Responses hit after warm-up: X-Cache was {caches}")


def responses_hits(bench: Bench) -> list[Row]:
    body = bench.workdir / "responses.json"
    body.write_bytes(responses_body(bench.body.read_bytes()))
    url = bench.sidecar + "/responses"
    _store(bench, url, body)
    chat = _OwnBody.of_sidecar("chat", bench)
    responses = _OwnBody("responses", url, bench.sidecar_pid, bench.check_sidecar, body=body)
    run_rounds(bench, [chat, responses])
    rows = []
    for contender in (chat, responses):
        rate = median_rate(contender.wrk)
        p50, p99 = median_percentile(contender.hey, 50), median_percentile(contender.hey, 99)
        name = "/v1/chat/completions" if contender is chat else "/v1/responses"
        label = f"hits by API, median of {ROUNDS}: {name}"
        rows.append(
            Row(
                label if contender is chat else f"  {name}",
                f"{rate:,.0f} req/s (wrk -t1 -c32); paced p50 {ms(p50)} / p99 {ms(p99)} ms "
                f"(hey -c1 -q1000); {contender.cpu_us_per_hit():.0f} us CPU per hit",
                (
                    Check("", rate, MAX_RATE_PER_S, "req/s", at_least=True),
                    Check("p99", p99, PACED_P99_MS, "ms"),
                ),
                data=contender.runs(),
            )
        )
    return rows
