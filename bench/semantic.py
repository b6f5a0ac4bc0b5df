"""Issue 13's rows: the semantic cache's match quality, the cost of one lookup, and what it costs
the exact hit path (nothing, by design: it only runs after an exact miss).

- `semantic_quality`: bench/semantic_set.py's scorer with the real local model on the held-out
  half of tests/data/semantic_pairs.jsonl (the tuning half for reference) at the default
  threshold, a small threshold table, and plain cosine (what peers ship: 0.80, no guards).
- `semantic_lookup_latency`: `SemanticCache.probe` (embedding, partition search, guards) built
  in this process, with 1 and 10,000 entries in the partition; the search alone; the RSS the
  local model adds (measured in a fresh interpreter).
- `semantic_exact_hits` (bench/semantic_hits.py): the exact hit path with it on vs off.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Sequence

import numpy as np
from prometheus_client import CollectorRegistry

from proxy.cache.memory import MemoryStore
from proxy.keys import KeyMaker
from proxy.semantic.cache import Probe, SemanticCache
from proxy.semantic.embedder import LocalEmbedder
from proxy.semantic.index import Partition
from proxy.semantic.local_model import LOCAL_DIMENSION, load_local_model
from proxy.semantic.metrics import SemanticMetrics
from proxy.semantic.vector_log import LocalVectorLog, VectorRecord
from proxy.settings import CacheSettings, SemanticSettings
from proxy.vocabulary import Endpoint

from .procs import REPO, HarnessError
from .report import Check, Row
from .semantic_set import Score, Scorer, halves, load_groups
from .stack import Bench

MAX_FALSE = MAX_WRONG = 0.01  # docs/design.md §10: at most 1 % false hits at the defaults
TABLE = (0.70, 0.75, 0.80, 0.85, 0.90)
PEERS_THRESHOLD = 0.80
LOOKUPS = 500  # timed probes per partition size
SEARCHES = 2000
BIG = 10_000
TUTOR = "You are a patient tutor for adult learners. Explain in short, clear steps."


def _pct(rate: float) -> str:
    return f"{rate * 100:.1f} %"


def _figures(score: Score) -> str:
    rates = score.recall, score.wrong_rate, score.false_rate
    return "recall {}, wrong {}, false {}".format(*map(_pct, rates))


def _data(score: Score) -> dict[str, object]:
    names = "recall", "wrong_rate", "false_rate", "paraphrases", "negatives"
    found: dict[str, object] = {name: getattr(score, name) for name in names}
    return found | {"false_by_class": dict(score.false_by_class)}


def lowest_safe_threshold(scorer: Scorer, limit: float = MAX_FALSE) -> tuple[float, Score] | None:
    """Plain cosine's lowest threshold (in 0.005 steps) whose false-hit rate is within `limit`."""
    for threshold in np.round(np.arange(0.5, 1.0001, 0.005), 3).tolist():
        score = scorer.score(threshold, guarded=False)
        if score.false_rate <= limit:
            return threshold, score
    return None


def semantic_quality(bench: Bench) -> list[Row]:
    encode = load_local_model()
    tuning, held_out = halves(load_groups())
    held, tuned = Scorer(held_out, encode), Scorer(tuning, encode)
    threshold = SemanticSettings().threshold
    score = held.score(threshold)
    table = {t: held.score(t) for t in TABLE}
    peers = held.score(PEERS_THRESHOLD, guarded=False)
    safe = lowest_safe_threshold(held)
    safe_text = (
        "none up to 1.0" if safe is None else f"{safe[0]:.3f}: recall {_pct(safe[1].recall)}"
    )
    return [
        Row(
            f"semantic held out ({len(held_out)} groups, guarded @{threshold:g})",
            _figures(score),
            (
                Check("false", score.false_rate * 100, MAX_FALSE * 100, "%"),
                Check("wrong", score.wrong_rate * 100, MAX_WRONG * 100, "%"),
            ),
            data={"threshold": threshold, **_data(score)},
        ),
        Row(
            f"  tuning half ({len(tuning)} groups, guarded @{threshold:g})",
            _figures(tuned.score(threshold)),
            data={"threshold": threshold, **_data(tuned.score(threshold))},
        ),
        Row(
            "  guarded held out by threshold (recall/false)",
            ", ".join(f"{t:.2f} {_pct(s.recall)}/{_pct(s.false_rate)}" for t, s in table.items()),
            data={f"{t:.2f}": _data(s) for t, s in table.items()},
        ),
        Row(
            f"  plain cosine @{PEERS_THRESHOLD:.2f}, no guards (peers), held out",
            _figures(peers),
            data=_data(peers),
        ),
        Row(
            "  plain cosine, lowest threshold with false <= 1 %, held out",
            safe_text,
            data={} if safe is None else {"threshold": safe[0], **_data(safe[1])},
        ),
    ]


def _ms(samples: Sequence[float]) -> tuple[float, float]:
    """p50 and p99 of durations in seconds, in ms."""
    p50, p99 = np.percentile(np.asarray(samples) * 1000, [50, 99])
    return float(p50), float(p99)


def chat_body_of(question: str, prompt: str = TUTOR) -> dict[str, object]:
    messages = [{"role": "system", "content": prompt}, {"role": "user", "content": question}]
    return {"model": "gpt-4o-mini", "messages": messages, "temperature": 0}


def random_units(n: int, dimension: int = LOCAL_DIMENSION, seed: int = 13) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((n, dimension)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


async def _probe_latency(n: int) -> dict[str, tuple[float, float]]:
    """p50/p99 (ms) of the embedding alone and of `probe` on a partition of 1 entry and one of
    `BIG` (two system prompts), interleaved so a busy machine slows all three alike."""
    settings = SemanticSettings(enabled=True)
    embedder = LocalEmbedder()
    keys = KeyMaker(b"bench", CacheSettings())
    metrics = SemanticMetrics(CollectorRegistry())
    store = MemoryStore(1 << 20)
    cache = SemanticCache(settings, embedder, LocalVectorLog(), store, keys, metrics, 3600)
    await cache.start()
    for _ in range(2400):  # 120 s; the model loads in seconds
        if cache.ready:
            break
        await asyncio.sleep(0.05)
    groups = load_groups()
    questions = [text for group in groups for text in group.paraphrases]

    async def lookup(question: str, prompt: str) -> Probe:
        body = chat_body_of(question, prompt)
        probe = await cache.probe("t_bench", Endpoint.CHAT, ("t",), body, {}, settings.threshold)
        assert probe is not None
        return probe

    small = await lookup(groups[0].anchor, "small")
    cache.remember(small, "small-0", 3600)
    big = await lookup(groups[0].anchor, "big")
    anchors = [group.anchor for group in groups]
    fill = [*load_local_model()(anchors), *random_units(BIG - len(anchors))]
    for i, vector in enumerate(fill):
        text = anchors[i] if i < len(anchors) else f"filler {i}"
        cache.remember(big._replace(vector=vector, question=text), f"big-{i}", 3600)
    samples: dict[str, list[float]] = {"embedding alone": [], "1 entry": [], "big": []}
    for i in range(n):
        question = questions[i % len(questions)]
        for kind in samples if i % 2 == 0 else reversed(samples):
            started = time.perf_counter()
            if kind == "embedding alone":
                await embedder.embed(question, {})
            else:
                await lookup(question, kind if kind == "big" else "small")
            samples[kind].append(time.perf_counter() - started)
    await cache.close()
    return {
        "1 entry": _ms(samples["1 entry"]),
        f"{BIG:,} entries (the set's anchors + random unit vectors)": _ms(samples["big"]),
        "embedding alone (same questions)": _ms(samples["embedding alone"]),
    }


def _search_latency(n: int) -> tuple[float, float]:
    partition = Partition(LOCAL_DIMENSION, BIG)
    vectors = random_units(BIG + 1, seed=14)
    for i, vector in enumerate(vectors[:BIG]):
        partition.add(VectorRecord(f"d{i}", b"", f"q{i}", time.time() + 3600), vector)
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        partition.search(vectors[BIG], time.time())
        samples.append(time.perf_counter() - started)
    return _ms(samples)


_RSS_SCRIPT = """
import json, re
def rss():
    return int(re.search(r"VmRSS:\\s+(\\d+)", open("/proc/self/status").read()).group(1))
from proxy.semantic.local_model import load_local_model
before = rss()
encode = load_local_model()
loaded = rss()
encode(["How does photosynthesis work in plants?"])
print(json.dumps({"before_kb": before, "loaded_kb": loaded, "embedded_kb": rss()}))
"""


def model_rss_kb() -> dict[str, int]:
    """VmRSS of a fresh interpreter before and after loading the model, and after one embedding."""
    done = subprocess.run(
        [sys.executable, "-c", _RSS_SCRIPT], cwd=REPO, capture_output=True, text=True, timeout=180
    )
    if done.returncode != 0:
        raise HarnessError(f"loading the model in a subprocess failed: {done.stderr[-500:]}")
    found: dict[str, int] = json.loads(done.stdout.strip().splitlines()[-1])
    return found


def semantic_lookup_latency(bench: Bench) -> list[Row]:
    probes = asyncio.run(_probe_latency(bench.count(LOOKUPS)))
    search = _search_latency(bench.count(SEARCHES))
    rss = model_rss_kb()
    added, embedded = (rss[k] - rss["before_kb"] for k in ("loaded_kb", "embedded_kb"))
    return [
        *(
            Row(
                f"semantic lookup p50/p99, {size}" if n < 2 else f"  {size}, p50/p99",
                f"{p50:.2f} / {p99:.2f} ms",
                data={"p50_ms": p50, "p99_ms": p99},
            )
            for n, (size, (p50, p99)) in enumerate(probes.items())
        ),
        Row(
            f"  partition search alone, {BIG:,} x {LOCAL_DIMENSION}",
            f"{search[0]:.3f} / {search[1]:.3f} ms",
            data={"p50_ms": search[0], "p99_ms": search[1]},
        ),
        Row(
            "  RSS added by the local model (fresh process)",
            f"{added / 1024:.0f} MB loaded, {embedded / 1024:.0f} MB after one embedding",
            data=rss,
        ),
    ]
