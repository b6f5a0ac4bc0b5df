"""The clients of the matrix (tests/test_clients.py), each asked the way its users ask, each
answer reduced to (X-Cache, text): the official openai SDK (Python sync and async, and the npm
package run with the machine's Node), langchain-openai and the litellm SDK.

litellm fetches its model cost map from GitHub at import unless told to use the copy it ships
(this machine reaches package registries only), hence the environment variable set before the
import. LangChain's embeddings tokenise inputs with tiktoken (a download) and send token arrays
unless `check_embedding_ctx_length=False`: with it they send the strings, as users expect.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from tests.fixtures.sidecar import API_KEY

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
import litellm
import openai
from langchain_openai import ChatOpenAI, OpenAIEmbeddings

CHAT_MODEL = "gpt-4o-mini"
EMBEDDING_MODEL = "text-embedding-3-small"
NODE_DIR = Path(__file__).parent / "node"


def messages(prompt: str) -> list[Any]:
    return [{"role": "user", "content": prompt}]


# --- openai (Python): X-Cache through with_raw_response / with_streaming_response ----------


def openai_chat(client: openai.OpenAI, prompt: str) -> tuple[str, str]:
    raw = client.chat.completions.with_raw_response.create(
        model=CHAT_MODEL, messages=messages(prompt), temperature=0
    )
    return raw.headers.get("x-cache", ""), raw.parse().choices[0].message.content or ""


def openai_stream(client: openai.OpenAI, prompt: str) -> tuple[str, str]:
    with client.chat.completions.with_streaming_response.create(
        model=CHAT_MODEL, messages=messages(prompt), temperature=0, stream=True
    ) as raw:
        text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
        return raw.headers.get("x-cache", ""), text


def openai_embed(client: openai.OpenAI, items: list[str]) -> tuple[str, str]:
    raw = client.embeddings.with_raw_response.create(model=EMBEDDING_MODEL, input=items)
    return raw.headers.get("x-cache", ""), json.dumps([d.embedding for d in raw.parse().data])


async def async_openai_chat(client: openai.AsyncOpenAI, prompt: str) -> tuple[str, str]:
    raw = await client.chat.completions.with_raw_response.create(
        model=CHAT_MODEL, messages=messages(prompt), temperature=0
    )
    return raw.headers.get("x-cache", ""), raw.parse().choices[0].message.content or ""


async def async_openai_stream(client: openai.AsyncOpenAI, prompt: str) -> tuple[str, str]:
    async with client.chat.completions.with_streaming_response.create(
        model=CHAT_MODEL, messages=messages(prompt), temperature=0, stream=True
    ) as raw:
        parts = [c.choices[0].delta.content or "" async for c in await raw.parse() if c.choices]
        return raw.headers.get("x-cache", ""), "".join(parts)


async def async_openai_embed(client: openai.AsyncOpenAI, items: list[str]) -> tuple[str, str]:
    raw = await client.embeddings.with_raw_response.create(model=EMBEDDING_MODEL, input=items)
    return raw.headers.get("x-cache", ""), json.dumps([d.embedding for d in raw.parse().data])


# --- langchain-openai: X-Cache in response_metadata["headers"] (include_response_headers) --


def langchain_chat(base_url: str, **options: Any) -> ChatOpenAI:
    return ChatOpenAI(
        model=CHAT_MODEL,
        base_url=base_url,
        api_key=API_KEY,  # type: ignore[arg-type]
        temperature=0,
        max_retries=0,
        include_response_headers=True,
        **options,
    )


def langchain_invoke(base_url: str, prompt: str) -> tuple[str, str]:
    message = langchain_chat(base_url).invoke(prompt)
    return message.response_metadata["headers"].get("x-cache", ""), str(message.content)


def langchain_stream(base_url: str, prompt: str) -> tuple[str, str]:
    chunks = list(langchain_chat(base_url).stream(prompt))
    metadata = [chunk.response_metadata for chunk in chunks]
    headers = next(m["headers"] for m in metadata if "headers" in m)
    return headers.get("x-cache", ""), "".join(str(c.content) for c in chunks)


def langchain_embed(base_url: str, items: list[str]) -> list[list[float]]:
    """LangChain's embeddings return bare vectors: X-Cache is not reachable from them."""
    embedder = OpenAIEmbeddings(
        model=EMBEDDING_MODEL,
        base_url=base_url,
        api_key=API_KEY,  # type: ignore[arg-type]
        max_retries=0,
        check_embedding_ctx_length=False,
    )
    return embedder.embed_documents(items)


# --- litellm as a client: X-Cache in _hidden_params["additional_headers"] ------------------


def _litellm_x_cache(response: Any) -> str:
    cache: str = response._hidden_params["additional_headers"].get("llm_provider-x-cache", "")
    return cache


def litellm_chat(base_url: str, prompt: str) -> tuple[str, str]:
    response = litellm.completion(
        model=f"openai/{CHAT_MODEL}",
        api_base=base_url,
        api_key=API_KEY,
        messages=messages(prompt),
        temperature=0,
    )
    return _litellm_x_cache(response), response.choices[0].message.content or ""


def litellm_stream(base_url: str, prompt: str) -> tuple[str, str]:
    stream = litellm.completion(
        model=f"openai/{CHAT_MODEL}",
        api_base=base_url,
        api_key=API_KEY,
        messages=messages(prompt),
        temperature=0,
        stream=True,
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    return _litellm_x_cache(stream), text


def litellm_embed(base_url: str, items: list[str]) -> tuple[str, str]:
    response = litellm.embedding(
        model=f"openai/{EMBEDDING_MODEL}", api_base=base_url, api_key=API_KEY, input=items
    )
    return _litellm_x_cache(response), json.dumps([d["embedding"] for d in response.data])


# --- openai (npm): tests/node/client.mjs, installed by `make node-deps` --------------------


def node_client(base_url: str, *ops: str, prompt: str = "Say hello from Node.") -> list[Any]:
    """Runs tests/node/client.mjs with `ops`; one decoded JSON line per op."""
    node = shutil.which("node")
    assert node is not None, "Node is not on PATH"
    assert (NODE_DIR / "node_modules" / "openai").is_dir(), "run `make node-deps` first"
    done = subprocess.run(
        [node, str(NODE_DIR / "client.mjs"), base_url, API_KEY, *ops],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PROMPT": prompt},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


# --- what each client puts on the wire -------------------------------------------------


@dataclass
class WireRecorder:
    """An upstream that keeps every chat body as sent and answers with one fixed completion."""

    url: str = ""
    bodies: list[dict[str, Any]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        self.bodies.append(json.loads(await request.read()))
        return web.json_response(
            {
                "id": "chatcmpl-wire",
                "object": "chat.completion",
                "created": 1,
                "model": CHAT_MODEL,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "recorded"},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
            }
        )
