"""Turning a question into a vector (docs/design.md §10), by one of two embedders:

- `local`: all-MiniLM-L6-v2 in this process, on one CPU thread of its own, never on the event
  loop. Concurrent questions are embedded in one batch: while the model works on one batch, the
  next one gathers, so batching adds no wait of its own.
- `upstream:<model>`: the upstream's embeddings, asked through this sidecar's own proxy port
  with the request's credential, so they are cached per item, micro-batched, priced in the
  ledger and held to the tenant's budget like any embedding the app asks for.

Either answers None when it cannot embed right now (model still loading, upstream failing):
the request then goes on as a plain miss.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import aiohttp
import msgspec
import numpy as np
from numpy.typing import NDArray

from proxy.semantic.local_model import LOCAL_DIMENSION, LOCAL_MODEL, Encode, load_local_model

log = logging.getLogger("sidecache.semantic")
_BATCH_MAX = 64
Vector = NDArray[np.float32]


class Embedder(Protocol):
    @property
    def name(self) -> str:
        """Which model made the vectors: part of every partition's name, so vectors of two
        embedders (or dimensions) never meet."""

    @property
    def ready(self) -> bool:
        """Whether `embed` can answer now (the local model loads after start-up)."""

    async def start(self) -> None: ...

    async def embed(self, text: str, credentials: Mapping[str, str]) -> Vector | None: ...

    async def close(self) -> None: ...


class LocalEmbedder:
    name = f"local:{LOCAL_MODEL}:{LOCAL_DIMENSION}"

    def __init__(self, load: Callable[[], Encode] = load_local_model) -> None:
        """`load`: makes the model's encode function (blocking; run on the embedder's thread)."""
        self._load_model = load
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="sidecache-embed")
        self._encode: Encode | None = None
        self._waiting: list[tuple[str, asyncio.Future[Vector]]] = []
        self._worker: asyncio.Task[None] | None = None
        self._loading: asyncio.Task[None] | None = None

    @property
    def ready(self) -> bool:
        return self._encode is not None

    async def start(self) -> None:
        """Loads the model in the background (seconds): the proxy serves meanwhile, the
        semantic cache skipping lookups until it is ready."""
        if self._loading is not None:
            return
        self._loading = asyncio.create_task(self._load())

    async def loaded(self) -> bool:
        """Waits for the background load (bench and tests); whether the model is ready."""
        if self._loading is not None:
            await asyncio.shield(self._loading)
        return self.ready

    async def _load(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            self._encode = await loop.run_in_executor(self._thread, self._load_model)
        except Exception as exc:  # the proxy goes on without the semantic cache
            log.error("the local embedding model failed to load: %s", exc)
            return
        log.info("semantic cache: local embedding model %s loaded", LOCAL_MODEL)

    async def embed(self, text: str, credentials: Mapping[str, str]) -> Vector | None:
        if self._encode is None:
            return None
        future: asyncio.Future[Vector] = asyncio.get_running_loop().create_future()
        self._waiting.append((text, future))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._run())
        return await asyncio.shield(future)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        encode = self._encode
        assert encode is not None
        while self._waiting:
            batch, self._waiting = self._waiting[:_BATCH_MAX], self._waiting[_BATCH_MAX:]
            texts = [text for text, _ in batch]
            try:
                vectors = await loop.run_in_executor(self._thread, encode, texts)
            except Exception as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), vector in zip(batch, vectors, strict=True):
                if not future.done():
                    future.set_result(vector)

    async def close(self) -> None:
        for task in (self._loading, self._worker):
            if task is not None:
                task.cancel()
        self._thread.shutdown(wait=False, cancel_futures=True)


class _EmbeddingItem(msgspec.Struct):
    embedding: list[float]


class _Embeddings(msgspec.Struct):
    data: list[_EmbeddingItem]


_decode_embeddings = msgspec.json.Decoder(_Embeddings).decode


class UpstreamEmbedder:
    def __init__(self, model: str, proxy_url: str, timeout_s: float = 30.0) -> None:
        self._model = model
        self._url = proxy_url.rstrip("/") + "/v1/embeddings"
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    @property
    def name(self) -> str:
        return f"upstream:{self._model}"

    @property
    def ready(self) -> bool:
        return self._session is not None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=self._timeout)

    async def embed(self, text: str, credentials: Mapping[str, str]) -> Vector | None:
        assert self._session is not None
        body = msgspec.json.encode({"model": self._model, "input": text})
        headers = {**credentials, "Content-Type": "application/json"}
        try:
            async with self._session.post(self._url, data=body, headers=headers) as response:
                if response.status != 200:
                    log.info("semantic embedding answered %d: lookup skipped", response.status)
                    return None
                answer = _decode_embeddings(await response.read())
        except (aiohttp.ClientError, TimeoutError, msgspec.DecodeError) as exc:
            log.info("semantic embedding failed (%s): lookup skipped", type(exc).__name__)
            return None
        if len(answer.data) != 1 or not answer.data[0].embedding:
            return None
        vector = np.asarray(answer.data[0].embedding, dtype=np.float32)
        norm = float(np.linalg.norm(vector))
        return vector / norm if norm > 0 else None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
