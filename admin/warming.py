"""Cache warming jobs: each request for each persona, sent through this sidecar's proxy port.

Going through the proxy port (loopback HTTP) is what makes warming take the normal miss path
with nothing bypassed: keys, single-flight, batching, breakers, budgets, the ledger. Every
request carries `X-Priority: low`, so live traffic is served first when the upstream gate is
full. Jobs live in the replica that accepted them; the newest `KEEP_JOBS` are kept for
`GET .../cache/warm/{job}`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

import aiohttp
import msgspec

from admin.cache_models import JobState, WarmBody, WarmJob, WarmPersona, WarmRequest
from proxy.persona import HEADER_BY_DIMENSION, USER_ID_HEADER
from proxy.upstream.gate import PRIORITY_HEADER
from proxy.vocabulary import CacheStatus

log = logging.getLogger("sidecache.admin.warming")
KEEP_JOBS = 100
_NOT_WARMED = ("stream", "stream_options")  # a stored answer serves JSON and SSE alike
_KEYISH = re.compile(r"\b(sk|sc)-[\w*.-]+")
_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode


def _iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).isoformat().replace("+00:00", "Z")


def persona_headers(persona: WarmPersona) -> dict[str, str]:
    headers = {
        header: value
        for dim, header in HEADER_BY_DIMENSION.items()
        if (value := getattr(persona, dim)) is not None
    }
    if persona.user_id is not None:
        headers[USER_ID_HEADER] = persona.user_id
    return headers


@dataclass(slots=True)
class _Job:
    id: str
    tenant: str
    total: int
    created_at: float = field(default_factory=time.time)
    state: JobState = "running"
    counts: dict[str, int] = field(default_factory=dict)
    finished_at: float | None = None
    last_error: str | None = None
    task: asyncio.Task[None] | None = None

    def snapshot(self) -> WarmJob:
        c = self.counts
        return WarmJob(
            id=self.id, state=self.state, tenant=self.tenant, total=self.total,
            done=sum(c.values()), misses=c.get(CacheStatus.MISS, 0), hits=c.get(CacheStatus.HIT, 0),
            coalesced=c.get(CacheStatus.COALESCED, 0), errors=c.get("error", 0),
            created_at=_iso(self.created_at),
            finished_at=_iso(self.finished_at) if self.finished_at else None,
            last_error=self.last_error,
        )  # fmt: skip


class Warmer:
    def __init__(self, proxy_url: str) -> None:
        self._proxy_url = proxy_url.rstrip("/")
        self._jobs: OrderedDict[str, _Job] = OrderedDict()
        self._session: aiohttp.ClientSession | None = None

    def start(self, body: WarmBody, base_headers: dict[str, str], tenant: str) -> WarmJob:
        """Starts a job; `base_headers` carry the credential and cache directives."""
        personas = body.personas or [WarmPersona()]
        work = [(r, persona_headers(p)) for r in body.requests for p in personas]
        job = _Job(id="warm_" + secrets.token_hex(8), tenant=tenant, total=len(work))
        concurrency = int(body.concurrency)
        job.task = asyncio.create_task(self._run(job, work, base_headers, concurrency))
        self._jobs[job.id] = job
        while len(self._jobs) > KEEP_JOBS:
            self._jobs.popitem(last=False)
        return job.snapshot()

    def get(self, job_id: str) -> WarmJob | None:
        job = self._jobs.get(job_id)
        return job.snapshot() if job is not None else None

    def jobs(self) -> list[WarmJob]:
        return [job.snapshot() for job in reversed(self._jobs.values())]

    async def close(self) -> None:
        running = [j.task for j in self._jobs.values() if j.task is not None and not j.task.done()]
        for task in running:
            task.cancel()
        for task in running:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._session is not None:
            await self._session.close()

    async def _run(
        self,
        job: _Job,
        work: list[tuple[WarmRequest, dict[str, str]]],
        base_headers: dict[str, str],
        concurrency: int,
    ) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))
        queue: Iterator[tuple[WarmRequest, dict[str, str]]] = iter(work)

        async def worker() -> None:
            for request, headers in queue:  # workers share one iterator: each item once
                label = await self._send(job, request, {**base_headers, **headers})
                job.counts[label] = job.counts.get(label, 0) + 1

        try:
            async with asyncio.TaskGroup() as workers:  # one failing stops the others
                for _ in range(min(concurrency, len(work))):
                    workers.create_task(worker())
            job.state = "failed" if job.counts.get("error") == job.total else "done"
        except asyncio.CancelledError:
            job.state = "cancelled"
            raise
        except Exception as exc:  # a job never stays `running` after its workers are gone
            cause = exc.exceptions[0] if isinstance(exc, ExceptionGroup) else exc
            job.state = "failed"
            job.last_error = f"the job stopped: {type(cause).__name__}"  # its text may hold a key
            log.warning("warming job %s failed: %s", job.id, type(cause).__name__)
        finally:
            job.finished_at = time.time()
            log.info("warming job %s %s: %s", job.id, job.state, job.snapshot().done)

    async def _send(self, job: _Job, request: WarmRequest, headers: dict[str, str]) -> str:
        """One request through the proxy; its X-Cache label, or "error"."""
        assert self._session is not None
        body = {k: v for k, v in request.body.items() if k not in _NOT_WARMED}
        headers = {**headers, PRIORITY_HEADER: "low", "Content-Type": "application/json"}
        try:
            async with self._session.post(
                self._proxy_url + request.endpoint.path, data=_encode(body), headers=headers
            ) as response:
                raw = await response.read()
                label = response.headers.get("X-Cache", CacheStatus.MISS)
                status = response.status
        except aiohttp.ClientError as exc:
            job.last_error = f"the proxy port did not answer ({type(exc).__name__})"
            return "error"
        except ValueError as exc:  # a header aiohttp will not send; its text may hold the key
            job.last_error = f"the request could not be sent ({type(exc).__name__})"
            return "error"
        if status == 200:
            return label
        job.last_error = f"{status}: {_error_message(raw)}"
        return "error"


def _error_message(raw: bytes) -> str:
    """The OpenAI-shaped error's message, cut short, with anything key-like masked."""
    try:
        message = str(_decode(raw)["error"]["message"])
    except (msgspec.DecodeError, KeyError, TypeError):
        message = "the proxy answered with an error"
    return _KEYISH.sub(r"\1-***", message)[:300]
