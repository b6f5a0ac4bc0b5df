"""Four clients vs one (issue 21): does it cost more upstream calls to send a workload through
the clients teams actually use than through one?

A seeded 200-request mixed workload (chat questions asked again and again, embeddings of
overlapping item lists, some streamed chats) goes through the official openai SDK for Python,
the openai npm package (tests/node/client.mjs, run by the machine's Node: `make node-deps`),
langchain-openai and the litellm SDK in turn, request i through client i mod 4, each sending
its own defaults (`temperature=0` as each spells it). The same workload then goes through the
openai Python SDK alone. Each run has a fresh fake upstream and a fresh sidecar (memory store),
so the fake upstream's call count is the run's upstream calls. Exactly keyed, the two counts
are equal; a client whose defaults change the key (LangChain's `0.0`) makes the first larger.
Its count is the issue's, not scaled by --quick (about 20 s). Standalone: `python -m bench.clients`
(prints each client's X-Cache counts too).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from .procs import REPO, HarnessError
from .report import Check, Row, format_table
from .stack import Bench, start_fake_upstream, start_sidecar

REQUESTS = 200
CHAT_PROMPTS = 30
STREAM_PROMPTS = 10
ITEMS = 20
SEED = 21
CHAT_MODEL = "gpt-4o-mini"
EMBEDDING_MODEL = "text-embedding-3-small"
API_KEY = "sk-bench-clients"
NODE_CLIENT = REPO / "tests" / "node" / "client.mjs"

Ask = tuple[str, Any]  # ("chat" | "stream", prompt) or ("embed", items)


def workload() -> list[Ask]:
    """`REQUESTS` requests, the same every run: 60 % chat, 20 % embeddings, 20 % streams."""
    rng = random.Random(SEED)
    asks: list[Ask] = []
    for _ in range(REQUESTS):
        draw = rng.random()
        if draw < 0.6:
            asks.append(("chat", f"Chat question {rng.randrange(CHAT_PROMPTS)}: what is it?"))
        elif draw < 0.8:
            first = rng.randrange(ITEMS)
            asks.append(("embed", [f"item {first}", f"item {(first + 1) % ITEMS}"]))
        else:
            asks.append(("stream", f"Stream question {rng.randrange(STREAM_PROMPTS)}: go on."))
    return asks


def _messages(prompt: str) -> list[Any]:
    return [{"role": "user", "content": prompt}]


class OpenAIPython:
    name = "openai (Python)"

    def __init__(self, base_url: str) -> None:
        import openai

        self.client = openai.OpenAI(base_url=base_url, api_key=API_KEY, max_retries=0)

    def ask(self, kind: str, what: Any) -> str:
        if kind == "embed":
            raw = self.client.embeddings.with_raw_response.create(model=EMBEDDING_MODEL, input=what)
            raw.parse()
            return raw.headers.get("x-cache", "")
        if kind == "stream":
            with self.client.chat.completions.with_streaming_response.create(
                model=CHAT_MODEL, messages=_messages(what), temperature=0, stream=True
            ) as streamed:
                list(streamed.parse())
                return streamed.headers.get("x-cache", "")
        answer = self.client.chat.completions.with_raw_response.create(
            model=CHAT_MODEL, messages=_messages(what), temperature=0
        )
        answer.parse()
        return answer.headers.get("x-cache", "")

    def close(self) -> None:
        self.client.close()


class OpenAINode:
    """tests/node/client.mjs serving one request per stdin line."""

    name = "openai (Node)"

    def __init__(self, base_url: str) -> None:
        node = shutil.which("node")
        if node is None or not (NODE_CLIENT.parent / "node_modules" / "openai").is_dir():
            raise HarnessError("the openai npm package is not installed: run `make node-deps`")
        self.proc = subprocess.Popen(
            [node, str(NODE_CLIENT), base_url, API_KEY, "-"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def ask(self, kind: str, what: Any) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        key = "input" if kind == "embed" else "prompt"
        self.proc.stdin.write(json.dumps({"op": kind, key: what}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise HarnessError(f"the Node client exited with status {self.proc.wait(10)}")
        cache: str = json.loads(line)["xCache"] or ""
        return cache

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(10)


class LangChain:
    name = "langchain-openai"

    def __init__(self, base_url: str) -> None:
        from langchain_openai import ChatOpenAI, OpenAIEmbeddings

        common: dict[str, Any] = {"base_url": base_url, "api_key": API_KEY, "max_retries": 0}
        self.chat = ChatOpenAI(
            model=CHAT_MODEL, temperature=0, include_response_headers=True, **common
        )
        # Strings on the wire, as users expect (its default tokenises with tiktoken).
        self.embedder = OpenAIEmbeddings(
            model=EMBEDDING_MODEL, check_embedding_ctx_length=False, **common
        )

    def ask(self, kind: str, what: Any) -> str:
        if kind == "embed":
            self.embedder.embed_documents(what)
            return ""  # LangChain returns bare vectors: no headers to read
        if kind == "stream":
            chunks = [chunk.response_metadata for chunk in self.chat.stream(what)]
            return next((m["headers"].get("x-cache", "") for m in chunks if "headers" in m), "")
        message = self.chat.invoke(what)
        cache: str = message.response_metadata["headers"].get("x-cache", "")
        return cache

    def close(self) -> None:
        pass


class LiteLLM:
    name = "litellm"

    def __init__(self, base_url: str) -> None:
        # Its bundled cost map, not GitHub's (this is offline).
        os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        import litellm

        self.litellm = litellm
        self.common: dict[str, Any] = {"api_base": base_url, "api_key": API_KEY}

    def ask(self, kind: str, what: Any) -> str:
        if kind == "embed":
            answer = self.litellm.embedding(
                model=f"openai/{EMBEDDING_MODEL}", input=what, **self.common
            )
        else:
            answer = self.litellm.completion(
                model=f"openai/{CHAT_MODEL}",
                messages=_messages(what),
                temperature=0,
                stream=kind == "stream",
                **self.common,
            )
            if kind == "stream":
                list(answer)
        cache: str = answer._hidden_params["additional_headers"].get("llm_provider-x-cache", "")
        return cache

    def close(self) -> None:
        pass


Client = OpenAIPython | OpenAINode | LangChain | LiteLLM
FOUR: tuple[Callable[[str], Client], ...] = (OpenAIPython, OpenAINode, LangChain, LiteLLM)


def _run(workdir: Path, makers: Sequence[Callable[[str], Client]]) -> tuple[int, dict[str, Any]]:
    """The workload through `makers`' clients in turn, on a fresh upstream and sidecar: the
    upstream calls and each client's X-Cache counts."""
    workdir.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        upstream = start_fake_upstream(stack, workdir, name="fake-upstream-clients")
        sidecar = start_sidecar(stack, workdir, redis_url=None, upstream=upstream)
        clients = [make(sidecar.sidecar) for make in makers]
        for client in clients:
            stack.callback(client.close)
        seen: dict[str, Counter[str]] = {client.name: Counter() for client in clients}
        for i, (kind, what) in enumerate(workload()):
            client = clients[i % len(clients)]
            seen[client.name][f"{kind} {client.ask(kind, what) or 'unread'}"] += 1
        sidecar.check_sidecar()
        return sidecar.upstream_calls(), {name: dict(counts) for name, counts in seen.items()}


def clients_four_vs_one(bench: Bench) -> list[Row]:
    return _rows(bench.workdir)


def _rows(workdir: Path) -> list[Row]:
    four, seen_four = _run(workdir / "clients-four", FOUR)
    one, seen_one = _run(workdir / "clients-one", (OpenAIPython,))
    kinds = Counter(kind for kind, _ in workload())
    mix = f"{kinds['chat']} chat, {kinds['embed']} embeddings, {kinds['stream']} streams"
    return [
        Row(
            f"clients: {REQUESTS} mixed requests ({mix}), upstream calls",
            f"four clients {four}, one client {one}",
            (Check("four clients - one", four - one, 0, "calls"),),
            data={"four_clients": four, "one_client": one, "x_cache": seen_four, "one": seen_one},
        )
    ]


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="sidecache-clients-") as workdir:
        try:
            rows = _rows(Path(workdir))
        except HarnessError as err:
            print(f"bench: clients failed: {err}", file=sys.stderr)
            return 1
    print(format_table(rows, []))
    print(json.dumps(rows[0].data, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
