"""``mammoseg segment DIR``: a directory is walked, its tree mirrored under --out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service.cli import main
from service.testkit.synthetic import Mass, synthetic_mammogram, write
from tests.tiny_model import write_tiny_model


def picture(path: Path) -> Path:
    pixels = np.zeros((120, 90), dtype=np.uint8)
    pixels[30:70, 20:60] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def test_directory_is_walked_and_its_tree_mirrored(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = write_tiny_model(tmp_path / "tiny.onnx", level=0.6)
    inputs = tmp_path / "in"
    picture(inputs / "left" / "photo.png")
    picture(inputs / ".cache" / "hidden.png")
    source = synthetic_mammogram(rows=301, columns=203, seed=5, masses=[Mass(150, 80, 30)])
    write(source, inputs / "IM0001")  # DICOM without a suffix, as PACS exports name them
    (inputs / "DICOMDIR").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 64)
    (inputs / "notes.txt").write_text("not an image")
    out = tmp_path / "out"

    code = main(["segment", str(inputs), "--out", str(out), "--model-path", str(model)])

    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert (out / "left" / "photo-mask.png").is_file()
    assert (out / "IM0001-mask.png").is_file()
    assert {p.name for p in (out).glob("IM0001-*.dcm")} == {
        "IM0001-seg.dcm",
        "IM0001-sc.dcm",
        "IM0001-sr.dcm",
    }
    written = {p.relative_to(out).as_posix() for p in out.rglob("*-mask.png")}
    assert written == {"left/photo-mask.png", "IM0001-mask.png"}
    assert "Is a directory" not in captured.err


def test_directory_without_images_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("nothing here")
    model = write_tiny_model(tmp_path / "tiny.onnx")
    code = main(["segment", str(empty), "--out", str(tmp_path / "out"), "--model-path", str(model)])
    assert code == 1
    assert "no PNG, JPEG, TIFF or DICOM file found" in capsys.readouterr().err
