"""Helpers that draw small test images (shared by the model_export tests)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service.contract import CONTRACT_KEY, ModelContract


def disc(shape: tuple[int, int], center: tuple[int, int], radius: float) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - center[0]) ** 2 + (xx - center[1]) ** 2 <= radius**2


def save_png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def brightness_model(path: Path, size: int = 32) -> Path:
    """An ONNX 'segmenter' that answers sigmoid(40 * (x - 0.5)) of channel 0."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("Slice", ["image", "starts", "ends", "axes"], ["gray"]),
        helper.make_node("Sub", ["gray", "half"], ["centred"]),
        helper.make_node("Mul", ["centred", "gain"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["mask"]),
    ]
    inits = [
        helper.make_tensor("starts", TensorProto.INT64, [1], [0]),
        helper.make_tensor("ends", TensorProto.INT64, [1], [1]),
        helper.make_tensor("axes", TensorProto.INT64, [1], [3]),
        helper.make_tensor("half", TensorProto.FLOAT, [], [0.5]),
        helper.make_tensor("gain", TensorProto.FLOAT, [], [40.0]),
    ]
    graph = helper.make_graph(
        nodes,
        "brightness",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", size, size, 3])],
        [helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["batch", size, size, 1])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    contract = ModelContract(
        model_name="Bright",
        model_version="1",
        input_name="image",
        output_name="mask",
        input_height=size,
        input_width=size,
    )
    entry = model.metadata_props.add()
    entry.key, entry.value = CONTRACT_KEY, contract.to_json()
    onnx.save(model, str(path))
    return path
