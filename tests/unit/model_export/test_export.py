"""Export round trip with a tiny model: ONNX written, contract readable, parity checked."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.train
pytest.importorskip("tensorflow")
pytest.importorskip("tf2onnx")

from model_export import export  # noqa: E402
from model_export.architectures import build_unet  # noqa: E402
from service.contract import CONTRACT_KEY, ModelContract  # noqa: E402


@pytest.fixture(scope="module")
def tiny_model() -> object:
    import keras

    keras.utils.set_random_seed(0)
    return build_unet((32, 32, 3), base_filters=4, depth=2)


@pytest.fixture
def tiny_keras_file(tiny_model: object, tmp_path: Path) -> Path:
    path = tmp_path / "tiny.keras"
    tiny_model.save(path)
    return path


OPTIONS = export.ExportOptions(
    model_name="Tiny",
    model_version="0.0.1",
    training_data="unit test",
    val_dice=0.5,
    val_iou=0.3,
    parity_images=4,
    extra_metrics=(("heldout_dice", 0.4),),
)


def test_round_trip_contract_and_parity(
    tiny_keras_file: Path, pair_tree: Path, tmp_path: Path
) -> None:
    import onnx

    out = tmp_path / "tiny.onnx"
    report = export.export_model(tiny_keras_file, out, OPTIONS, data=pair_tree)
    assert out.is_file() and not out.with_name(out.name + ".partial").exists()
    contract = export.read_contract(out)
    assert contract == report.contract
    assert (contract.input_name, contract.output_name) == ("image", "mask")
    assert (contract.input_height, contract.input_width, contract.input_channels) == (32, 32, 3)
    assert contract.validation_metrics.dice == 0.5
    assert contract.validation_metrics.model_extra == {"heldout_dice": 0.4}
    assert "tf2onnx" in contract.framework
    assert report.parity.max_abs_diff < 1e-4 and report.parity.images == 4
    proto = onnx.load(str(out))
    assert proto.opset_import[0].version == export.OPSET
    assert {p.key for p in proto.metadata_props} == {CONTRACT_KEY}
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == export.BATCH_DIM


def test_dynamic_batch_runs_in_onnxruntime(tiny_model: object, tmp_path: Path) -> None:
    proto = export.convert_to_onnx(tiny_model, export.make_contract(tiny_model, OPTIONS))
    import onnx

    path = tmp_path / "t.onnx"
    onnx.save(proto, str(path))
    images = np.random.default_rng(0).uniform(size=(3, 32, 32, 3)).astype(np.float32)
    out = export.run_onnx(path, images, batch_size=3)
    assert out.shape == (3, 32, 32, 1)
    np.testing.assert_allclose(out, np.asarray(tiny_model(images)), atol=1e-4)


def test_parity_failure_removes_the_file(
    tiny_keras_file: Path, pair_tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def skewed(path: object, images: np.ndarray, batch_size: int = 8) -> np.ndarray:
        return np.full((len(images), 32, 32, 1), 0.99, np.float32)

    monkeypatch.setattr(export, "run_onnx", skewed)
    out = tmp_path / "bad.onnx"
    with pytest.raises(export.ExportError, match="differs from Keras"):
        export.export_model(tiny_keras_file, out, OPTIONS, data=pair_tree)
    assert not out.exists() and not out.with_name(out.name + ".partial").exists()


def test_int8_keeps_the_contract(tiny_model: object, tmp_path: Path) -> None:
    import onnx

    contract = export.make_contract(tiny_model, OPTIONS)
    fp32 = tmp_path / "fp32.onnx"
    onnx.save(export.convert_to_onnx(tiny_model, contract), str(fp32))
    calibration = np.random.default_rng(1).uniform(size=(4, 32, 32, 3)).astype(np.float32)
    int8 = export.quantize_int8(fp32, tmp_path / "int8.onnx", calibration, contract)
    stored = export.read_contract(int8)
    assert isinstance(stored, ModelContract) and "INT8" in stored.framework
    ops = {node.op_type for node in onnx.load(str(int8)).graph.node}
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    assert export.run_onnx(int8, calibration).shape == (4, 32, 32, 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fp32.onnx", "int8.onnx"]


def test_an_fp32_tail_keeps_the_last_convolutions_unquantized(
    tiny_model: object, tmp_path: Path
) -> None:
    import onnx

    contract = export.make_contract(tiny_model, OPTIONS)
    fp32 = tmp_path / "fp32.onnx"
    onnx.save(export.convert_to_onnx(tiny_model, contract), str(fp32))
    nodes = list(onnx.load(str(fp32)).graph.node)
    convs = [n.name for n in nodes if n.op_type == "Conv"]
    tail = export.fp32_tail(fp32, 2)
    assert tail[0] == convs[-2] and tail[-1] == nodes[-1].name
    assert export.fp32_tail(fp32, 0) == [] and export.fp32_tail(fp32, 999)[0] == convs[0]
    head = export.fp32_head(fp32, 1)
    assert head[-1] == convs[0] and head[0] == nodes[0].name
    assert export.fp32_head(fp32, 999)[-1] == convs[-1]
    calibration = np.random.default_rng(1).uniform(size=(4, 32, 32, 3)).astype(np.float32)
    int8 = export.quantize_int8(
        fp32, tmp_path / "int8.onnx", calibration, contract, exclude_nodes=tail
    )
    quantized = onnx.load(str(int8)).graph
    # The kept convolutions read fp32 weights: no DequantizeLinear feeds their weights.
    dequantized = {n.output[0] for n in quantized.node if n.op_type == "DequantizeLinear"}
    kept = [n for n in quantized.node if n.op_type == "Conv" and n.name in tail]
    assert len(kept) == 2
    assert all(n.input[1] not in dequantized for n in kept)
    first = next(n for n in quantized.node if n.op_type == "Conv" and n.name == convs[0])
    assert first.input[1] in dequantized


def test_int8_below_the_dice_floor_is_refused(
    tiny_keras_file: Path, pair_tree: Path, tmp_path: Path
) -> None:
    options = export.ExportOptions(
        **{
            **OPTIONS.__dict__,
            "int8_path": str(tmp_path / "q.onnx"),
            "calibration_images": 4,
            "int8_min_dice": 1.01,
        }
    )
    report = export.export_model(tiny_keras_file, tmp_path / "f.onnx", options, data=pair_tree)
    assert report.int8_refused and report.int8_dice is not None
    assert not (tmp_path / "q.onnx").exists()


def test_unknown_calibration_method_is_refused(tiny_model: object, tmp_path: Path) -> None:
    import onnx

    contract = export.make_contract(tiny_model, OPTIONS)
    fp32 = tmp_path / "fp32.onnx"
    onnx.save(export.convert_to_onnx(tiny_model, contract), str(fp32))
    calibration = np.zeros((1, 32, 32, 3), np.float32)
    with pytest.raises(export.ExportError, match="calibration method"):
        export.quantize_int8(
            fp32, tmp_path / "q.onnx", calibration, contract, calibration_method="guess"
        )


@pytest.mark.parametrize(
    ("requested", "config", "expected"),
    [
        (None, {}, False),
        (True, {}, True),
        (None, {"crop_to_breast": True}, True),
        (None, {"crop_to_breast": False}, False),
        (True, {"crop_to_breast": True}, True),
    ],
)
def test_crop_follows_the_training_run(
    requested: bool | None, config: dict[str, bool], expected: bool
) -> None:
    assert export.resolve_crop(requested, {"config": config}) is expected


@pytest.mark.parametrize(("requested", "trained"), [(True, False), (False, True)])
def test_crop_that_contradicts_the_run_is_refused(requested: bool, trained: bool) -> None:
    with pytest.raises(export.ExportError, match="trained with crop_to_breast"):
        export.resolve_crop(requested, {"config": {"crop_to_breast": trained}})


@pytest.fixture
def crop_run(tmp_path: Path) -> Path:
    """A training run folder whose config says it trained on crops to the breast."""
    import json

    from model_export.architectures import build_model

    run = tmp_path / "run"
    run.mkdir()
    build_model("unet", (32, 32, 3), encoder_weights=None).save_weights(
        str(run / "best.weights.h5")
    )
    (run / "config.json").write_text(
        json.dumps({"architecture": "unet", "input_size": 32, "crop_to_breast": True})
    )
    return run


def test_run_trained_with_crop_exports_a_cropping_contract(
    crop_run: Path, pair_tree: Path, tmp_path: Path
) -> None:
    report = export.export_model(crop_run, tmp_path / "crop.onnx", OPTIONS, data=pair_tree)
    assert report.contract.crop_to_breast is True
    assert export.read_contract(tmp_path / "crop.onnx").crop_to_breast is True


def test_evaluating_a_run_folder_uses_its_preprocessing(crop_run: Path) -> None:
    from model_export.evaluate import _Predictor

    predictor = _Predictor(str(crop_run), input_size=256)
    assert predictor.contract.crop_to_breast is True
    assert (predictor.contract.input_height, predictor.contract.input_width) == (32, 32)
