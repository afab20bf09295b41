"""Export a trained Keras model to ONNX with its contract, check it, optionally quantise it.

The ONNX file carries the :class:`service.contract.ModelContract` as JSON in
its metadata (key :data:`service.contract.CONTRACT_KEY`), which the node
reads and checks at start-up. tf2onnx converts at opset 17 (Keras 3 models
are refused above 18). The batch dimension stays dynamic.

Before a file is kept, Keras and ONNX Runtime are compared on real images:
the largest absolute difference of the probability maps and the agreement of
the thresholded masks are printed, and the export fails above the tolerance.

Optional static INT8 (QDQ; unsigned 8-bit activations, signed 8-bit
weights), calibrated on training images, is kept only if its masks agree
with the float model's at Dice >= 0.98.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from service.contract import CONTRACT_KEY, ModelContract, ValidationMetrics
from service.imaging.lesions import mask_dice
from service.inference import read_contract

OPSET = 17
INPUT_NAME = "image"
OUTPUT_NAME = "mask"
BATCH_DIM = "batch"


class ExportError(RuntimeError):
    """The export failed a check (parity, contract, INT8 agreement)."""


@dataclass(frozen=True)
class ExportOptions:
    model_name: str = "MobileNetV2-ResUNet"
    model_version: str = "0.1.0"
    training_data: str = ""
    val_dice: float | None = None
    val_iou: float | None = None
    val_split: str = "validation"
    #: Further figures for the contract's validation_metrics (e.g. held-out Dice).
    extra_metrics: tuple[tuple[str, float], ...] = ()
    threshold: float = 0.5
    #: None: as the training run was configured (False for a bare ``.keras`` file).
    crop_to_breast: bool | None = None
    pad_to_square: bool | None = None
    parity_tolerance: float = 1e-4
    parity_images: int = 16
    int8_path: str | None = None
    calibration_images: int = 64
    int8_min_dice: float = 0.98
    int8_per_channel: bool = True
    #: "minmax", "percentile" (99.99th, the most faithful here) or "entropy".
    int8_calibration: str = "minmax"
    #: The first / last N convolutions stay fp32 (:func:`fp32_head`, :func:`fp32_tail`).
    int8_fp32_head: int = 0
    int8_fp32_tail: int = 0


@dataclass(frozen=True)
class ParityReport:
    max_abs_diff: float
    mask_agreement: float  # fraction of pixels whose thresholded label agrees
    mask_dice: float  # Dice between the two thresholded masks (1.0 if both empty)
    images: int

    def __str__(self) -> str:
        return (
            f"max |diff| {self.max_abs_diff:.2e}, mask agreement {self.mask_agreement:.6f}, "
            f"mask Dice {self.mask_dice:.4f} over {self.images} images"
        )


@dataclass(frozen=True)
class ExportReport:
    onnx_path: Path
    contract: ModelContract
    parity: ParityReport
    size_bytes: int
    int8_path: Path | None = None
    int8_dice: float | None = None
    int8_refused: bool = False
    int8_speedup: float | None = None


# --------------------------------------------------------------------------- loading


def load_keras_model(path: str | Path) -> tuple[Any, dict[str, Any]]:
    """A model from a ``.keras`` file or a training run folder, and what the run knows of it.

    From a run folder: ``final.keras`` if training finished, else the
    architecture from ``config.json`` with ``best.weights.h5`` (so a model can
    be exported while training still runs).
    """
    import keras

    path = Path(path)
    info: dict[str, Any] = {}
    if path.is_dir():
        config = (
            json.loads((path / "config.json").read_text())
            if (path / "config.json").is_file()
            else {}
        )
        state = (
            json.loads((path / "state.json").read_text()) if (path / "state.json").is_file() else {}
        )
        info = {"config": config, "state": state}
        if (path / "final.keras").is_file() and state.get("done"):
            return keras.models.load_model(path / "final.keras", compile=False), info
        if not config or not (path / "best.weights.h5").is_file():
            raise ExportError(f"{path} has neither final.keras nor config.json + best.weights.h5")
        from model_export.architectures import build_model

        size = int(config.get("input_size", 256))
        model = build_model(config["architecture"], (size, size, 3), encoder_weights=None)
        model.load_weights(str(path / "best.weights.h5"))
        return model, info
    if not path.is_file():
        raise ExportError(f"model not found: {path}")
    return keras.models.load_model(path, compile=False), info


# --------------------------------------------------------------------------- contract + conversion


def resolve_crop(requested: bool | None, info: dict[str, Any]) -> bool:
    """The contract's ``crop_to_breast``: what the run trained with, so serving matches training.

    A request that contradicts the run's ``config.json`` is refused: a model
    trained on whole images and served on crops (or the reverse) sees inputs
    at another scale than it learnt.
    """
    trained = info.get("config", {}).get("crop_to_breast")
    if trained is None:
        return bool(requested)
    if requested is not None and bool(requested) != bool(trained):
        raise ExportError(
            f"the run was trained with crop_to_breast={bool(trained)}; "
            f"exporting it with crop_to_breast={bool(requested)} would serve it other inputs"
        )
    return bool(trained)


def resolve_pad(requested: bool | None, info: dict[str, Any]) -> bool:
    """The contract's ``pad_to_square``: what the run trained with (a run from before it: no)."""
    config = info.get("config", {})
    if not config:
        return bool(requested)
    trained = bool(config.get("pad_to_square", False))
    if requested is not None and bool(requested) != trained:
        raise ExportError(
            f"the run was trained with pad_to_square={trained}; "
            f"exporting it with pad_to_square={bool(requested)} would serve it other inputs"
        )
    return trained


def framework_string() -> str:
    import keras
    import tensorflow as tf
    import tf2onnx

    return (
        f"keras {keras.__version__}, tensorflow {tf.__version__}, "
        f"tf2onnx {tf2onnx.__version__}, onnx opset {OPSET}"
    )


def make_contract(model: Any, options: ExportOptions) -> ModelContract:
    _, height, width, channels = model.input_shape
    if channels not in (1, 3):
        raise ExportError(f"the model takes {channels} channels; the contract allows 1 or 3")
    return ModelContract(
        model_name=options.model_name,
        model_version=options.model_version,
        input_name=INPUT_NAME,
        input_layout="NHWC",
        input_height=int(height),
        input_width=int(width),
        input_channels=3 if int(channels) == 3 else 1,
        normalisation="unit",
        crop_to_breast=bool(options.crop_to_breast),
        pad_to_square=bool(options.pad_to_square),
        output_name=OUTPUT_NAME,
        output_kind="sigmoid_probability",
        threshold=options.threshold,
        training_data=options.training_data,
        validation_metrics=ValidationMetrics(
            dice=options.val_dice,
            iou=options.val_iou,
            split=options.val_split,
            **dict(options.extra_metrics),
        ),
        framework=framework_string(),
    )


def set_contract(proto: Any, contract: ModelContract) -> None:
    """Write (or replace) the contract in an ONNX model's metadata."""
    for prop in list(proto.metadata_props):
        if prop.key == CONTRACT_KEY:
            proto.metadata_props.remove(prop)
    entry = proto.metadata_props.add()
    entry.key = CONTRACT_KEY
    entry.value = contract.to_json()


def _rename_value(graph: Any, old: str, new: str) -> None:
    if old == new:
        return
    for node in graph.node:
        node.input[:] = [new if name == old else name for name in node.input]
        node.output[:] = [new if name == old else name for name in node.output]
    for value in list(graph.input) + list(graph.output) + list(graph.value_info):
        if value.name == old:
            value.name = new


def convert_to_onnx(model: Any, contract: ModelContract) -> Any:
    """tf2onnx at opset 17, input ``image`` / output ``mask``, dynamic batch, contract set."""
    import onnx
    import tensorflow as tf
    import tf2onnx

    spec = (
        tf.TensorSpec(
            (None, contract.input_height, contract.input_width, contract.input_channels),
            tf.float32,
            name=contract.input_name,
        ),
    )
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=OPSET)
    graph = proto.graph
    if len(graph.input) != 1 or len(graph.output) != 1:
        raise ExportError("the model must have exactly one input and one output")
    _rename_value(graph, graph.input[0].name, contract.input_name)
    _rename_value(graph, graph.output[0].name, contract.output_name)
    for value in (graph.input[0], graph.output[0]):
        dim = value.type.tensor_type.shape.dim[0]
        dim.ClearField("dim_value")
        dim.dim_param = BATCH_DIM
    proto.producer_name = "mammoseg.model_export"
    proto.doc_string = f"{contract.model_name} {contract.model_version}: breast mass segmentation"
    set_contract(proto, contract)
    onnx.checker.check_model(proto)
    return proto


# --------------------------------------------------------------------------- checks


def _session(path: str | Path) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_onnx(path_or_session: Any, images: np.ndarray, batch_size: int = 8) -> np.ndarray:
    """Probabilities (N, H, W, 1) from an ONNX model for NHWC inputs."""
    session = path_or_session if hasattr(path_or_session, "run") else _session(path_or_session)
    name = session.get_inputs()[0].name
    outs = [
        session.run(None, {name: images[i : i + batch_size].astype(np.float32)})[0]
        for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(outs)


def parity_check(
    model: Any, onnx_path: str | Path, images: np.ndarray, threshold: float, tolerance: float
) -> ParityReport:
    """Compare Keras and ONNX Runtime outputs; raise :class:`ExportError` above ``tolerance``."""
    reference = np.asarray(model.predict(images, batch_size=8, verbose=0), dtype=np.float32)
    onnx_out = run_onnx(onnx_path, images)
    if reference.shape != onnx_out.shape:
        raise ExportError(f"ONNX output {onnx_out.shape} differs from Keras {reference.shape}")
    a, b = reference >= threshold, onnx_out >= threshold
    report = ParityReport(
        float(np.abs(reference - onnx_out).max()),
        float((a == b).mean()),
        mask_dice(a, b),
        len(images),
    )
    print(f"parity Keras vs ONNX Runtime: {report}", flush=True)
    if report.max_abs_diff > tolerance:
        raise ExportError(
            f"ONNX output differs from Keras by {report.max_abs_diff:.2e} "
            f"(tolerance {tolerance:.0e})"
        )
    return report


@contextlib.contextmanager
def _working_directory(path: Path) -> Iterator[None]:
    previous = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


def quantize_int8(
    fp32_path: str | Path,
    int8_path: str | Path,
    calibration: np.ndarray,
    contract: ModelContract,
    *,
    per_channel: bool = True,
    calibration_method: str = "minmax",
    exclude_nodes: Sequence[str] = (),
) -> Path:
    """Static INT8 QDQ (QUInt8 activations, QInt8 weights), calibrated on ``calibration``.

    ``exclude_nodes``: names of nodes that stay fp32 (:func:`fp32_tail` picks the last
    convolutions, the layers nearest the mask).

    ``quant_pre_process`` writes scratch files into the working directory, so
    it runs inside a temporary one.
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self.items = iter(
                [
                    {contract.input_name: calibration[i : i + 1].astype(np.float32)}
                    for i in range(len(calibration))
                ]
            )

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.items, None)

    methods = {
        "minmax": (CalibrationMethod.MinMax, {}),
        "percentile": (CalibrationMethod.Percentile, {"CalibPercentile": 99.99}),
        "entropy": (CalibrationMethod.Entropy, {}),
    }
    if calibration_method not in methods:
        raise ExportError(f"unknown calibration method {calibration_method!r}")
    method, extra = methods[calibration_method]
    fp32_path, int8_path = Path(fp32_path).resolve(), Path(int8_path).resolve()
    with tempfile.TemporaryDirectory(prefix="mammoseg-int8-") as tmp:
        tmp_dir = Path(tmp)
        with _working_directory(tmp_dir):
            pre = tmp_dir / "pre.onnx"
            quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
            out = tmp_dir / "int8.onnx"
            quantize_static(
                str(pre),
                str(out),
                Reader(),
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                per_channel=per_channel,
                calibrate_method=method,
                extra_options=extra,
                nodes_to_exclude=list(exclude_nodes),
            )
            proto = onnx.load(str(out))
    int8_contract = contract.model_copy(
        update={
            "framework": f"{contract.framework}; onnxruntime static INT8 QDQ (u8 act, s8 weights)"
        }
    )
    set_contract(proto, int8_contract)
    int8_path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(int8_path))
    return int8_path


def fp32_head(model_path: str | Path, convolutions: int) -> list[str]:
    """Names of the nodes up to and including the ``convolutions``-th Conv (graph order):
    the encoder's first layers, kept fp32 by ``--int8-fp32-head``. On model 0.4.0 these are
    what INT8 gets wrong (the model card: the first 12 keep the masks at 0.98)."""
    nodes, convs = _nodes_and_convolutions(model_path)
    if convolutions <= 0 or not convs:
        return []
    return [n.name for n in nodes[: convs[min(convolutions, len(convs)) - 1] + 1]]


def fp32_tail(model_path: str | Path, convolutions: int) -> list[str]:
    """Names of the last ``convolutions`` Conv nodes and every node after the first of them
    (in graph order): the decoder's end, kept fp32 by ``--int8-fp32-tail``."""
    nodes, convs = _nodes_and_convolutions(model_path)
    if convolutions <= 0 or not convs:
        return []
    return [n.name for n in nodes[convs[-min(convolutions, len(convs))] :]]


def _nodes_and_convolutions(model_path: str | Path) -> tuple[list[Any], list[int]]:
    """The graph's nodes in order, and the positions of its Conv nodes."""
    import onnx

    nodes = list(onnx.load(str(model_path)).graph.node)
    return nodes, [i for i, n in enumerate(nodes) if n.op_type == "Conv"]


def _time_per_image(session: Any, image: np.ndarray, repeats: int = 5) -> float:
    import time

    name = session.get_inputs()[0].name
    session.run(None, {name: image})
    start = time.perf_counter()
    for _ in range(repeats):
        session.run(None, {name: image})
    return (time.perf_counter() - start) / repeats


# --------------------------------------------------------------------------- images for checks


def check_images(
    data: str | Path | None, contract: ModelContract, count: int, *, seed: int = 0
) -> np.ndarray:
    """NHWC model inputs for parity and calibration: from ``data`` (training images) or,
    without it, the bundled ddsm66 training backgrounds."""
    from model_export.datasets import find_pairs, load_arrays, read_image

    rng = np.random.default_rng(seed)
    if data is not None:
        pairs = find_pairs(data, include_unmasked=True)
        split_file = Path(data) / "split.json"
        if split_file.is_file():
            train = set(json.loads(split_file.read_text())["train"])
            pairs = [p for p in pairs if p.key in train] or pairs
        chosen = [
            pairs[i] for i in sorted(rng.choice(len(pairs), min(count, len(pairs)), replace=False))
        ]
        gray = load_arrays(chosen, contract).images
    else:
        from model_export.bundled import BUNDLED_DDSM66
        from model_export.datasets import prepare_pair

        files = sorted((BUNDLED_DDSM66 / "train_valid" / "fgt_seg").glob("*.png"))
        files = [
            files[i] for i in sorted(rng.choice(len(files), min(count, len(files)), replace=False))
        ]
        gray = np.stack([prepare_pair(read_image(f), None, contract)[0] for f in files])
    return np.repeat(gray[..., None], contract.input_channels, axis=3).astype(np.float32)


# --------------------------------------------------------------------------- the command


def export_model(
    model_path: str | Path,
    out_path: str | Path,
    options: ExportOptions,
    *,
    data: str | Path | None = None,
) -> ExportReport:
    """Keras -> ONNX with contract and parity check, and optionally INT8 (see module docstring)."""
    import onnx

    model, info = load_keras_model(model_path)
    options = replace(
        options,
        crop_to_breast=resolve_crop(options.crop_to_breast, info),
        pad_to_square=resolve_pad(options.pad_to_square, info),
    )
    state = info.get("state", {})
    final_val = state.get("final_val") or {}
    if options.val_dice is None and (final_val or state.get("best_val_dice") is not None):
        best = state.get("best_val_dice")
        options = ExportOptions(
            **{
                **options.__dict__,
                "val_dice": final_val.get("dice", best),
                "val_iou": final_val.get("iou"),
            }
        )
    contract = make_contract(model, options)
    proto = convert_to_onnx(model, contract)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = out_path.with_name(out_path.name + ".partial")
    onnx.save(proto, str(tmp_path))
    try:
        images = check_images(data, contract, options.parity_images)
        parity = parity_check(model, tmp_path, images, contract.threshold, options.parity_tolerance)
        if read_contract(tmp_path) != contract:
            raise ExportError("the contract read back differs from the one written")
    except Exception:
        tmp_path.unlink(missing_ok=True)
        raise
    tmp_path.replace(out_path)
    size = out_path.stat().st_size
    print(
        f"wrote {out_path} ({size / 1e6:.1f} MB), opset {OPSET}, contract {CONTRACT_KEY}",
        flush=True,
    )
    report = ExportReport(out_path, contract, parity, size)
    if options.int8_path:
        report = _export_int8(out_path, report, options, data, contract)
    return report


def _export_int8(
    fp32_path: Path,
    report: ExportReport,
    options: ExportOptions,
    data: str | Path | None,
    contract: ModelContract,
) -> ExportReport:
    int8_path = Path(options.int8_path or "")
    calibration = check_images(data, contract, options.calibration_images, seed=1)
    partial = int8_path.with_name(int8_path.name + ".partial")
    quantize_int8(
        fp32_path,
        partial,
        calibration,
        contract,
        per_channel=options.int8_per_channel,
        calibration_method=options.int8_calibration,
        exclude_nodes=fp32_head(fp32_path, options.int8_fp32_head)
        + fp32_tail(fp32_path, options.int8_fp32_tail),
    )
    held = check_images(data, contract, max(options.parity_images, 32), seed=2)
    fp32_session, int8_session = _session(fp32_path), _session(partial)
    a = run_onnx(fp32_session, held) >= contract.threshold
    b = run_onnx(int8_session, held) >= contract.threshold
    dice = mask_dice(a, b)
    per_image = float(np.mean([mask_dice(x, y) for x, y in zip(a, b, strict=True)]))
    speedup = _time_per_image(fp32_session, held[:1]) / _time_per_image(int8_session, held[:1])
    print(
        f"INT8 vs fp32 masks: Dice {dice:.4f} (mean per image {per_image:.4f}) over "
        f"{len(held)} images; INT8 {speedup:.2f}x the speed of fp32",
        flush=True,
    )
    if dice < options.int8_min_dice:
        partial.unlink(missing_ok=True)
        print(f"INT8 model refused: Dice {dice:.4f} < {options.int8_min_dice}", flush=True)
        return ExportReport(
            **{**report.__dict__, "int8_dice": dice, "int8_refused": True, "int8_speedup": speedup}
        )
    partial.replace(int8_path)
    print(f"wrote {int8_path} ({int8_path.stat().st_size / 1e6:.1f} MB)", flush=True)
    return ExportReport(
        **{**report.__dict__, "int8_path": int8_path, "int8_dice": dice, "int8_speedup": speedup}
    )
