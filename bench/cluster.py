"""Issue 15's rows: `cluster_hits`, the hit path on one Redis node vs a 3-primary Redis Cluster
(tests/fixtures/redis_cluster.py: 3 primaries, 3 replicas, started from redis-server), and
`cluster_failover`, a primary SIGKILLed under load.

`cluster_hits`: two fresh sidecars on the bench's fake upstream, one on the bench's single Redis
and one on the cluster, both with the near cache off (it is off on a cluster: README), run the
same loads in alternating rounds (bench/rounds.py): max hit rate (`wrk -t1 -c32`) and paced
latency (`hey -c1 -q1000`), medians of the rounds. Target: the cluster at >= 0.9x the single
node's req/s. A cluster hit is still one round trip (proxy/cache/cluster_pipe.py), the entry and
the invalidation generation going to their two primaries at once.

`cluster_failover`: one sidecar on the cluster, 4 threads of plain HTTP requests (the bench's
hit, and a new prompt each other time: a miss) for 1 s, then the primary serving the hit's
entry is killed: 5xx answers counted, and the seconds from the kill until the hit is a hit again
(polled every 50 ms; the replica's promotion itself takes ~2 s with the fixture's 1 s node
timeout).
"""

from __future__ import annotations

import threading
import time
from contextlib import ExitStack
from typing import Any

import msgspec

from tests.fixtures.redis_cluster import ClusterServers

from .procs import HarnessError, request
from .report import Check, Row, ms
from .rounds import ROUNDS, Contender, Figures, run_rounds, start_warm_sidecar
from .stack import Bench

MIN_RATIO = 0.9
SINGLE, CLUSTER = "single Redis node", "Redis Cluster, 3 primaries"
NO_NEAR = {"NEAR_CACHE_MB": "0"}
RESUME_BOUND_S = 30.0


def _cluster(stack: ExitStack) -> ClusterServers:
    cluster = ClusterServers()
    stack.callback(cluster.close)
    try:
        cluster.start()
    except (RuntimeError, OSError) as exc:
        raise HarnessError(f"the Redis Cluster did not start: {exc}") from exc
    return cluster


def _cluster_sidecar(stack: ExitStack, bench: Bench, name: str, cluster: ClusterServers) -> Bench:
    """A warm sidecar on the cluster, its near cache off (every hit goes to Redis)."""
    return start_warm_sidecar(
        stack, bench, name, redis_url=cluster.url, settings={**NO_NEAR, "REDIS_CLUSTER": "on"}
    )


def cluster_hits(bench: Bench) -> list[Row]:
    with ExitStack() as stack:
        cluster = _cluster(stack)
        single = start_warm_sidecar(
            stack, bench, "single-node-sidecar", redis_url=bench.redis_url, settings=NO_NEAR
        )
        clustered = _cluster_sidecar(stack, bench, "cluster-sidecar", cluster)
        contenders = [
            Contender.of_sidecar(SINGLE, single),
            Contender.of_sidecar(CLUSTER, clustered),
        ]
        run_rounds(bench, contenders)
    rows = []
    figures = {c.name: Figures.of(c) for c in contenders}
    for n, contender in enumerate(contenders):
        mine = figures[contender.name]
        rate, p50, p99 = mine.requests_per_s, mine.p50_ms, mine.p99_ms
        ratio = rate / figures[SINGLE].requests_per_s
        label = (
            f"cluster hits, median of {ROUNDS}: {contender.name}"
            if n == 0
            else (f"  {contender.name}")
        )
        checks = (Check("x single node", ratio, MIN_RATIO, "", at_least=True),) if n else ()
        value = f"{rate:,.0f} req/s (x{ratio:.2f}); paced p50 {ms(p50)} / p99 {ms(p99)} ms"
        data: dict[str, Any] = {
            "requests_per_s": rate,
            "single_node_ratio": ratio,
            "paced_p50_ms": p50,
            "paced_p99_ms": p99,
            "runs": contender.runs(),
        }
        rows.append(Row(label, value, checks, data=data))
    return rows


class _Load:
    """Threads sending the bench's hit and a miss in turn; counts answers by status."""

    def __init__(self, url: str, bench: Bench) -> None:
        self._url = url
        self._hit = bench.body.read_bytes()
        self._headers = {"Authorization": bench.auth, "Content-Type": "application/json"}
        self.statuses: dict[int, int] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(n,)) for n in range(4)]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def _run(self, n: int) -> None:
        miss = msgspec.json.decode(self._hit)
        i = 0
        while not self._stop.is_set():
            i += 1
            body = self._hit
            if i % 2:
                miss["messages"][-1]["content"] = f"failover miss {n}-{i}"
                body = msgspec.json.encode(miss)
            try:
                status = request("POST", self._url, body=body, headers=self._headers).status
            except OSError:
                status = 0  # no answer at all: counted apart from 5xx
            with self._lock:
                self.statuses[status] = self.statuses.get(status, 0) + 1


def _is_hit(url: str, bench: Bench) -> bool:
    headers = {"Authorization": bench.auth, "Content-Type": "application/json"}
    answer = request("POST", url, body=bench.body.read_bytes(), headers=headers)
    return answer.status == 200 and answer.headers.get("x-cache") == "HIT"


def cluster_failover(bench: Bench) -> list[Row]:
    with ExitStack() as stack:
        cluster = _cluster(stack)
        side = _cluster_sidecar(stack, bench, "failover-sidecar", cluster)
        url = side.sidecar + "/chat/completions"
        if not _is_hit(url, bench):
            raise HarnessError("no cache hit on the cluster after warm-up")
        victim = _entry_primary(cluster, url, bench)
        load = _Load(url, bench)
        load.start()
        try:
            time.sleep(1.0)
            cluster.kill_primary(victim)
            killed = time.monotonic()
            resumed = None
            while time.monotonic() - killed < RESUME_BOUND_S:
                if _is_hit(url, bench):
                    resumed = time.monotonic() - killed
                    break
                time.sleep(0.05)
            time.sleep(0.5)
        finally:
            load.stop()
        side.check_sidecar()
    errors = sum(n for status, n in load.statuses.items() if status >= 500 or status == 0)
    total = sum(load.statuses.values())
    back = f"{resumed:.1f} s" if resumed is not None else f"not within {RESUME_BOUND_S:.0f} s"
    return [
        Row(
            "cluster failover: a primary SIGKILLed under load",
            f"{errors} 5xx of {total:,} requests; hits back {back} after the kill",
            (
                Check("5xx", errors, 0, ""),
                Check("s to hits", resumed if resumed is not None else 1e9, 10.0, "s"),
            ),
            data={"statuses": load.statuses, "resume_s": resumed, "requests": total},
        )
    ]


def _entry_primary(cluster: ClusterServers, url: str, bench: Bench) -> int:
    """Which primary (index in `cluster.primaries()`) holds the bench's cached entry: the one
    whose keyspace has a key. Only the entry, the generation and the shared secret are stored
    before the load, so the primary with an `sc:e:` key is the one."""
    for n, node in enumerate(cluster.primaries()):
        with node.client() as conn:
            if conn.keys("sc:e:*"):
                return n
    raise HarnessError("the cached entry is on no primary of the cluster")
