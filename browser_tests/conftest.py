"""Browser tests run in a pytest process of their own (see pyproject.toml); they share the
test bed's fixtures (background event loop, stub upstream, sidecars) and drive Debian's
Chromium."""

from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.sidecar import loop_thread, make_sidecar, stub

__all__ = ["loop_thread", "make_sidecar", "stub"]
CHROMIUM = "/usr/lib/chromium/chromium"


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict[str, Any]) -> dict[str, Any]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (make test-servers)")
    return {
        **browser_type_launch_args,
        "executable_path": CHROMIUM,
        "args": [
            "--disable-gpu",
            "--headless=new",
            "--no-sandbox",
            "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
        ],
    }
