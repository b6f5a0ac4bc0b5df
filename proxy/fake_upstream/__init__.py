"""A fake OpenAI-compatible upstream: the demo backend, the test double and the bench stub.

Answers are deterministic (the same request gets the same text or vectors), token counts are
honest word counts, and knobs inject latency, errors, hangs and broken streams.
"""

from .app import create_fake_app, start_fake_upstream
from .state import FakeUpstream, KnobUpdate, RecordedRequest

__all__ = [
    "FakeUpstream",
    "KnobUpdate",
    "RecordedRequest",
    "create_fake_app",
    "start_fake_upstream",
]
