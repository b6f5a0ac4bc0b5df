"""When the ledger tries its database again after a failure: exponential backoff."""

from __future__ import annotations

import time


class SinkBackoff:
    def __init__(self, min_s: float, max_s: float) -> None:
        self._min_s = min_s
        self._max_s = max_s
        self._wait_s = min_s
        self._retry_at = 0.0
        self.up = True

    @property
    def due(self) -> bool:
        """Whether the database may be tried now (always while it is up)."""
        return time.monotonic() >= self._retry_at

    def failed(self) -> bool:
        """Records a failure; True when the database was up until now."""
        self._retry_at = time.monotonic() + self._wait_s
        self._wait_s = min(self._wait_s * 2, self._max_s)
        was_up, self.up = self.up, False
        return was_up

    def succeeded(self) -> bool:
        """Records a success; True when the database was down until now."""
        self._wait_s = self._min_s
        self._retry_at = 0.0
        was_down, self.up = not self.up, True
        return was_down
