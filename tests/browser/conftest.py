"""The dashboard in a real browser: the system's headless Chromium (Debian's `chromium` package) driven by
Playwright, against the stack as processes (API, a worker, PostgreSQL, Redis) on the tiny data."""

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from playwright import sync_api

from tests.prerequisites import missing
from tests.processes import compose_topology

if TYPE_CHECKING:
    from playwright.sync_api import Browser

CHROMIUM = Path("/usr/bin/chromium")
# Without the background-networking flags Chromium phones home (updates, sync, field trials), which a closed
# network refuses; headless and sandbox flags as Playwright would pass them for its own build.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
VIEWPORT = {"width": 1280, "height": 800}


@dataclass(frozen=True)
class Stack:
    url: str
    key: str


@pytest.fixture(scope="module")
def browser() -> Iterator["Browser"]:
    """A headless Chromium (the system's: CI installs `chromium`)."""
    if not CHROMIUM.exists():
        missing(f"no Chromium at {CHROMIUM} (apt-get install chromium fonts-liberation): the browser tests need one")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="module")
def stack(browser: "Browser", tmp_path_factory: pytest.TempPathFactory, postgres_url: str, redis_url: str,
          tiny_data_root: Path) -> Iterator[Stack]:
    """The compose topology as processes with one training worker (started after the browser: no Chromium,
    no stack). One torch thread: the tiny network gains nothing from more, and the browser and the API share
    the machine (two OpenMP threads stall each other whenever one is descheduled)."""
    with compose_topology(tmp_path_factory.mktemp("stack"), database_url=postgres_url, redis_url=redis_url,
                          data_root=tiny_data_root, workers=1, worker_torch_threads="1") as (client, _):
        yield Stack(url=str(client.base_url).rstrip("/"), key=client.headers["Authorization"].removeprefix("Bearer "))


@pytest.fixture
def screenshots(tmp_path: Path) -> Path:
    """Where a test leaves its screenshots (pytest keeps the last runs' tmp folders)."""
    folder = tmp_path / "screenshots"
    folder.mkdir()
    return folder
