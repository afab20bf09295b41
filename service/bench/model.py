"""The model part of ``mammoseg bench``: latency against the FLOP bound, Keras, INT8.

- **FLOPs** are counted from the ONNX graph: multiply-accumulates of Conv,
  ConvTranspose, MatMul and Gemm with shapes from ``onnx.shape_inference``
  (batch fixed at 1), FLOPs = 2 x MACs. Needs the ``onnx`` package (test or
  train extra); without it the bound is skipped, saying so.
- **The bound** is those FLOPs divided by the machine's fp32 matmul rate,
  measured in the same run with the same thread count: numpy (its BLAS, in a
  child process so the thread count can be set) and ONNX Runtime's own MatMul
  (MLAS); the faster of the two is the machine's rate. On CPUs with AVX-512,
  numpy's bundled OpenBLAS may pick an AVX2 kernel: both rates are printed.
- **Keras** runs in a child process (the node and this package never import
  TensorFlow; a test checks it), as a ``tf.function`` of the Keras model rebuilt by
  ``model_export`` from a training run's weights, on the same inputs; the
  largest difference of its probabilities from ONNX Runtime's says whether
  the weights really are the same.
- **INT8** is compared on the same inputs: latency and the Dice of the
  thresholded masks against fp32.

Times are best-of-N (the least disturbed run on a shared machine) with the
median alongside; the figures that matter are ratios taken in one run.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from service.contract import ModelContract

#: Ops whose multiply-accumulates are counted (everything else is memory-bound noise).
COUNTED_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")
MATMUL_SIZE = 2048


class FlopCountError(RuntimeError):
    """The graph's shapes could not be inferred well enough to count its FLOPs."""


@dataclass(frozen=True)
class Latency:
    """Seconds per image of one configuration: best of N and median of N."""

    best_s: float
    median_s: float
    runs: int


def measure(call: Callable[[], object], *, repeats: int, per: int = 1, warmup: int = 2) -> Latency:
    """Time ``call`` ``repeats`` times after ``warmup`` calls; seconds per item (``per``)."""
    if repeats < 1 or per < 1:
        raise ValueError(f"repeats and per must be >= 1, got {repeats}, {per}")
    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) / per)
    return Latency(best_s=min(times), median_s=statistics.median(times), runs=repeats)


def measure_interleaved(
    calls: dict[str, tuple[Callable[[], object], int]],
    *,
    rounds: int,
    repeats: int,
    warmup: int = 2,
) -> dict[str, Latency]:
    """Time several ``(call, items per call)`` in turn, ``repeats`` each per round.

    Alternating configurations round by round spreads a shared machine's
    disturbances over all of them, so their ratios stay fair.
    """
    if rounds < 1 or repeats < 1:
        raise ValueError(f"rounds and repeats must be >= 1, got {rounds}, {repeats}")
    times: dict[str, list[float]] = {name: [] for name in calls}
    for call, _ in calls.values():
        for _ in range(warmup):
            call()
    for _ in range(rounds):
        for name, (call, per) in calls.items():
            for _ in range(repeats):
                start = time.perf_counter()
                call()
                times[name].append((time.perf_counter() - start) / per)
    return {
        name: Latency(best_s=min(t), median_s=statistics.median(t), runs=len(t))
        for name, t in times.items()
    }


# --------------------------------------------------------------------------- FLOPs


def _static_shape(value: Any) -> list[int] | None:
    dims = value.type.tensor_type.shape.dim
    if not value.type.tensor_type.HasField("shape"):
        return None
    shape = [int(d.dim_value) if d.HasField("dim_value") else -1 for d in dims]
    return None if any(d < 0 for d in shape) else shape


def count_macs(model: Any) -> dict[str, int]:
    """Multiply-accumulates per counted op type for a batch of 1 (an ``onnx.ModelProto``).

    Symbolic dimensions of the graph inputs are fixed at 1 before shape
    inference. Raises :class:`FlopCountError` when a counted node's shapes
    stay unknown.
    """
    import onnx
    from onnx import shape_inference

    model = onnx.ModelProto.FromString(model.SerializeToString())  # never touch the caller's
    for value in model.graph.input:
        for dim in value.type.tensor_type.shape.dim:
            if not dim.HasField("dim_value"):
                dim.ClearField("dim_param")
                dim.dim_value = 1
    inferred = shape_inference.infer_shapes(model)
    graph = inferred.graph
    shapes: dict[str, list[int] | None] = {}
    for value in [*graph.value_info, *graph.input, *graph.output]:
        shapes[value.name] = _static_shape(value)
    for init in graph.initializer:
        shapes[init.name] = [int(d) for d in init.dims]

    def shape_of(node: Any, name: str) -> list[int]:
        shape = shapes.get(name)
        if shape is None:
            raise FlopCountError(f"shape of '{name}' ({node.op_type} {node.name}) is unknown")
        return shape

    macs = dict.fromkeys(COUNTED_OPS, 0)
    for node in graph.node:
        if node.op_type not in COUNTED_OPS:
            continue
        if node.op_type == "Conv":
            # out [N, Cout, *spatial] x weights [Cout, Cin/group, *kernel]
            out = shape_of(node, node.output[0])
            weights = shape_of(node, node.input[1])
            count = int(np.prod(out)) * int(np.prod(weights[1:]))
        elif node.op_type == "ConvTranspose":
            # every input element meets [Cout/group, *kernel] weights
            x = shape_of(node, node.input[0])
            weights = shape_of(node, node.input[1])
            count = int(np.prod(x)) * int(np.prod(weights[1:]))
        elif node.op_type == "MatMul":
            a = shape_of(node, node.input[0])
            out = shape_of(node, node.output[0])
            count = int(np.prod(out)) * a[-1]
        else:  # Gemm: out [M, N], inner dimension from A (transposed or not)
            a = shape_of(node, node.input[0])
            out = shape_of(node, node.output[0])
            trans_a = any(att.name == "transA" and att.i for att in node.attribute)
            count = int(np.prod(out)) * (a[0] if trans_a else a[-1])
        macs[node.op_type] += count
    return macs


def model_gflops(path: Path) -> float:
    """GFLOPs of one image (2 x MACs of the counted ops); needs the ``onnx`` package."""
    import onnx

    return 2.0 * sum(count_macs(onnx.load(str(path))).values()) / 1e9


# --------------------------------------------------------------------------- matmul rates

_NUMPY_MATMUL_CODE = """
import sys, time
import numpy as np
size, repeats = int(sys.argv[1]), int(sys.argv[2])
rng = np.random.default_rng(0)
a = rng.random((size, size), dtype=np.float32)
b = rng.random((size, size), dtype=np.float32)
a @ b
best = float("inf")
for _ in range(repeats):
    start = time.perf_counter()
    a @ b
    best = min(best, time.perf_counter() - start)
print(2.0 * size**3 / best / 1e9)
"""


def numpy_matmul_gflops(threads: int, *, size: int = MATMUL_SIZE, repeats: int = 8) -> float:
    """fp32 GFLOP/s of numpy's ``a @ b`` (size x size), best of ``repeats``, on ``threads``.

    Runs in a child process: BLAS libraries read their thread count once, at load.
    """
    env = {
        **os.environ,
        "OPENBLAS_NUM_THREADS": str(threads),
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
    }
    out = subprocess.run(
        [sys.executable, "-c", _NUMPY_MATMUL_CODE, str(size), str(repeats)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=True,
    )
    return float(out.stdout.strip().splitlines()[-1])


def session_options(threads: int) -> ort.SessionOptions:
    """What the node uses (service.inference.load_segmenter), with an explicit thread count."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return options


def ort_matmul_gflops(threads: int, *, size: int = MATMUL_SIZE, repeats: int = 8) -> float:
    """fp32 GFLOP/s of ONNX Runtime's MatMul (MLAS) on ``threads``; needs ``onnx``."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = rng.random((size, size), dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])],
        "matmul",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [size, size])],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [size, size])],
        [numpy_helper.from_array(weights, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    session = ort.InferenceSession(
        model.SerializeToString(), session_options(threads), providers=["CPUExecutionProvider"]
    )
    a = rng.random((size, size), dtype=np.float32)
    latency = measure(lambda: session.run(None, {"a": a}), repeats=repeats)
    return 2.0 * size**3 / latency.best_s / 1e9


# --------------------------------------------------------------------------- ONNX Runtime


def load_session(path: Path, threads: int) -> ort.InferenceSession:
    return ort.InferenceSession(
        str(path), session_options(threads), providers=["CPUExecutionProvider"]
    )


def model_inputs(contract: ModelContract, count: int, *, seed: int = 0) -> np.ndarray:
    """``count`` model inputs made like the node makes them, from synthetic mammograms.

    Synthetic images (:mod:`service.testkit.synthetic`, one or two masses each)
    at a quarter of the full matrix go through the same resize as in the node
    (service.imaging.preprocess.to_model_input).
    """
    from service.imaging.preprocess import to_model_input
    from service.testkit.synthetic import density_map, random_masses

    rows, columns = 1024, 832
    tensors = []
    for i in range(count):
        side, image_seed = "LR"[i % 2], seed + i
        masses = random_masses(rows, columns, side, seed=image_seed)
        density = density_map(rows, columns, laterality=side, masses=masses, seed=image_seed)
        tensors.append(to_model_input(density, contract)[0])
    return np.concatenate(tensors).astype(np.float32)


def ort_call(
    session: ort.InferenceSession, inputs: np.ndarray, *, batch: int
) -> tuple[Callable[[], object], int]:
    """One ``session.run`` on the first ``batch`` inputs, for :func:`measure_interleaved`."""
    name = session.get_inputs()[0].name
    feed = {name: np.ascontiguousarray(inputs[:batch])}
    if feed[name].shape[0] != batch:
        raise ValueError(f"need {batch} inputs, got {feed[name].shape[0]}")
    return (lambda: session.run(None, feed)), batch


def predict(session: ort.InferenceSession, inputs: np.ndarray) -> np.ndarray:
    """Probabilities for every input, one image at a time."""
    name = session.get_inputs()[0].name
    return np.concatenate(
        [session.run(None, {name: inputs[i : i + 1]})[0] for i in range(len(inputs))]
    )


# --------------------------------------------------------------------------- Keras (child)

# Runs in a child process: the node's package never imports TensorFlow.
_KERAS_MODULE = "model_export.keras_timing"


@dataclass(frozen=True)
class KerasResult:
    latency: dict[int, Latency]
    probabilities: np.ndarray
    tensorflow: str


class KerasSkipped(RuntimeError):
    """The Keras comparison cannot run here (the message says why)."""


def tensorflow_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("tensorflow") is not None


def keras_latency(
    weights: Path,
    inputs: np.ndarray,
    *,
    threads: int,
    batches: Sequence[int],
    repeats: int,
    timeout_s: float = 900,
) -> KerasResult:
    """Time a ``tf.function`` of the Keras model in a child process; see the module docstring."""
    if not tensorflow_available():
        raise KerasSkipped("skipped: TensorFlow is not installed (pip install 'mammoseg[train]')")
    if not weights.exists():
        raise KerasSkipped(f"skipped: no Keras weights at {weights} (pass --keras-weights)")
    with tempfile.TemporaryDirectory(prefix="mammoseg-bench-keras-") as tmp:
        in_path, out_path = Path(tmp) / "inputs.npy", Path(tmp) / "outputs.npy"
        np.save(in_path, inputs)
        request = {
            "weights": str(weights),
            "inputs": str(in_path),
            "outputs": str(out_path),
            "threads": threads,
            "batches": list(batches),
            "repeats": repeats,
        }
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
        proc = subprocess.run(
            [sys.executable, "-m", _KERAS_MODULE, json.dumps(request)],
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout_s,
            check=False,
        )
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH-RESULT ")]
        if proc.returncode != 0 or not lines:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            raise KerasSkipped(f"skipped: the Keras child failed: {tail[0][:200]}")
        raw = json.loads(lines[-1].removeprefix("BENCH-RESULT "))
        probabilities = np.load(out_path)
    latency = {int(b): Latency(*raw[str(b)]) for b in batches}
    return KerasResult(latency=latency, probabilities=probabilities, tensorflow=raw["tensorflow"])
