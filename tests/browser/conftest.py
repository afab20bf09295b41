"""A real node, a real HTTP server and headless Chromium (Debian's, driven by Playwright).

Skips, saying why, when Chromium or the playwright package is missing:
``apt-get install chromium`` and ``pip install playwright`` (never
``playwright install``: the system browser is used). Screenshots go to
``$MAMMOSEG_ARTIFACTS`` (default ``artifacts/screenshots`` in the repository).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from service.node import Node, start_node
from service.store import Job, JobState
from tests.http_node import (
    ADMIN,
    VIEWER,
    LiveServer,
    Peer,
    live_server,
    mammogram,
    node_state,
    send,
    settings_for,
    wait_for,
)

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("MAMMOSEG_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}


def artifacts_dir() -> Path:
    folder = Path(os.environ.get("MAMMOSEG_ARTIFACTS", ROOT / "artifacts" / "screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


# Module scope, not session: Playwright's sync API keeps an asyncio loop running in the
# main thread while it is open, and every later sync_playwright() (the OHIF tests) or
# asyncio.run() in the session would be refused ("Sync API inside the asyncio loop").
@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)):
        pytest.skip(f"Chromium not found at {CHROMIUM}: apt-get install chromium")
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="pip install playwright (the system Chromium is used)"
    )
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@dataclass
class Site:
    """The node under test, its HTTP address, its destination and two known jobs."""

    node: Node
    server: LiveServer
    peer: Peer
    failed: Job
    done: Job
    shots: Path
    problems: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.server.url


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("browser")
    peer = Peer(refuse=True)
    node = start_node(
        settings_for(tmp, destinations=[peer.name], retry_give_up_s=0.3, read_access="token")
    )
    try:
        send(node, mammogram(seed=4))
        failed = wait_for(
            lambda: next(iter(node.store.reads.list(state=JobState.FAILED)), None), 60
        )
        peer.refuse = False
        send(node, mammogram(seed=5))
        done = wait_for(lambda: next(iter(node.store.reads.list(state=JobState.DONE)), None), 60)
        with live_server(node_state(node)) as server:
            yield Site(node, server, peer, failed, done, artifacts_dir())
    finally:
        node.stop()
        peer.close()


@pytest.fixture
def open_page(browser: Any, site: Site) -> Iterator[Any]:
    """open_page(viewport, token=None) -> a page, logged in with ``token`` if given.

    Console errors, page errors and failed requests are collected; the test
    fails at the end if there were any.
    """
    contexts: list[Any] = []
    problems: list[str] = []

    def make(viewport: dict[str, int], token: str | None = VIEWER) -> Any:
        phone = viewport["width"] < 600
        context = browser.new_context(
            viewport=viewport, is_mobile=phone, has_touch=phone, device_scale_factor=1
        )
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(15_000)
        page.on(
            "console",
            lambda msg: (
                problems.append(f"console {msg.type}: {msg.text}")
                if msg.type == "error" and "401" not in msg.text
                else None
            ),
        )
        page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
        page.on(
            "requestfailed",
            lambda req: (
                problems.append(f"request failed: {req.url} {req.failure}")
                if not req.url.startswith("data:") and "ERR_ABORTED" not in str(req.failure)
                else None
            ),
        )
        if token:
            page.goto(f"{site.url}/login")
            page.fill("#token", token)
            page.click("form[action='/login'] button[type=submit]")
            page.wait_for_url(f"{site.url}/")
        return page

    yield make
    for context in contexts:
        context.close()
    assert problems == []


__all__ = ["ADMIN", "DESKTOP", "PHONE", "VIEWER", "Site"]
