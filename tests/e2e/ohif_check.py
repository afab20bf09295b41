"""The viewer check, shared by the OHIF e2e tests: one image's SEG and SR, seen in OHIF 3.13.

:func:`check_in_ohif` opens headless Chromium on OHIF's viewer for a study on a DICOMweb
server (:mod:`tests.e2e.ohif`: the pinned ``@ohif/app`` dist behind a same-origin proxy) and
reads the viewer's own state, never a sleep. It picks display sets by the SOP Instance UID
of their instance, not by Modality, so it works in a study of several images with a SEG and
an SR each (and an exam SR that has no SCOORD):

- the chosen MG, put into the viewport, is grey (no red pixels);
- its SEG, put into the viewport as a double-click on its thumbnail does, becomes a
  segmentation with the one segment "Mass" drawn over that MG: red pixels fill much of the
  largest lesion's box and lie within the union of the lesions' boxes (from the SR's
  SCOORDs, mapped onto the canvas);
- its SR, put into the viewport, is hydrated (prompts are off in the config) into one
  Length measurement per lesion on that MG (its SOP Instance UID), the lengths the SR's long
  axes (as a multiset, within a pixel), and the measurement panel lists them (finding
  "Mass", the length, site "Breast").

Screenshots go to the folder given (the tests use ``test-artifacts/ohif/...``, git-ignored).
Not a test module: import it as ``from tests.e2e.ohif_check import ...``.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.sr.codedict import codes

from tests.e2e.ohif import OHIF_VERSION, ohif_dist, viewer_server

CHROMIUM = Path("/usr/bin/chromium")
#: WebGL (cornerstone renders with it) on the CPU: no GPU in CI.
CHROMIUM_ARGS = ["--use-angle=swiftshader", "--enable-unsafe-swiftshader"]
#: Generous: swiftshader on a shared CPU; every wait ends as soon as its state is there.
WAIT_MS = 180_000
#: The viewer measures the line itself: within a pixel (0.1 mm here) of the SR's value.
LENGTH_TOLERANCE_MM = 0.15
#: Canvas pixels a red pixel may lie outside a lesion's box (outline, half-pixel origin).
BOX_MARGIN_PX = 3.0

#: The onboarding tour would cover the viewport; mark it as shown before the app starts.
NO_TOUR = "localStorage.setItem('shownTours', JSON.stringify(['basicViewerTour']))"

#: Every display set with the SOP Instance UIDs it holds.
DISPLAY_SETS = """() => {
  const s = window.services;
  if (!s || !s.displaySetService) return [];
  return s.displaySetService.getActiveDisplaySets().map(d => {
    const held = (d.instances || []).concat(d.instance ? [d.instance] : [])
      .map(i => i && i.SOPInstanceUID).concat(d.SOPInstanceUID ? [d.SOPInstanceUID] : []);
    return {
      uid: d.displaySetInstanceUID, modality: d.Modality,
      sops: Array.from(new Set(held.filter(Boolean))),
    };
  });
}"""

#: The display set of each named SOP Instance UID, once all of them have one; else null.
FIND_DISPLAY_SETS = (
    """(wanted) => {
  const sets = ("""
    + DISPLAY_SETS
    + """)();
  const found = {};
  for (const [name, sop] of Object.entries(wanted)) {
    const hit = sets.find(d => d.sops.includes(sop));
    if (!hit) return null;
    found[name] = hit.uid;
  }
  return found;
}"""
)

SHOW_IN_VIEWPORT = """(uid) => {
  const grid = window.services.viewportGridService;
  const viewportId = grid.getState().activeViewportId;
  grid.setDisplaySetsForViewport({viewportId, displaySetInstanceUIDs: [uid]});
  return viewportId;
}"""

#: True once the active viewport shows the image of this SOP Instance UID (any: ""), loaded.
SHOWS_IMAGE = """(sop) => {
  const s = window.services;
  const id = s.viewportGridService.getState().activeViewportId;
  const v = s.cornerstoneViewportService.getCornerstoneViewport(id);
  const imageId = v && v.getCurrentImageId && v.getCurrentImageId();
  return !!(imageId && imageId.includes(sop) && v.getImageData && v.getImageData());
}"""

SEGMENTATIONS = """() => {
  const s = window.services;
  const found = s.segmentationService.getSegmentations().map(seg => ({
    id: seg.segmentationId,
    label: seg.label,
    segments: Object.values(seg.segments).filter(Boolean).map(g => g.label),
  }));
  const viewportId = s.viewportGridService.getState().activeViewportId;
  const shown = s.segmentationService.getSegmentationRepresentations(viewportId)
    .filter(r => r.visible).map(r => r.segmentationId);
  return found.length && shown.length ? {found, shown} : null;
}"""

#: Where each lesion's box lies on the viewport's canvas (CSS pixels), and the canvas box.
BOXES_ON_CANVAS = """(boxes) => {
  const s = window.services;
  const viewportId = s.viewportGridService.getState().activeViewportId;
  const viewport = s.cornerstoneViewportService.getCornerstoneViewport(viewportId);
  const imageId = viewport.getCurrentImageId();
  const toCanvas = (x, y) => viewport.worldToCanvas(
    window.cornerstone.utilities.imageToWorldCoords(imageId, [x, y]));
  const rect = viewport.canvas.getBoundingClientRect();
  return {
    boxes: boxes.map(([left, top, right, bottom]) =>
      [toCanvas(left, top), toCanvas(right, bottom)]),
    rect: {x: rect.x, y: rect.y, width: rect.width, height: rect.height},
  };
}"""

#: Resolves after a resize has been rendered: two animation frames, then 0.3 s.
SETTLED = """() => new Promise(done => requestAnimationFrame(
  () => requestAnimationFrame(() => setTimeout(done, 300))))"""

#: Every measurement, once ``count`` Length measurements lie on the image ``sop``.
MEASUREMENTS = """([sop, count]) => {
  const found = window.services.measurementService.getMeasurements().map(m => ({
    tool: m.toolName, sop: m.SOPInstanceUID, text: m.displayText,
    length: m.data ? Object.values(m.data).map(d => d && d.length).find(x => x) : null,
  }));
  const on = found.filter(m => m.tool === 'Length' && m.sop === sop && m.length);
  return on.length >= count ? found : null;
}"""

#: The measurement panel's rows (text), once it lists ``count`` of them, each with a length.
PANEL_ROWS = """(count) => {
  const rows = Array.from(document.querySelectorAll('[data-cy^="measurement-table-row-"]'))
    .map(r => r.innerText);
  return rows.length >= count && rows.every(r => /\\d+\\.\\d+ /.test(r)) ? rows : null;
}"""

Box = tuple[float, float, float, float]


def need_browser() -> Any:
    """Playwright's sync API, or skip: the system Chromium or playwright is missing."""
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} is not installed (Debian package chromium)")
    return pytest.importorskip("playwright.sync_api", reason="playwright (test extra) is missing")


def long_axes(sr: pydicom.Dataset) -> list[float]:
    """The SR's long-axis lengths (mm), one per lesion, from its TID 1410 groups."""
    report = hd.sr.Comprehensive3DSR.from_dataset(sr)
    values = []
    for group in report.content.get_planar_roi_measurement_groups():
        found = group.get_measurements(name=codes.SCT.LongAxis)
        if found:
            values.append(float(found[0].value))
    return values


def lesion_boxes(sr: pydicom.Dataset) -> list[Box]:
    """(left, top, right, bottom) pixel edges of each lesion's box, from the SR's SCOORDs."""
    report = hd.sr.Comprehensive3DSR.from_dataset(sr)
    boxes = []
    for group in report.content.get_planar_roi_measurement_groups():
        if group.roi is not None:
            corners = group.roi.value.reshape(-1, 2)
            (left, top), (right, bottom) = corners.min(axis=0), corners.max(axis=0)
            boxes.append((float(left), float(top), float(right), float(bottom)))
    assert boxes, "the SR has no bounding box"
    return boxes


def red_pixels(path: Path) -> np.ndarray:
    """(row, column) of the screenshot's clearly red pixels (the SEG's colour)."""
    rgb = np.asarray(Image.open(path).convert("RGB")).astype(np.int16)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return np.argwhere((r > 120) & (r - g > 50) & (r - b > 50))


def matches(shown: list[float], expected: list[float]) -> bool:
    """Two multisets of lengths equal within the tolerance (sorted pairing is optimal in 1-D)."""
    return len(shown) == len(expected) and all(
        abs(a - b) <= LENGTH_TOLERANCE_MM
        for a, b in zip(sorted(shown), sorted(expected), strict=True)
    )


class Shot:
    """A viewport screenshot, its red pixels and the lesions' boxes on it (canvas pixels)."""

    def __init__(self, path: Path, where: dict[str, Any]) -> None:
        self.path = path
        self.red = red_pixels(path)
        self.boxes = []  # (left, top, right, bottom), largest first
        for (x0, y0, *_), (x1, y1, *_) in where["boxes"]:
            (left, right), (top, bottom) = sorted((x0, x1)), sorted((y0, y1))
            self.boxes.append((left, top, right, bottom))
        self.boxes.sort(key=lambda b: (b[2] - b[0]) * (b[3] - b[1]), reverse=True)

    def inside(self, box: Box, margin: float = 0.0) -> np.ndarray:
        """Which red pixels lie in ``box`` (grown by ``margin`` on each side)."""
        left, top, right, bottom = box
        rows, cols = self.red[:, 0] + 0.5, self.red[:, 1] + 0.5
        return (
            (cols >= left - margin)
            & (cols <= right + margin)
            & (rows >= top - margin)
            & (rows <= bottom + margin)
        )

    @property
    def largest_area(self) -> float:
        left, top, right, bottom = self.boxes[0]
        return (right - left) * (bottom - top)

    @property
    def in_largest(self) -> int:
        return int(self.inside(self.boxes[0]).sum())

    @property
    def outside_all(self) -> int:
        """Red pixels outside every lesion's box (with the margin)."""
        inside = np.zeros(len(self.red), dtype=bool)
        for box in self.boxes:
            inside |= self.inside(box, BOX_MARGIN_PX)
        return int((~inside).sum())

    def seg_drawn(self) -> bool:
        return self.in_largest > 0.3 * self.largest_area


@dataclass(frozen=True)
class ViewerSummary:
    """What the viewer showed for one image, for the test's report and its own asserts."""

    seg_seconds: float
    sr_seconds: float
    segments: list[list[str]]
    lengths: list[float]
    panel_rows: list[str]
    red_before: int
    red_after: int
    red_in_largest_box: int
    red_outside_boxes: int
    display_sets: dict[str, int]
    console_errors: list[str]
    proxy_errors: list[str]
    screenshots: Path

    def line(self) -> str:
        return (
            f"OHIF {OHIF_VERSION}: SEG drawn {self.seg_seconds:.1f} s, SR hydrated"
            f" {self.sr_seconds:.1f} s after the page opened; segments {self.segments};"
            f" Length measurements {[round(x, 2) for x in self.lengths]};"
            f" {len(self.panel_rows)} panel rows; red pixels before/after the SEG"
            f" {self.red_before}/{self.red_after} ({self.red_in_largest_box} in the largest box,"
            f" {self.red_outside_boxes} outside all); display sets {self.display_sets};"
            f" console errors {len(self.console_errors)}; proxy errors {len(self.proxy_errors)};"
            f" screenshots {self.screenshots}"
        )


def check_in_ohif(
    dicomweb_url: str,
    study_uid: str,
    source_uid: str,
    seg: pydicom.Dataset,
    sr: pydicom.Dataset,
    screenshots: Path,
) -> ViewerSummary:
    """Open OHIF on ``study_uid`` and check image ``source_uid``'s SEG and SR (see module).

    ``dicomweb_url``: the DICOMweb root (Orthanc's ``.../dicom-web``); ``seg`` and ``sr``:
    the node's results for that image as the PACS holds them. Asserts what the viewer shows
    and returns the summary; screenshots are written to ``screenshots``.
    """
    playwright = need_browser()
    expected = long_axes(sr)
    boxes = lesion_boxes(sr)
    assert len(boxes) == len(expected) > 0, "one box and one long axis per lesion"
    wanted = {"mg": source_uid, "seg": str(seg.SOPInstanceUID), "sr": str(sr.SOPInstanceUID)}
    dist = ohif_dist()
    screenshots.mkdir(parents=True, exist_ok=True)
    console: list[str] = []
    page = None
    # A wait that times out (swiftshader on a shared CPU; the hanging protocol's first
    # layout once left a black page) gets one more try in a fresh browser; a wrong
    # state does not: every assertion below runs on the try that finished.
    for attempt in (1, 2):
        console.clear()
        page = None
        try:
            with viewer_server(dist, dicomweb_url) as viewer, playwright.sync_playwright() as p:
                browser = p.chromium.launch(
                    executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
                )
                try:
                    page = browser.new_page(viewport={"width": 1400, "height": 900})
                    page.add_init_script(NO_TOUR)
                    page.on("console", lambda m: console.append(f"{m.type}: {m.text[:300]}"))
                    page.on("pageerror", lambda e: console.append(f"error: page error {e}"[:300]))
                    page.on("crash", lambda _: console.append("error: the page crashed"))
                    started = time.monotonic()
                    page.goto(f"{viewer.url}/viewer?StudyInstanceUIDs={study_uid}")
                    uid = page.wait_for_function(
                        FIND_DISPLAY_SETS, arg=wanted, timeout=WAIT_MS
                    ).json_value()
                    # The hanging protocol puts its first image in the viewport: let it finish (a
                    # display set set before that may be replaced, or break the layout)...
                    page.wait_for_function(SHOWS_IMAGE, arg="", timeout=WAIT_MS)
                    # ... then the chosen MG alone (the protocol may have put another view there)
                    page.evaluate(SHOW_IN_VIEWPORT, uid["mg"])
                    page.wait_for_function(SHOWS_IMAGE, arg=source_uid, timeout=WAIT_MS)
                    before = viewport_shot(page, boxes, screenshots / "1-mg.png")

                    page.evaluate(SHOW_IN_VIEWPORT, uid["seg"])
                    segmentations = page.wait_for_function(
                        SEGMENTATIONS, timeout=WAIT_MS
                    ).json_value()
                    page.wait_for_function(SHOWS_IMAGE, arg=source_uid, timeout=WAIT_MS)
                    after = wait_for_red(page, boxes, screenshots / "2-seg.png")
                    seg_seconds = time.monotonic() - started

                    page.evaluate(SHOW_IN_VIEWPORT, uid["sr"])
                    measurements = page.wait_for_function(
                        MEASUREMENTS, arg=[source_uid, len(expected)], timeout=WAIT_MS
                    ).json_value()
                    hydrated = page.evaluate(
                        "(uid) => window.services.displaySetService"
                        ".getDisplaySetByUID(uid).isHydrated",
                        uid["sr"],
                    )
                    page.screenshot(path=str(screenshots / "3-sr.png"))
                    sr_seconds = time.monotonic() - started
                    page.click('[data-cy="trackedMeasurements-btn"]')  # the measurement panel
                    rows = page.wait_for_function(PANEL_ROWS, arg=len(expected), timeout=WAIT_MS)
                    rows = rows.json_value()
                    # The viewport shrank for the panel: let it re-render (for the picture only)
                    page.evaluate(SETTLED)
                    page.screenshot(path=str(screenshots / "4-panel.png"))
                    sets = page.evaluate(DISPLAY_SETS)
                except Exception:
                    print("\nOHIF console, last lines:\n" + "\n".join(console[-40:]))
                    print(f"proxy errors: {viewer.proxy_errors}")
                    raise
                finally:
                    if page is not None and not page.is_closed():
                        page.screenshot(path=str(screenshots / "last.png"))
                    browser.close()
                    print(f"\nOHIF screenshots: {screenshots}")
            break
        except playwright.TimeoutError:
            if attempt == 2:
                raise
            print("\nOHIF: a wait timed out; trying once more in a fresh browser")
    lengths = [m for m in measurements if m["tool"] == "Length"]
    summary = ViewerSummary(
        seg_seconds=seg_seconds,
        sr_seconds=sr_seconds,
        segments=[s["segments"] for s in segmentations["found"]],
        lengths=[float(m["length"]) for m in lengths],
        panel_rows=rows,
        red_before=len(before.red),
        red_after=len(after.red),
        red_in_largest_box=after.in_largest,
        red_outside_boxes=after.outside_all,
        display_sets=dict(Counter(str(d["modality"]) for d in sets)),
        console_errors=[line for line in console if line.startswith("error")],
        proxy_errors=list(viewer.proxy_errors),
        screenshots=screenshots,
    )
    print(summary.line())
    for line in summary.console_errors:
        print(f"  console {line}")

    # (a) the SEG: one segmentation, this image's, segment "Mass", drawn in red over the lesions
    assert [s["id"] for s in segmentations["found"]] == [uid["seg"]], segmentations
    assert segmentations["shown"] == [uid["seg"]], segmentations
    assert summary.segments == [["Mass"]]
    assert summary.red_before == 0, "the MG alone is grey"
    assert after.seg_drawn(), "the segment fills much of the largest lesion's box"
    assert summary.red_outside_boxes <= 0.02 * summary.red_after, "red outside the lesions"
    # (b) the SR: hydrated into one Length per lesion on this MG, of the SR's long axes
    assert hydrated is True
    assert {m["sop"] for m in lengths} == {source_uid}, measurements
    assert matches(summary.lengths, expected), (summary.lengths, expected)
    # ... and listed in the measurement panel: finding "Mass", its length, site "Breast".
    # The unit is cornerstone's reading of the MG's calibration, not of our objects: "mm",
    # or in some runs "px ERMF" (the synthetic MG has Pixel Spacing = Imager Pixel Spacing,
    # calibration GEOMETRY, which cornerstone warns about): the number is what is checked.
    shown = []
    for row in rows:
        lines = row.split("\n")
        assert "Mass" in lines and "Breast" in lines, row
        numbers = [float(m[1]) for line in lines if (m := re.match(r"^(\d+\.\d+) \S", line))]
        assert numbers, row
        shown.append(numbers[0])
    assert matches(shown, expected), (rows, expected)
    assert viewer.proxy_errors == []
    return summary


def viewport_shot(page: Any, boxes: list[Box], path: Path) -> Shot:
    where = page.evaluate(BOXES_ON_CANVAS, [list(box) for box in boxes])
    page.screenshot(path=str(path), clip=where["rect"])
    return Shot(path, where)


def wait_for_red(page: Any, boxes: list[Box], path: Path) -> Shot:
    """The viewport once the segment is rendered: the labelmap is drawn a frame later."""
    deadline = time.monotonic() + WAIT_MS / 1000
    while True:
        shot = viewport_shot(page, boxes, path)
        if shot.seg_drawn() or time.monotonic() > deadline:
            return shot
        page.wait_for_timeout(250)  # the next frame; the loop ends on the state, not a sleep
