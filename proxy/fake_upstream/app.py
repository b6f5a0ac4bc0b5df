"""The aiohttp application: /v1 routes behind the knob middleware, and the /_fake control routes."""

from __future__ import annotations

import asyncio
import hmac
import uuid
from collections.abc import Awaitable, Callable

import msgspec
from aiohttp import web

from .drip import drip
from .endpoints import embeddings, get_model, list_models, moderations, unknown_url
from .generate import chat_completions, completions
from .inputs import BODY_KEY, ParsedBody
from .messages import messages
from .responses import responses
from .state import FakeUpstream, KnobUpdate
from .wire import FAKE_KEY, FakeApiError, error_answer, plain_json

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

STOPPING_KEY = web.AppKey("fake_stopping", asyncio.Event)
MAX_BODY_BYTES = 64 * 1024 * 1024
_HANG_POLL_S = 0.01


def _is_v1(path: str) -> bool:
    return path == "/v1" or path.startswith("/v1/")


def _parse_body(raw: bytes) -> ParsedBody:
    if not raw:
        return ParsedBody(None)
    try:
        return ParsedBody(msgspec.json.decode(raw))
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as err:
        # msgspec raises the last two for bytes that are not UTF-8 and for nesting deeper than
        # it recurses: OpenAI answers both with its 400, and so does the fake.
        return ParsedBody(None, f"{type(err).__name__}: {err}")


def _check_auth(request: web.Request, fake: FakeUpstream) -> None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    api_key = request.headers.get("x-api-key", "").strip()
    if api_key and request.path.startswith("/v1/messages") and not token:
        scheme, token = "bearer", api_key  # Anthropic's own credential header
    if scheme.lower() != "bearer" or not token:
        raise FakeApiError(
            401,
            "You didn't provide an API key. You need to provide your API key in an "
            "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
        )
    required = fake.required_key
    if required is not None and not hmac.compare_digest(token.encode(), required.encode()):
        raise FakeApiError(401, "Incorrect API key provided.", code="invalid_api_key")


def _injected_failure(fake: FakeUpstream) -> FakeApiError:
    status = fake.fail_status
    headers = {"Retry-After": fake.fail_retry_after} if fake.fail_retry_after else None
    if status == 429:
        message, code = "Rate limit reached (injected by the fake upstream).", "rate_limit_exceeded"
    else:
        message, code = f"The fake upstream was told to fail with {status}.", None
    return FakeApiError(status, message, code=code, headers=headers)


def _at_flex(request: web.Request) -> bool:
    body = request[BODY_KEY].value
    return isinstance(body, dict) and body.get("service_tier") == "flex"


def _flex_refusal(status: int) -> FakeApiError:
    if status == 429:
        return FakeApiError(
            429,
            "Flex processing is out of capacity right now (injected by the fake upstream); "
            "retry later or at the default tier.",
            code="resource_unavailable",
        )
    return FakeApiError(status, f"The fake upstream was told to fail flex calls with {status}.")


async def _wait_while_hung(request: web.Request, fake: FakeUpstream) -> None:
    """Holds the request until `hang` is cleared, the client leaves or the app stops."""
    stopping = request.app[STOPPING_KEY]
    while fake.hang:
        transport = request.transport
        if transport is None or transport.is_closing():
            fake.abandoned += 1
            raise FakeApiError(499, "The client closed the connection.")
        if stopping.is_set():
            raise FakeApiError(503, "The fake upstream is shutting down.")
        await asyncio.sleep(_HANG_POLL_S)


async def _answer(request: web.Request, handler: Handler, fake: FakeUpstream) -> web.StreamResponse:
    try:
        if fake.latency_ms > 0:
            await asyncio.sleep(fake.latency_ms / 1000)
        flex = _at_flex(request)
        if flex and fake.flex_latency_ms > 0:
            await asyncio.sleep(fake.flex_latency_ms / 1000)
        await _wait_while_hung(request, fake)
        _check_auth(request, fake)
        if fake.take_failure():
            raise _injected_failure(fake)
        if flex and fake.flex_fail_status is not None:
            raise _flex_refusal(fake.flex_fail_status)
        if fake.drip_ms is not None:
            return await drip(request, fake, request.app[STOPPING_KEY])
        return await handler(request)
    except FakeApiError as err:
        return error_answer(request, err)


@web.middleware
async def _knob_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Records every /v1 request, then applies concurrency, latency, hang, auth and failures."""
    if not _is_v1(request.path):
        return await handler(request)
    fake = request.app[FAKE_KEY]
    parsed = _parse_body(await request.read())
    request[BODY_KEY] = parsed
    headers = {name.lower(): value for name, value in request.headers.items()}
    fake.record(request.method, request.path, headers, parsed.value)
    gate = fake.gate()
    if gate is not None:
        await gate.acquire()
    fake.enter()
    try:
        return await _answer(request, handler, fake)
    finally:
        fake.leave()
        if gate is not None:
            gate.release()


async def _add_request_id(request: web.Request, response: web.StreamResponse) -> None:
    if "x-request-id" not in response.headers:
        response.headers["x-request-id"] = "req_" + uuid.uuid4().hex


async def _stats(request: web.Request) -> web.Response:
    return plain_json(request.app[FAKE_KEY].stats())


async def _set_knobs(request: web.Request) -> web.Response:
    fake = request.app[FAKE_KEY]
    try:
        update = msgspec.json.decode(await request.read(), type=KnobUpdate)
    except (msgspec.ValidationError, msgspec.DecodeError) as err:
        return plain_json(FakeApiError(400, f"Invalid knobs: {err}").payload(), status=400)
    fake.apply(update)
    return plain_json({"knobs": fake.knobs()})


async def _reset(request: web.Request) -> web.Response:
    fake = request.app[FAKE_KEY]
    fake.reset()
    return plain_json({"knobs": fake.knobs()})


def create_fake_app(fake: FakeUpstream) -> web.Application:
    app = web.Application(middlewares=[_knob_middleware], client_max_size=MAX_BODY_BYTES)
    app[FAKE_KEY] = fake
    app[STOPPING_KEY] = asyncio.Event()
    app.on_response_prepare.append(_add_request_id)

    async def _on_shutdown(app: web.Application) -> None:
        app[STOPPING_KEY].set()

    app.on_shutdown.append(_on_shutdown)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/embeddings", embeddings)
    app.router.add_post("/v1/moderations", moderations)
    app.router.add_post("/v1/responses", responses)
    app.router.add_post("/v1/messages", messages)
    app.router.add_get("/v1/models", list_models, allow_head=False)
    app.router.add_get("/v1/models/{model_id}", get_model, allow_head=False)
    app.router.add_route("*", "/v1", unknown_url)
    app.router.add_route("*", "/v1/{tail:.*}", unknown_url)
    app.router.add_get("/_fake/stats", _stats, allow_head=False)
    app.router.add_post("/_fake/knobs", _set_knobs)
    app.router.add_post("/_fake/reset", _reset)
    return app


async def start_fake_upstream(
    fake: FakeUpstream, host: str = "127.0.0.1", port: int = 0
) -> tuple[web.AppRunner, str]:
    """Starts the fake on `host:port` (0 = a free port); returns the runner and its /v1 URL."""
    runner = web.AppRunner(create_fake_app(fake), access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound_port = runner.addresses[0][1]
    url_host = f"[{host}]" if ":" in host else host
    return runner, f"http://{url_host}:{bound_port}/v1"
