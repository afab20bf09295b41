"""The dashboard in headless Chromium, at desktop size and at 390x844 (a phone).

A newcomer's tour: every page renders cleanly at both sizes (no horizontal
scrolling on the phone, no script or request errors), an image sent over
DICOM shows up live in the jobs list, a failed send is retried with the
button, and a picture is segmented from the phone-sized upload page.
Screenshots are kept as artefacts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.browser.conftest import ADMIN, DESKTOP, PHONE, Site
from tests.http_node import mammogram, mammogram_png, send, wait_for

pytestmark = pytest.mark.slow

SIZES = {"desktop": DESKTOP, "phone": PHONE}


def no_sideways_scroll(page: Any) -> bool:
    return bool(page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1"))


def until(page: Any, script: str, timeout_s: float = 20.0) -> None:
    """Poll ``script`` in the page (page.wait_for_function would need 'unsafe-eval' in the CSP)."""
    wait_for(lambda: page.evaluate(script), timeout_s=timeout_s)


IMAGES_LOADED = (
    "[...document.querySelectorAll('.thumbs img')].every(i => i.complete && i.naturalWidth > 0)"
)
ECHO_DONE = "document.querySelector('[data-destination] output').textContent.startsWith('OK')"


def image_loaded(page: Any, selector: str) -> bool:
    return bool(page.eval_on_selector(selector, "img => img.complete && img.naturalWidth > 0"))


@pytest.mark.parametrize("size", list(SIZES))
def test_every_page_renders_at_desktop_and_phone_width(
    size: str, site: Site, open_page: Any
) -> None:
    page = open_page(SIZES[size])
    pages = {
        "overview": ("/", "Overview"),
        "jobs": ("/jobs", "Jobs"),
        "job-done": (f"/jobs/{site.done.id}", f"Job #{site.done.id}"),
        "job-failed": (f"/jobs/{site.failed.id}", f"Job #{site.failed.id}"),
        "destinations": ("/destinations", "Destinations"),
        "associations": ("/associations", "Associations"),
        "model": ("/model", "Model"),
        "upload": ("/upload", "Segment a picture"),
    }
    for name, (path, heading) in pages.items():
        page.goto(site.url + path)
        assert page.locator("h1").inner_text().startswith(heading), name
        if not no_sideways_scroll(page):
            page.screenshot(path=str(site.shots / f"{size}-{name}-OVERFLOW.png"), full_page=True)
            wide = page.evaluate(
                "[...document.querySelectorAll('body *')].filter(e => e.getBoundingClientRect()"
                ".right > window.innerWidth + 1).slice(0, 5).map(e => e.tagName + '.' + "
                "e.className + ' ' + Math.round(e.getBoundingClientRect().right))"
            )
            raise AssertionError(f"{name} scrolls sideways at {size} width: {wide}")
        if name == "job-done":
            until(page, IMAGES_LOADED)
            assert page.locator(".thumbs img").count() == 2
        page.screenshot(path=str(site.shots / f"{size}-{name}.png"), full_page=True)
    overview = page.goto(site.url + "/")
    assert overview is not None and overview.ok
    assert page.locator("svg.chart").count() == 2
    assert page.locator("[data-ready]").inner_text() == "ready"
    page.goto(site.url + "/docs")
    page.wait_for_selector(".swagger-ui .info .title")
    assert "mammoseg" in page.locator(".swagger-ui .info .title").inner_text()
    page.screenshot(path=str(site.shots / f"{size}-api-docs.png"))


def test_pages_ask_for_a_token(site: Site, open_page: Any) -> None:
    page = open_page(PHONE, token=None)
    page.goto(site.url + "/jobs")
    assert page.url.startswith(site.url + "/login?next=")
    page.fill("#token", "certainly-not-the-token")
    page.click("form[action='/login'] button[type=submit]")
    assert "not valid" in page.locator("[role=alert]").inner_text()
    page.screenshot(path=str(site.shots / "phone-login-refused.png"))


def test_an_image_shows_up_live_in_the_jobs_list(site: Site, open_page: Any) -> None:
    page = open_page(DESKTOP)
    page.goto(site.url + "/jobs")
    before = page.locator("tr[data-job]").count()
    send(site.node, mammogram(seed=6))
    newest = wait_for(lambda: max(j.id for j in site.node.store.reads.list()) or None)
    # No reload: the list refreshes itself until the new job is DONE.
    page.wait_for_selector(f"tr[data-job='{newest}'][data-state='DONE']", timeout=30_000)
    assert page.locator("tr[data-job]").count() == before + 1
    page.screenshot(path=str(site.shots / "desktop-jobs-live.png"), full_page=True)
    page.goto(site.url + f"/jobs/{newest}")
    until(page, IMAGES_LOADED)
    page.screenshot(path=str(site.shots / "desktop-job-live-detail.png"), full_page=True)


def test_retry_a_failed_send_from_the_job_page(site: Site, open_page: Any) -> None:
    page = open_page(DESKTOP, token=ADMIN)
    page.goto(site.url + f"/jobs/{site.failed.id}")
    assert page.locator("[data-state]").first.inner_text() == "FAILED"
    assert "gave up sending" in page.locator("[data-reason]").inner_text()
    page.screenshot(path=str(site.shots / "desktop-retry-before.png"), full_page=True)
    received = len(site.peer.received)
    page.click("button[data-action$='/retry']")
    page.wait_for_selector("h2 [data-state='DONE']", timeout=30_000)
    assert len(site.peer.received) > received
    assert "retry requested by an admin" in page.locator("ol").inner_text()
    page.screenshot(path=str(site.shots / "desktop-retry-after.png"), full_page=True)


def test_echo_a_destination(site: Site, open_page: Any) -> None:
    page = open_page(PHONE, token=ADMIN)
    page.goto(site.url + "/destinations")
    page.click("button[data-action$='/echo']")
    output = page.locator("[data-destination] output")
    until(page, ECHO_DONE)
    assert "SUCCESS" in output.inner_text()
    page.screenshot(path=str(site.shots / "phone-destinations-echo.png"), full_page=True)


def test_segment_a_picture_from_a_phone(site: Site, open_page: Any, tmp_path: Path) -> None:
    picture = tmp_path / "mammogram.png"
    picture.write_bytes(mammogram_png(seed=7))
    page = open_page(PHONE)
    page.goto(site.url + "/upload")
    page.screenshot(path=str(site.shots / "phone-upload-empty.png"), full_page=True)
    # The gallery picker; choosing a file submits the form at once.
    page.set_input_files("input[name=file]", str(picture))
    page.wait_for_selector("img[data-overlay]", timeout=30_000)
    assert image_loaded(page, "img[data-overlay]")
    rows = page.locator("table[data-areas] tbody tr")
    assert rows.count() == 1
    assert rows.first.locator("td").nth(1).inner_text().endswith("px")
    assert no_sideways_scroll(page)
    page.screenshot(path=str(site.shots / "phone-upload-result.png"), full_page=True)
