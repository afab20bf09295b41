"""One image through the three doors: C-STORE's pipeline, the upload API and ``mammoseg segment``.

All three call :func:`service.segmentation.segment_image`; this test requires
that they give the same lesions for the same DICOM mammogram, field for field,
and that the SR the pipeline writes holds those same numbers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import highdicom as hd
import pydicom
import pytest
from fastapi.testclient import TestClient
from pydicom.sr.codedict import codes

from service.app import create_app
from service.cli import main
from service.inference import load_segmenter
from service.node import pipeline_options
from service.pipeline import process_instance
from service.segmentation import lesion_view
from service.settings import load_settings
from service.testkit.synthetic import Mass, synthetic_mammogram, write
from tests.http_node import VIEWER, app_state, settings_for
from tests.tiny_model import write_tiny_model

MASSES = [
    Mass(row=120, col=130, radius=60),
    Mass(row=330, col=250, radius=50),
    Mass(row=500, col=110, radius=45),
]  # large enough to survive the tiny model's 64-pixel input and 9x9 blur


@pytest.fixture(scope="module")
def dicom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("doors")
    source = synthetic_mammogram(rows=600, columns=400, seed=11, masses=MASSES)
    return write(source, folder / "mg.dcm")


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("model") / "tiny.onnx", level=0.6)


def through_the_pipeline(dicom: Path, model: Path, tmp: Path) -> tuple[list[dict[str, Any]], Path]:
    settings = load_settings(None, model_path=model, data_dir=tmp, min_free_mb=0)
    segmenter = load_segmenter(model)
    results = process_instance(dicom, 1, segmenter, pipeline_options(settings, segmenter))
    sr = next(path for path in results.files if path.name == "sr.dcm")
    return [lesion_view(x) for x in results.segmentation.lesions], sr


def through_the_api(dicom: Path, model: Path, tmp: Path) -> list[dict[str, Any]]:
    client = TestClient(create_app(app_state(settings_for(tmp, model_path=model))))
    response = client.post(
        "/api/v1/segment",
        files={"file": ("mg.dcm", dicom.read_bytes(), "application/dicom")},
        headers={"Authorization": f"Bearer {VIEWER}"},
    )
    assert response.status_code == 200, response.text
    return list(response.json()["lesions"])


def through_the_cli(dicom: Path, model: Path, tmp: Path) -> list[dict[str, Any]]:
    out = tmp / "out"
    assert main(["segment", str(dicom), "--out", str(out), "--model-path", str(model)]) == 0
    return list(json.loads((out / "mg.json").read_text())["lesions"])


def test_the_three_doors_give_identical_lesions(dicom: Path, model: Path, tmp_path: Path) -> None:
    pipeline, sr_path = through_the_pipeline(dicom, model, tmp_path / "pipeline")
    api = through_the_api(dicom, model, tmp_path / "api")
    cli = through_the_cli(dicom, model, tmp_path / "cli")

    assert len(pipeline) == len(MASSES), pipeline  # the tiny model finds each bright mass
    assert all(lesion["diameter_mm"] and lesion["area_mm2"] for lesion in pipeline)
    assert api == pipeline
    assert cli == pipeline

    # The SR is a view of the same lesions: one "Mass n" group per lesion, same area.
    report = hd.sr.srread(str(sr_path))
    groups = report.content.get_planar_roi_measurement_groups()
    areas = {}
    for group in groups:
        found = group.get_measurements(name=codes.SCT.Area)
        if found:
            areas[str(group.tracking_identifier)] = found[0].value
    assert sorted(areas) == [f"Mass {x['number']}" for x in pipeline]
    for lesion in pipeline:
        assert float(areas[f"Mass {lesion['number']}"]) == pytest.approx(
            lesion["area_mm2"], abs=0.01
        )
    assert pydicom.dcmread(sr_path).Modality == "SR"
