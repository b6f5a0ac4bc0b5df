"""The provider prompt-cache key (docs/design.md §11).

OpenAI routes requests that share a `prompt_cache_key` (and a prompt prefix) to the same
prompt cache, so repeated long system prompts are billed as cached input. When a chat or
Responses request carries no key of its own, the sidecar sets one in the body it sends
upstream: `sc-` and 32 hex digits of a SHA-256 over the tenant and the leading system prompt,
so it is

- stable for one tenant and one system prompt (on every replica and across restarts),
- different across tenants (one tenant's traffic never shares another's cache routing) and
  across system prompts,
- opaque: neither the tenant nor the prompt can be read from it.

The system prompt is chat's leading `messages` whose role is `system` or `developer`, and the
Responses API's `instructions` plus its leading `input` items with those roles. A request with
no system prompt gets no key: its prefix is the conversation itself, and one key per tenant for
all of them would pile unrelated prefixes onto one cache route (OpenAI advises keeping each
key's traffic small).

A key the client sent is forwarded untouched, and none of this reaches Sidecache's own cache
key: `prompt_cache_key` is a non-semantic field (proxy/canonical.py), and the key is computed
from the body as the client sent it, before the upstream body is made.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import msgspec

PREFIX = "sc-"
_DIGEST_CHARS = 32  # 128 bits: no collision between two tenants' prompts in practice
_SYSTEM_ROLES = frozenset({"system", "developer"})
_DOMAIN = b"sidecache prompt_cache_key v1\0"
# Deterministic: the same prompt gives the same bytes whatever its JSON key order.
_encode = msgspec.msgpack.Encoder(order="deterministic").encode


def prompt_cache_key(tenant: str, body: Mapping[str, Any]) -> str | None:
    """The key for a chat (`messages`) or Responses (`instructions`, `input`) body from
    `tenant`; None when the body has no system prompt."""
    system = system_prompt(body)
    if not system:
        return None
    digest = hashlib.sha256(_DOMAIN)
    digest.update(_encode((tenant, system)))
    return PREFIX + digest.hexdigest()[:_DIGEST_CHARS]


def with_prompt_cache_key(body: Mapping[str, Any], tenant: str) -> dict[str, Any] | None:
    """`body` with a derived `prompt_cache_key`, or None when it gets none (the client sent
    its own, or there is no system prompt): then send the client's bytes as they are."""
    if body.get("prompt_cache_key") is not None:
        return None
    key = prompt_cache_key(tenant, body)
    return None if key is None else {**body, "prompt_cache_key": key}


def system_prompt(body: Mapping[str, Any]) -> list[Any]:
    """The leading system/developer part of a chat or Responses body, as sent."""
    parts: list[Any] = []
    instructions = body.get("instructions")  # Responses
    if isinstance(instructions, str) and instructions:
        parts.append(instructions)
    items = body.get("messages") if "messages" in body else body.get("input")
    if isinstance(items, list):
        for item in items:
            if not isinstance(item, dict) or item.get("role") not in _SYSTEM_ROLES:
                break
            parts.append(item)
    return parts
