"""OpenTelemetry traces (docs: README "Traces"), chosen once at start-up and handed to the request
path as `Runtime.tracer`. With no OTLP endpoint in the environment the tracer is `Untraced`:
`on` is False, so the proxy middleware skips the server span, and its `span` hands back one
shared no-op context (nothing created per request). The SDK is the optional `otel` extra, imported
only when an endpoint is configured.

Configuration is the SDK's own standard variables (OTEL_EXPORTER_OTLP_ENDPOINT or
OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, OTEL_SERVICE_NAME, OTEL_TRACES_SAMPLER, OTEL_BSP_*), OTLP over
HTTP/protobuf. Spans carry no prompt or answer text unless
OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

log = logging.getLogger("sidecache")

ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
CAPTURE_VARIABLE = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"
CONTENT_LIMIT = 4096  # characters of a captured message or answer
Attributes = Mapping[str, str | int | float | bool]


class Untraced:
    """Tracing off: every method is a constant-time no-op."""

    on = False
    capture_content = False

    def __init__(self) -> None:
        self._nothing: AbstractContextManager[None] = nullcontext()

    def span(
        self, name: str, attributes: Attributes | None = None, *, client: bool = False
    ) -> AbstractContextManager[Any]:
        """A child of the current span (`client`: of kind CLIENT, a call out)."""
        return self._nothing

    def event(self, name: str, attributes: Attributes | None = None) -> None:
        return None

    def inject(self, headers: Mapping[str, str]) -> Mapping[str, str]:
        return headers  # the client's traceparent, if any, goes upstream as it came

    def server_span(self, name: str, headers: Mapping[str, str]) -> AbstractContextManager[Any]:
        return self._nothing

    async def close(self) -> None:
        return None


class Traced(Untraced):
    """Tracing on: spans through an SDK tracer provider of this runtime's own (not the global
    one), exported in batches by the SDK's exporter thread."""

    on = True

    def __init__(self, environ: Mapping[str, str]) -> None:
        super().__init__()
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        service = environ.get("OTEL_SERVICE_NAME") or "sidecache"
        self._provider = TracerProvider(resource=Resource.create({SERVICE_NAME: service}))
        self._provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        self._tracer = self._provider.get_tracer("sidecache")
        self._trace = trace
        self._propagator = TraceContextTextMapPropagator()
        self.capture_content = environ.get(CAPTURE_VARIABLE, "").lower() == "true"

    def span(
        self, name: str, attributes: Attributes | None = None, *, client: bool = False
    ) -> AbstractContextManager[Any]:
        kind = self._trace.SpanKind.CLIENT if client else self._trace.SpanKind.INTERNAL
        return self._tracer.start_as_current_span(name, kind=kind, attributes=attributes)

    def event(self, name: str, attributes: Attributes | None = None) -> None:
        self._trace.get_current_span().add_event(name, attributes)

    def inject(self, headers: Mapping[str, str]) -> Mapping[str, str]:
        """`headers` with the current span's traceparent (and tracestate) in place of the
        client's: the upstream's work is a child of the sidecar's upstream call."""
        carried: MutableMapping[str, str] = {
            name: value
            for name, value in headers.items()
            if name.lower() not in ("traceparent", "tracestate")
        }
        self._propagator.inject(carried)
        return carried

    def server_span(self, name: str, headers: Mapping[str, str]) -> AbstractContextManager[Any]:
        return self._server_span(name, headers)

    @contextmanager
    def _server_span(self, name: str, headers: Mapping[str, str]) -> Iterator[Any]:
        parent = self._propagator.extract(headers)
        kind = self._trace.SpanKind.SERVER
        with self._tracer.start_as_current_span(name, context=parent, kind=kind) as span:
            yield span

    def flush(self) -> bool:
        """Export every ended span now (blocking: tests and shutdown only)."""
        return self._provider.force_flush()

    async def close(self) -> None:
        import asyncio

        await asyncio.to_thread(self._provider.shutdown)


Tracer = Untraced  # the type the request path sees: Traced is one


def open_tracer(environ: Mapping[str, str] | None = None) -> Tracer:
    """`Traced` when an OTLP endpoint is configured and the `otel` extra is installed."""
    env = os.environ if environ is None else environ
    if not any(env.get(name) for name in ENDPOINT_VARIABLES):
        return Untraced()
    try:
        return Traced(env)
    except ImportError:
        log.warning(
            "OTEL_EXPORTER_OTLP_ENDPOINT is set but the OpenTelemetry SDK is not installed "
            "(pip install 'sidecache[otel]'): tracing is off"
        )
        return Untraced()
