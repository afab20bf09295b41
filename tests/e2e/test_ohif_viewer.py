"""A real viewer shows the node's results: OHIF 3.13 draws our SEG and lists our SR's lengths.

Orthanc (DICOMweb plugin) receives a synthetic mammogram with a bright mass by C-STORE
and routes it to ``mammoseg serve``, which sends SEG, SC and SR back into the same study.
Headless Chromium then opens OHIF's viewer on that study (:mod:`tests.e2e.ohif`: the
pinned ``@ohif/app`` dist, Orthanc behind a same-origin proxy) and the test reads the
viewer's own state, never a sleep:

- the SEG, put into the viewport as a double-click on its thumbnail does, becomes a
  segmentation with the segment "Mass", drawn over the MG: red pixels appear in the
  viewport (none before) around where the lesion's box lies on the canvas;
- the SR, put into the viewport, is hydrated (prompts are off in the config) into one
  Length measurement per lesion on the MG, its length the SR's long axis, and the
  measurement panel lists them (finding "Mass", the length, site "Breast").

Screenshots go to ``test-artifacts/ohif/`` (git-ignored); their path is printed.
"""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.sr.codedict import codes

from service.testkit.launch import start_node
from service.testkit.processes import stop_process
from service.testkit.synthetic import Mass, synthetic_mammogram, write
from tests.conftest import free_port
from tests.e2e.ohif import OHIF_VERSION, ROOT, ohif_dist, viewer_server
from tests.e2e.peers import need_dicomweb_plugin, orthanc, storescu, wait_until
from tests.tiny_model import write_tiny_model

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CHROMIUM = Path("/usr/bin/chromium")
#: WebGL (cornerstone renders with it) on the CPU: no GPU in CI.
CHROMIUM_ARGS = ["--use-angle=swiftshader", "--enable-unsafe-swiftshader"]
ARTIFACTS = ROOT / "test-artifacts" / "ohif"
SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"
#: Generous: swiftshader on a shared CPU; every wait ends as soon as its state is there.
WAIT_MS = 180_000

#: The onboarding tour would cover the viewport; mark it as shown before the app starts.
NO_TOUR = "localStorage.setItem('shownTours', JSON.stringify(['basicViewerTour']))"

DISPLAY_SETS = """() => {
  const s = window.services;
  if (!s || !s.displaySetService) return null;
  const sets = s.displaySetService.getActiveDisplaySets();
  const kinds = sets.map(d => d.Modality);
  return ['MG', 'SEG', 'SR'].every(m => kinds.includes(m))
    ? sets.map(d => ({modality: d.Modality, uid: d.displaySetInstanceUID})) : null;
}"""

SHOW_IN_VIEWPORT = """(uid) => {
  const grid = window.services.viewportGridService;
  const viewportId = grid.getState().activeViewportId;
  grid.setDisplaySetsForViewport({viewportId, displaySetInstanceUIDs: [uid]});
  return viewportId;
}"""

SEGMENTATIONS = """() => {
  const s = window.services;
  const found = s.segmentationService.getSegmentations().map(seg => ({
    label: seg.label,
    segments: Object.values(seg.segments).filter(Boolean).map(g => g.label),
  }));
  const viewportId = s.viewportGridService.getState().activeViewportId;
  const shown = s.segmentationService.getSegmentationRepresentations(viewportId)
    .filter(r => r.visible).length;
  return found.length && shown ? found : null;
}"""

#: Where the lesion's box lies on the viewport's canvas (CSS pixels), and the canvas box.
BOX_ON_CANVAS = """([left, top, right, bottom]) => {
  const s = window.services;
  const viewportId = s.viewportGridService.getState().activeViewportId;
  const viewport = s.cornerstoneViewportService.getCornerstoneViewport(viewportId);
  const imageId = viewport.getCurrentImageId();
  const toCanvas = (x, y) => viewport.worldToCanvas(
    window.cornerstone.utilities.imageToWorldCoords(imageId, [x, y]));
  const rect = viewport.canvas.getBoundingClientRect();
  return {
    a: toCanvas(left, top), b: toCanvas(right, bottom),
    rect: {x: rect.x, y: rect.y, width: rect.width, height: rect.height},
  };
}"""

MEASUREMENTS = """(count) => {
  const found = window.services.measurementService.getMeasurements().map(m => ({
    tool: m.toolName, sop: m.SOPInstanceUID, text: m.displayText,
    length: m.data ? Object.values(m.data).map(d => d && d.length).find(x => x) : null,
  }));
  return found.length >= count ? found : null;
}"""


#: The measurement panel's rows (text), once it lists ``count`` of them, each with a length.
PANEL_ROWS = """(count) => {
  const rows = Array.from(document.querySelectorAll('[data-cy^="measurement-table-row-"]'))
    .map(r => r.innerText);
  return rows.length >= count && rows.every(r => /\\d+\\.\\d+ /.test(r)) ? rows : null;
}"""


def need_browser() -> Any:
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} is not installed (Debian package chromium)")
    return pytest.importorskip("playwright.sync_api", reason="playwright (test extra) is missing")


def study_results(pacs: Any, study_uid: str, tmp: Path) -> dict[str, pydicom.Dataset]:
    """The study's SEG and SR, downloaded from Orthanc, by kind."""
    found = {}
    for item in pacs.study_instances(study_uid):
        ds = pydicom.dcmread(pacs.download(item["ID"], tmp / f"{item['ID']}.dcm"))
        kind = {SEG_CLASS: "seg", SR_CLASS: "sr"}.get(ds.SOPClassUID)
        if kind:
            found[kind] = ds
    return found


def long_axes(sr: pydicom.Dataset) -> list[float]:
    """The SR's long-axis lengths (mm), one per lesion, from its TID 1410 segment groups."""
    report = hd.sr.Comprehensive3DSR.from_dataset(sr)
    values = []
    for group in report.content.get_planar_roi_measurement_groups():
        found = group.get_measurements(name=codes.SCT.LongAxis)
        if found:
            values.append(float(found[0].value))
    return values


def red_pixels(path: Path) -> np.ndarray:
    """(row, column) of the screenshot's clearly red pixels (the SEG's colour)."""
    rgb = np.asarray(Image.open(path).convert("RGB")).astype(np.int16)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return np.argwhere((r > 120) & (r - g > 50) & (r - b > 50))


@pytest.fixture
def study_with_results(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Orthanc holding an MG and the node's SEG, SC and SR for it, in one study."""
    need_dicomweb_plugin()
    node_port = free_port()
    model = write_tiny_model(tmp_path / "tiny.onnx", level=0.6)
    source = synthetic_mammogram(
        rows=1024, columns=832, masses=[Mass(row=520, col=330, radius=90)], seed=5
    )
    path = write(source, tmp_path / "mg.dcm")
    with orthanc(
        tmp_path / "orthanc", node_aet="MAMMOSEG", node_port=node_port, dicomweb_servers={}
    ) as pacs:
        node = start_node(
            tmp_path / "node",
            dicom_port=node_port,
            args=[
                "--destination",
                f"ORTHANC@127.0.0.1:{pacs.dicom_port}",
                "--allowed-caller",
                "ORTHANC",
                "--model-path",
                str(model),
            ],
        )
        try:
            sent = storescu(pacs.dicom_port, [path], called="ORTHANC")
            assert sent.returncode == 0, sent.stderr
            results = wait_until(
                lambda: (lambda r: r if {"seg", "sr"} <= set(r) else None)(
                    study_results(pacs, source.StudyInstanceUID, tmp_path)
                ),
                timeout_s=240,
                what="the node's SEG and SR in Orthanc's study",
                interval_s=1.0,
            )
            yield pacs, source, results
        finally:
            code = stop_process(node.proc)
            assert code == 0, node.log_text()[-3000:]


def test_ohif_draws_the_seg_and_lists_the_sr_lengths(study_with_results, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    playwright = need_browser()
    pacs, source, results = study_with_results
    expected = long_axes(results["sr"])
    assert len(expected) == 1, "the tiny model finds the one bright mass"
    box = lesion_box(results["sr"])
    dist = ohif_dist()
    shots = tmp_path / "screenshots"
    shots.mkdir()
    console: list[str] = []
    started = time.monotonic()
    page = None
    with viewer_server(dist, pacs.url + "/dicom-web") as viewer, playwright.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.add_init_script(NO_TOUR)
            page.on("console", lambda m: console.append(f"{m.type}: {m.text[:300]}"))
            page.goto(f"{viewer.url}/viewer?StudyInstanceUIDs={source.StudyInstanceUID}")
            sets = page.wait_for_function(DISPLAY_SETS, timeout=WAIT_MS).json_value()
            uid = {item["modality"]: item["uid"] for item in sets}
            # The MG alone first: the hanging protocol puts it in the viewport
            page.wait_for_function(
                "() => { const s = window.services; const id ="
                " s.viewportGridService.getState().activeViewportId;"
                " const v = s.cornerstoneViewportService.getCornerstoneViewport(id);"
                " return !!(v && v.getCurrentImageId && v.getCurrentImageId()"
                " && v.getImageData && v.getImageData()); }",
                timeout=WAIT_MS,
            )
            before = viewport_shot(page, box, shots / "1-mg.png")

            page.evaluate(SHOW_IN_VIEWPORT, uid["SEG"])
            segmentations = page.wait_for_function(SEGMENTATIONS, timeout=WAIT_MS).json_value()
            after = wait_for_red(page, box, shots / "2-seg.png")
            seg_seconds = time.monotonic() - started

            page.evaluate(SHOW_IN_VIEWPORT, uid["SR"])
            measurements = page.wait_for_function(
                MEASUREMENTS, arg=len(expected), timeout=WAIT_MS
            ).json_value()
            hydrated = page.evaluate(
                "(uid) => window.services.displaySetService.getDisplaySetByUID(uid).isHydrated",
                uid["SR"],
            )
            page.screenshot(path=str(shots / "3-sr.png"))
            total = time.monotonic() - started
            page.click('[data-cy="trackedMeasurements-btn"]')  # the measurement panel
            rows = page.wait_for_function(PANEL_ROWS, arg=len(expected), timeout=WAIT_MS)
            rows = rows.json_value()
            page.screenshot(path=str(shots / "4-panel.png"))
        finally:
            if page is not None:
                page.screenshot(path=str(shots / "last.png"))
            browser.close()
            ARTIFACTS.parent.mkdir(exist_ok=True)
            shutil.copytree(shots, ARTIFACTS, dirs_exist_ok=True)
            print(f"\nOHIF screenshots: {ARTIFACTS}")
    errors = [line for line in console if line.startswith("error")]
    print(
        f"OHIF {OHIF_VERSION}: SEG drawn {seg_seconds:.1f} s, SR hydrated {total:.1f} s after"
        f" the page opened; segmentations {segmentations}; measurements {measurements};"
        f" panel rows {rows}; red pixels before/after the SEG {len(before.red)}/{len(after.red)};"
        f" console errors {len(errors)}; proxy errors {viewer.proxy_errors}"
    )

    # (a) the SEG: one segmentation, segment "Mass", drawn in red over the lesion
    assert [s["segments"] for s in segmentations] == [["Mass"]]
    assert len(before.red) == 0, "the MG alone is grey"
    assert len(after.red) > 0.3 * after.box_area, "the segment fills much of the lesion's box"
    row, col = after.red.mean(axis=0)
    assert after.top <= row <= after.bottom and after.left <= col <= after.right
    # (b) the SR: hydrated into one Length per lesion on the MG, of the SR's long axis
    assert hydrated is True
    lengths = [m for m in measurements if m["tool"] == "Length"]
    assert len(lengths) == len(expected), measurements
    for measurement, value in zip(lengths, sorted(expected, reverse=True), strict=True):
        assert measurement["sop"] == source.SOPInstanceUID
        # The viewer measures the line itself: within a pixel of the SR's value
        assert measurement["length"] == pytest.approx(value, abs=0.15)
    # ... and listed in the measurement panel: finding "Mass", its length, site "Breast".
    # The unit is cornerstone's reading of the MG's calibration, not of our objects: "mm",
    # or in some runs "px ERMF" (this synthetic MG has Pixel Spacing = Imager Pixel Spacing,
    # calibration GEOMETRY, which cornerstone warns about): the number is what is checked.
    assert len(rows) == len(expected)
    for row, value in zip(rows, sorted(expected, reverse=True), strict=True):
        lines = row.split("\n")
        assert "Mass" in lines and "Breast" in lines, row
        shown = [float(m[1]) for line in lines if (m := re.match(r"^(\d+\.\d+) \S", line))]
        assert shown and shown[0] == pytest.approx(value, abs=0.15), row
    assert viewer.proxy_errors == []


def lesion_box(sr: pydicom.Dataset) -> tuple[float, float, float, float]:
    """(left, top, right, bottom) pixel edges of the lesion's box, from the SR's SCOORD."""
    report = hd.sr.Comprehensive3DSR.from_dataset(sr)
    for group in report.content.get_planar_roi_measurement_groups():
        if group.roi is not None:
            corners = group.roi.value.reshape(-1, 2)
            (left, top), (right, bottom) = corners.min(axis=0), corners.max(axis=0)
            return float(left), float(top), float(right), float(bottom)
    raise AssertionError("the SR has no bounding box")


class Shot:
    """A viewport screenshot, its red pixels and the lesion's box on it (pixels)."""

    def __init__(self, path: Path, where: dict[str, Any]) -> None:
        self.red = red_pixels(path)
        (x0, y0), (x1, y1) = (where["a"][0], where["a"][1]), (where["b"][0], where["b"][1])
        self.left, self.right = sorted((x0, x1))
        self.top, self.bottom = sorted((y0, y1))
        self.box_area = (self.right - self.left) * (self.bottom - self.top)


def viewport_shot(page: Any, box: tuple[float, float, float, float], path: Path) -> Shot:
    where = page.evaluate(BOX_ON_CANVAS, list(box))
    rect = where["rect"]
    page.screenshot(path=str(path), clip=rect)
    return Shot(path, where)


def wait_for_red(page: Any, box: tuple[float, float, float, float], path: Path) -> Shot:
    """The viewport once the segment is rendered: the labelmap is drawn a frame later."""
    deadline = time.monotonic() + WAIT_MS / 1000
    while True:
        shot = viewport_shot(page, box, path)
        if len(shot.red) > 0.3 * shot.box_area or time.monotonic() > deadline:
            return shot
        page.wait_for_timeout(250)  # the next frame; the loop ends on the state, not a sleep
