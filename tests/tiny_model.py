"""A tiny ONNX model that honours the contract, built without TensorFlow.

It "segments" bright blobs: a 9x9 box blur of the first channel, then a
sigmoid around a fixed level. Deterministic, a few KB, loads in milliseconds;
the integration and e2e tests use it so they do not depend on training.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from service.contract import CONTRACT_KEY, ModelContract

TINY_CONTRACT = ModelContract(
    model_name="TinyBlobModel",
    model_version="0.0.1",
    input_name="image",
    input_height=64,
    input_width=64,
    output_name="mask",
    threshold=0.5,
    training_data="none: a fixed blur-and-threshold graph for tests",
    framework="onnx.helper",
)


def write_tiny_model(
    path: Path,
    *,
    level: float = 0.8,
    contract: ModelContract = TINY_CONTRACT,
    with_contract: bool = True,
) -> Path:
    h, w = contract.input_height, contract.input_width
    kernel = np.full((1, 1, 9, 9), 1.0 / 81.0, dtype=np.float32)
    nodes = [
        helper.make_node("Transpose", ["image"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Slice", ["nchw", "starts", "ends", "axes"], ["gray"]),
        helper.make_node("Conv", ["gray", "kernel"], ["blur"], pads=[4, 4, 4, 4]),
        helper.make_node("Sub", ["blur", "level"], ["centred"]),
        helper.make_node("Mul", ["centred", "gain"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["prob"]),
        helper.make_node("Transpose", ["prob"], [contract.output_name], perm=[0, 2, 3, 1]),
    ]
    inits = [
        numpy_helper.from_array(kernel, "kernel"),
        numpy_helper.from_array(np.array([0], dtype=np.int64), "starts"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "ends"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axes"),
        numpy_helper.from_array(np.array(level, dtype=np.float32), "level"),
        numpy_helper.from_array(np.array(40.0, dtype=np.float32), "gain"),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info(contract.input_name, TensorProto.FLOAT, ["N", h, w, 3])],
        [helper.make_tensor_value_info(contract.output_name, TensorProto.FLOAT, ["N", h, w, 1])],
        inits,
    )
    # rename the graph input if the contract uses another name
    nodes[0].input[0] = contract.input_name
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if with_contract:
        helper.set_model_props(model, {CONTRACT_KEY: contract.to_json()})
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path
