"""Browser tests run in a pytest process of their own (see pyproject.toml); they share the
test bed's background event loop fixture."""

from tests.fixtures.sidecar import loop_thread

__all__ = ["loop_thread"]
