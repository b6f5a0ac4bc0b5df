"""The one HTTP client session to the upstream, with keep-alive and explicit timeouts.

Connection failures raise UpstreamUnreachable and timeouts UpstreamTimeout (502 and 504 to the
client, docs/design.md §7). The session has no total timeout
(`read_timeout_s` bounds the gap between two bytes): pass-through streams may be long, and the
understood calls' total deadline is GuardedUpstream's (UPSTREAM_TOTAL_TIMEOUT).
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Mapping

import aiohttp

from proxy.failures import UpstreamTimeout, UpstreamUnreachable
from proxy.settings_upstream import UpstreamSettings, base_root
from proxy.upstream.routes import Route

# The paths that go to ANTHROPIC_BASE_URL when it is set apart (docs/design.md §11).
ANTHROPIC_PATHS = "/v1/messages"


class UpstreamClient:
    def __init__(self, settings: UpstreamSettings, session: aiohttp.ClientSession) -> None:
        self._base = base_root(settings.base_url)
        anthropic = settings.anthropic_upstream
        self._anthropic = base_root(anthropic) if anthropic else None
        self._session = session
        self._azure: Route | None = None  # Azure OpenAI's URL shape (for_route)

    def for_route(self, route: Route) -> UpstreamClient:
        """A client of `route`'s base URL on this one's session (one connection pool)."""
        client = UpstreamClient.__new__(UpstreamClient)
        client._base = (
            route.base_url.rstrip("/") if route.api == "azure" else base_root(route.base_url)
        )
        client._anthropic = None
        client._session = self._session
        client._azure = route if route.api == "azure" else None
        return client

    @classmethod
    def open(cls, settings: UpstreamSettings) -> UpstreamClient:
        connector = aiohttp.TCPConnector(
            limit=settings.max_connections, keepalive_timeout=30, ttl_dns_cache=300
        )
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=settings.connect_timeout_s, sock_read=settings.read_timeout_s
        )
        session = aiohttp.ClientSession(
            connector=connector,
            timeout=timeout,
            auto_decompress=False,
            # Accept-Encoding is chosen per request (upstream_request_headers): a pass-through
            # client that asked for no compression must not be sent a compressed body.
            skip_auto_headers=("User-Agent", "Content-Type", "Accept-Encoding"),
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        return cls(settings, session)

    def url(self, path: str, query: str = "", model: str | None = None) -> str:
        """`path` is the client's path, starting with /v1 (kept as-is below the base URL):
        `/v1/messages` and below go to ANTHROPIC_BASE_URL when it is set apart. Azure:
        `{base}/openai/deployments/{deployment}{path without /v1}?api-version=...`."""
        if self._azure is not None and model is not None:
            deployment = dict(self._azure.deployments).get(model, model)
            rest = path.removeprefix("/v1")
            version = f"api-version={self._azure.api_version}"
            return f"{self._base}/openai/deployments/{deployment}{rest}?{version}"
        base = self._base
        if self._anthropic is not None and path.startswith(ANTHROPIC_PATHS):
            base = self._anthropic
        return f"{base}{path}?{query}" if query else f"{base}{path}"

    async def send(
        self,
        method: str,
        path: str,
        headers: Mapping[str, str],
        body: bytes | AsyncIterable[bytes] | None,
        *,
        query: str = "",
        decompress: bool = True,
        model: str | None = None,
    ) -> aiohttp.ClientResponse:
        """Sends the request and returns once the answer's headers are in; the caller reads
        the body (`read_body` or streaming) and must release the response."""
        try:
            return await self._session.request(
                method,
                self.url(path, query, model),
                headers=headers,
                data=body,
                auto_decompress=decompress,
                allow_redirects=False,
            )
        except TimeoutError as exc:
            raise UpstreamTimeout() from exc
        except aiohttp.ClientError as exc:
            raise UpstreamUnreachable(exc) from exc

    async def close(self) -> None:
        await self._session.close()


async def read_body(response: aiohttp.ClientResponse) -> bytes:
    try:
        return await response.read()
    except TimeoutError as exc:
        raise UpstreamTimeout() from exc
    except aiohttp.ClientError as exc:
        raise UpstreamUnreachable(exc) from exc
    finally:
        response.release()
