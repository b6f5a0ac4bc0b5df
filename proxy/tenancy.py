"""Who a request belongs to, and what credential goes upstream for it (docs/design.md §3).

Pass-through mode: the client's Authorization goes upstream unchanged and the tenant is a keyed
hash of it, so two API keys never share entries. Managed mode: clients present a sidecar key,
each mapped to a tenant name, and the upstream key never leaves the sidecar.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import NamedTuple

from proxy.failures import NotAuthenticated
from proxy.keys import KeyMaker
from proxy.settings import Settings


class Identity(NamedTuple):
    tenant: str
    upstream_authorization: str | None


class TenantResolver:
    def __init__(self, settings: Settings, keys: KeyMaker) -> None:
        self._keys = keys
        api_key = settings.upstream.api_key
        self._upstream_authorization = f"Bearer {api_key}" if api_key else None
        # Looked up by digest: the dict never holds a presented key, and lookup time does not
        # depend on how much of a wrong key matches a right one.
        self._tenant_by_digest = {
            _digest(key): tenant for key, tenant in settings.tenancy.sidecar_keys.items()
        }

    def resolve(self, headers: Mapping[str, str]) -> Identity:
        authorization = headers.get("Authorization")
        if self._upstream_authorization is None:
            return Identity(self._keys.tenant_id(authorization or ""), authorization)
        token = _bearer_token(authorization)
        tenant = self._tenant_by_digest.get(_digest(token)) if token else None
        if tenant is None:
            raise NotAuthenticated(
                "Missing or unknown sidecar key. Send Authorization: Bearer <sidecar key>.",
                code="invalid_api_key",
            )
        return Identity(tenant, self._upstream_authorization)


def _bearer_token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()
