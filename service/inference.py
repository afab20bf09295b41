"""ONNX Runtime inference behind the model contract (``service.contract``; docs/architecture.md)."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import hashlib
import logging
import os
import threading
from pathlib import Path

import numpy as np
import onnxruntime as ort

from service.contract import CONTRACT_KEY, ContractError, ModelContract
from service.imaging.preprocess import (
    Box,
    ModelProbability,
    output_to_probability,
    to_model_input,
)

log = logging.getLogger(__name__)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class Prediction:
    """The model's answer for one image, and how long preprocessing and inference took.

    ``probability_map`` is the model-resolution map and the source box it covers;
    ``probability`` is that map on the whole source matrix (float32), made on
    first use only: the node never asks for it (``find_lesions_in_map`` upsamples
    the lesions' boxes alone). A full-size array may be given instead of the map
    (tests, other models): it is then its own map.
    """

    def __init__(
        self,
        probability: ModelProbability | np.ndarray,
        seconds_preprocess: float,
        seconds_infer: float,
    ) -> None:
        if isinstance(probability, np.ndarray):
            shape = (int(probability.shape[0]), int(probability.shape[1]))
            probability = ModelProbability(
                np.asarray(probability, dtype=np.float32), Box(0, 0, *shape), shape
            )
        self.probability_map = probability
        self.seconds_preprocess = seconds_preprocess
        self.seconds_infer = seconds_infer

    @functools.cached_property
    def probability(self) -> np.ndarray:
        """float32 at the source matrix (a fresh array of its own)."""
        return self.probability_map.full()


#: glibc's ``mallopt`` parameter for the number of malloc arenas (malloc.h M_ARENA_MAX).
_M_ARENA_MAX = -8
#: Arenas per node process: glibc's default is 8 per core, and each thread that
#: allocates can keep its own arena's free pages (docs/performance.md, "Memory").
HEAP_ARENAS = 2


def limit_heap_arenas(arenas: int = HEAP_ARENAS) -> bool:
    """Cap glibc's malloc arenas for this process, unless ``MALLOC_ARENA_MAX`` chose already.

    Call it at a process's start, before its threads: the node's association, worker
    and sender threads otherwise each grow an arena of their own and keep its freed
    full-size buffers. Returns whether the cap was set (False: not glibc, or the
    environment variable decides).
    """
    if os.environ.get("MALLOC_ARENA_MAX"):
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    mallopt = getattr(ctypes.CDLL(name), "mallopt", None)
    return bool(mallopt is not None and mallopt(_M_ARENA_MAX, int(arenas)) == 1)


def trim_heap() -> None:
    """Give the C heap's free pages back to the system (glibc ``malloc_trim``; else nothing)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return
    trim = getattr(ctypes.CDLL(name), "malloc_trim", None)
    if trim is not None:
        trim(0)


class Segmenter:
    """A loaded model whose contract has been checked; thread-safe ``predict``.

    :meth:`unload` drops the ONNX Runtime session until the next ``predict``, which
    opens it again (the same file, checked by its hash): ``serve`` with worker
    processes segments only for the upload doors, so it keeps the contract and
    not the session's ~80 MB (issue 14, memory).
    """

    def __init__(
        self,
        session: ort.InferenceSession,
        contract: ModelContract,
        path: Path,
        sha256: str,
        *,
        threads: int = 0,
    ) -> None:
        self._session: ort.InferenceSession | None = session
        self._lock = threading.Lock()
        self.threads = threads
        self.contract = contract
        self.path = path
        self.sha256 = sha256

    @property
    def loaded(self) -> bool:
        return self._session is not None

    @property
    def session(self) -> ort.InferenceSession:
        """The session, opened again if :meth:`unload` dropped it."""
        with self._lock:
            if self._session is None:
                if not self.path.is_file() or file_sha256(self.path) != self.sha256:
                    raise ContractError(
                        f"model file {self.path} changed since start-up; restart the node"
                    )
                self._session = _open_session(self.path, self.threads)
                log.info("model session opened again (sha256 %s)", self.sha256[:12])
            return self._session

    def unload(self) -> None:
        """Drop the session (and trim the heap) until the next ``predict``."""
        with self._lock:
            self._session = None
        trim_heap()

    def predict(self, image: np.ndarray) -> Prediction:
        """Probability of "mass" for each pixel of a display-ready [0, 1] image.

        The map stays at model resolution (:class:`Prediction`); the source
        matrix is only described by its box and shape.
        """
        import time

        start = time.perf_counter()
        tensor, box = to_model_input(image, self.contract)
        mid = time.perf_counter()
        (output,) = self.session.run(
            [self.contract.output_name], {self.contract.input_name: tensor}
        )
        inferred = time.perf_counter()
        prob_map = ModelProbability(
            output_to_probability(output, self.contract), box, (image.shape[0], image.shape[1])
        )
        end = time.perf_counter()
        return Prediction(
            prob_map,
            seconds_preprocess=(mid - start) + (end - inferred),
            seconds_infer=inferred - mid,
        )


def read_contract(path: Path | str) -> ModelContract:
    """Read and validate the contract from an ONNX file without running it."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return contract_of(session, path)


def contract_of(session: ort.InferenceSession, path: Path | str) -> ModelContract:
    """The contract in an open session's metadata (:class:`ContractError` if it has none)."""
    meta = session.get_modelmeta().custom_metadata_map
    if CONTRACT_KEY not in meta:
        raise ContractError(
            f"model {path} has no '{CONTRACT_KEY}' metadata: export it with "
            "'mammoseg export' so the service knows how to feed it"
        )
    return ModelContract.from_json(meta[CONTRACT_KEY])


def _check_signature(session: ort.InferenceSession, contract: ModelContract, path: Path) -> None:
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name: o for o in session.get_outputs()}
    if contract.input_name not in inputs:
        raise ContractError(
            f"model {path}: contract input '{contract.input_name}' not among "
            f"the graph inputs {sorted(inputs)}"
        )
    if contract.output_name not in outputs:
        raise ContractError(
            f"model {path}: contract output '{contract.output_name}' not among "
            f"the graph outputs {sorted(outputs)}"
        )
    node = inputs[contract.input_name]
    if node.type != "tensor(float)":
        raise ContractError(f"model {path}: input '{node.name}' is {node.type}, expected float")
    if contract.input_layout == "NHWC":
        expected = [contract.input_height, contract.input_width, contract.input_channels]
    else:
        expected = [contract.input_channels, contract.input_height, contract.input_width]
    shape = list(node.shape)
    if len(shape) != 4 or any(
        isinstance(dim, int) and dim != want for dim, want in zip(shape[1:], expected, strict=True)
    ):
        raise ContractError(
            f"model {path}: input shape {shape} does not match the contract "
            f"({contract.input_layout} {expected})"
        )


def load_segmenter(path: Path, *, threads: int = 0) -> Segmenter:
    """Load an ONNX model and check it against its own contract; raise ContractError if not."""
    if not path.is_file():
        raise ContractError(f"model file {path} does not exist")
    try:
        session = _open_session(path, threads)
    except Exception as exc:  # onnxruntime raises its own untyped errors
        raise ContractError(f"model {path} cannot be loaded by ONNX Runtime: {exc}") from exc
    contract = contract_of(session, path)
    _check_signature(session, contract, path)
    # A dry run proves the graph produces the promised output shape.
    probe = np.zeros((64, 64), dtype=np.float32)
    tensor, _ = to_model_input(probe, contract)
    (output,) = session.run([contract.output_name], {contract.input_name: tensor})
    try:
        output_to_probability(output, contract)
    except ValueError as exc:
        raise ContractError(f"model {path}: {exc}") from exc
    sha = file_sha256(path)
    log.info(
        "model %s %s loaded (sha256 %s)", contract.model_name, contract.model_version, sha[:12]
    )
    return Segmenter(session, contract, path, sha, threads=threads)


def _open_session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
