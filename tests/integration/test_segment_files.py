"""``mammoseg segment``: files in, masks, overlays, JSON and (for DICOM) SEG/SC/SR out."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image

from service.cli import main
from service.testkit.synthetic import Mass, synthetic_mammogram, write
from tests.dicom_validation import assert_valid_dicom
from tests.tiny_model import write_tiny_model


def test_png_and_dicom_inputs(tmp_path: Path) -> None:
    model = write_tiny_model(tmp_path / "tiny.onnx", level=0.6)
    source = synthetic_mammogram(
        rows=301, columns=203, seed=5, masses=[Mass(row=150, col=80, radius=30)]
    )
    dicom = write(source, tmp_path / "mg.dcm")
    png = tmp_path / "photo.png"
    picture = np.zeros((240, 180), dtype=np.uint8)
    picture[60:140, 40:120] = 255
    Image.fromarray(picture).save(png)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    out = tmp_path / "out"

    code = main(
        [
            "segment",
            str(dicom),
            str(png),
            str(broken),
            "--out",
            str(out),
            "--model-path",
            str(model),
            "--pixel-spacing-mm",
            "0.2",
        ]
    )

    assert code == 1  # one input could not be segmented, the others were
    mask = np.asarray(Image.open(out / "photo-mask.png"))
    assert mask.shape == (240, 180) and mask[100, 80] == 255 and mask[10, 10] == 0
    assert Image.open(out / "mg-overlay.png").mode == "RGB"
    summary = json.loads((out / "mg.json").read_text())
    assert summary["rows"] == 301 and summary["columns"] == 203
    assert len(summary["lesions"]) == 1
    assert set(summary["dicom_results"]) == {"seg", "sc", "sr"}
    for kind in ("seg", "sc", "sr"):
        path = out / f"mg-{kind}.dcm"
        assert pydicom.dcmread(path).StudyInstanceUID == source.StudyInstanceUID
        assert_valid_dicom(path)
    assert not (out / "broken-mask.png").exists()
