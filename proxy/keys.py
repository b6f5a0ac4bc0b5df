"""Cache keys and tenant ids (docs/design.md §3).

A key is a SHA-256 over the tenant, the endpoint, the scope part and the canonical request body
(proxy/canonical.py: numbers by value, nulls and means-absent values dropped, every field counts
except the non-semantic ones; re-encoded with sorted keys, so JSON key order and whitespace never
matter). Keys are fixed length, hold no prompt text and
carry a Redis Cluster hash tag so an entry and its single-flight lock share one slot.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from typing import Any, NamedTuple

import msgspec

from proxy.canonical import NON_SEMANTIC_FIELDS, canonical_body
from proxy.directives import Directives, Scope
from proxy.failures import InvalidRequest
from proxy.persona import Persona
from proxy.settings import CacheSettings
from proxy.vocabulary import ENTRY_KEY, LOCK_KEY

__all__ = ["NON_SEMANTIC_FIELDS", "CacheKey", "KeyMaker", "ScopePart"]
ScopePart = tuple[Any, ...]


class CacheKey(NamedTuple):
    digest: str  # 64 hex characters

    @property
    def entry(self) -> str:
        return ENTRY_KEY % self.digest

    @property
    def lock(self) -> str:
        return LOCK_KEY % self.digest

    @property
    def short_id(self) -> str:
        """The non-secret id shown to clients as X-Cache-Key."""
        return self.digest[:16]


class KeyMaker:
    """Builds tenant ids and cache keys; one per process, built at start-up."""

    def __init__(self, secret: bytes, cache: CacheSettings) -> None:
        self._secret = secret
        self._encode = msgspec.msgpack.Encoder(order="deterministic").encode
        self._default_dims = tuple(cache.persona_dims)
        self._dims_by = {name: tuple(dims) for name, dims in cache.persona_dims_by.items()}

    def tenant_id(self, credential: str) -> str:
        """A keyed hash of the credential: stable, short, and useless for recovering it."""
        mac = hmac.digest(self._secret, credential.encode(), "sha256")
        return "t_" + mac.hex()[:20]

    def persona_dims(self, endpoint: str, model: str | None) -> tuple[str, ...]:
        """The configured dimensions for a request that names none: model, endpoint, default."""
        if model is not None and model in self._dims_by:
            return self._dims_by[model]
        return self._dims_by.get(endpoint, self._default_dims)

    def scope_part(
        self,
        directives: Directives,
        persona: Persona,
        user_id: str | None,
        default_dims: tuple[str, ...],
    ) -> ScopePart:
        part: ScopePart
        if directives.scope is Scope.USER:
            part = ("u", user_id)
        elif directives.scope is Scope.TENANT:
            part = ("t",)
        else:
            dims = default_dims if directives.dims is None else directives.dims
            part = ("p", dims, persona.project(dims))
        # The upstream account headers, only when sent: a request without them keeps its key.
        return (*part, directives.account) if directives.account else part

    def request_key(
        self, tenant: str, endpoint: str, body: Mapping[str, Any], scope: ScopePart
    ) -> CacheKey:
        return self._key((tenant, endpoint, scope, canonical_body(endpoint, body)))

    def partition_key(
        self, tenant: str, endpoint: str, rest: Mapping[str, Any], scope: ScopePart, index: str
    ) -> CacheKey:
        """A semantic partition (docs/design.md §10): everything of a request but its question
        (`rest`, proxy/semantic/question.py), and the index (embedder and dimension) it is in."""
        semantic = canonical_body(endpoint, rest)
        return self._key((tenant, endpoint, scope, semantic, "semantic", index))

    def item_key(
        self, tenant: str, endpoint: str, params: Mapping[str, Any], item: Any, scope: ScopePart
    ) -> CacheKey:
        """The key of one input of a multi-input request (embeddings are cached per item):
        `params` is the rest of the body, canonical as a whole body is."""
        return self._key((tenant, endpoint, scope, canonical_body(endpoint, params), item))

    def _key(self, parts: tuple[Any, ...]) -> CacheKey:
        try:
            packed = self._encode(parts)
        except OverflowError:  # JSON allows integers that msgpack cannot hold
            raise InvalidRequest("The request holds an integer outside the 64-bit range.") from None
        return CacheKey(hashlib.sha256(packed).hexdigest())
