"""A fake OpenAI-compatible upstream: the demo backend, the test double and the bench stub.

Answers are deterministic (the same request gets the same text or vectors), token counts are
honest word counts, and knobs inject latency, errors, hangs and broken streams. As on the real
API, a model outside its list is a 404 `model_not_found` (catalog.py), and requests can get
`tool_calls` (toolcalls.py) and `logprobs` (logprobs.py), streamed as OpenAI chunks them.
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
