import ctypes.util
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from service.contract import ContractError, ModelContract
from service.inference import load_segmenter, read_contract
from tests.tiny_model import TINY_CONTRACT, write_tiny_model


def test_loads_and_segments_a_bright_blob(tiny_model: Path) -> None:
    segmenter = load_segmenter(tiny_model)
    assert segmenter.contract == TINY_CONTRACT
    assert len(segmenter.sha256) == 64
    image = np.full((300, 240), 0.3, dtype=np.float32)
    image[100:200, 80:180] = 1.0
    prob = segmenter.predict(image).probability
    assert prob.shape == (300, 240)
    assert prob[150, 130] > 0.9 and prob[20, 20] < 0.1


def test_model_without_contract_is_refused(tmp_path: Path) -> None:
    path = write_tiny_model(tmp_path / "bare.onnx", with_contract=False)
    with pytest.raises(ContractError, match="no 'mammoseg.contract' metadata"):
        load_segmenter(path)


def test_contract_that_does_not_match_the_graph_is_refused(tmp_path: Path) -> None:
    path = write_tiny_model(tmp_path / "m.onnx")
    # Same graph, but a contract claiming another output name.
    import onnx
    from onnx import helper

    model = onnx.load(str(path))
    lying = TINY_CONTRACT.model_copy(update={"output_name": "probability"})
    del model.metadata_props[:]
    helper.set_model_props(model, {"mammoseg.contract": lying.to_json()})
    onnx.save(model, str(path))
    assert read_contract(path).output_name == "probability"
    with pytest.raises(ContractError, match="contract output 'probability'"):
        load_segmenter(path)


def test_input_size_mismatch_is_refused(tmp_path: Path) -> None:
    graph_contract = TINY_CONTRACT
    path = write_tiny_model(tmp_path / "m.onnx", contract=graph_contract)
    import onnx
    from onnx import helper

    model = onnx.load(str(path))
    del model.metadata_props[:]
    wrong = ModelContract(**{**graph_contract.model_dump(), "input_height": 128})
    helper.set_model_props(model, {"mammoseg.contract": wrong.to_json()})
    onnx.save(model, str(path))
    with pytest.raises(ContractError, match="input shape"):
        load_segmenter(path)


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ContractError, match="does not exist"):
        load_segmenter(tmp_path / "nope.onnx")


def test_an_unloaded_session_opens_again_for_the_same_file_only(tmp_path: Path) -> None:
    model = write_tiny_model(tmp_path / "tiny.onnx")
    segmenter = load_segmenter(model)
    image = np.zeros((128, 128), dtype=np.float32)
    image[40:80, 40:80] = 1.0
    before = segmenter.predict(image).probability
    segmenter.unload()
    assert not segmenter.loaded
    again = segmenter.predict(image).probability
    assert segmenter.loaded
    np.testing.assert_array_equal(before, again)
    # Another file under the same name is not opened in its place.
    segmenter.unload()
    write_tiny_model(model, level=0.9)
    with pytest.raises(ContractError, match="changed since start-up"):
        segmenter.predict(image)


_ARENA_PROBE = """
import ctypes, ctypes.util, sys, threading
from service.inference import limit_heap_arenas
capped = limit_heap_arenas(1) if sys.argv[1] == "cap" else None
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype = ctypes.c_void_p
libc.fopen.restype = ctypes.c_void_p
libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
libc.fclose.argtypes = [ctypes.c_void_p]
barrier = threading.Barrier(4)
def grow():
    barrier.wait()  # all four allocate at once, so each would take an arena of its own
    for _ in range(200):
        libc.malloc(4096)
    barrier.wait()
threads = [threading.Thread(target=grow) for _ in range(4)]
for t in threads: t.start()
for t in threads: t.join()
fp = libc.fopen(sys.argv[2].encode(), b"w")
libc.malloc_info(0, fp)
libc.fclose(fp)
print(capped)
"""


@pytest.mark.skipif(
    not ctypes.util.find_library("c") or platform.libc_ver()[0] != "glibc", reason="glibc only"
)
def test_the_heap_arena_cap_holds_threads_to_the_arenas_it_allows(tmp_path: Path) -> None:
    def arenas(mode: str, env: dict[str, str]) -> tuple[int, str]:
        report = tmp_path / f"{mode}.xml"
        out = subprocess.run(
            [sys.executable, "-c", _ARENA_PROBE, mode, str(report)],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return report.read_text().count("<heap nr="), out

    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    free, _ = arenas("free", env)
    capped, said = arenas("cap", env)
    assert said == "True"
    assert capped == 1 < free
    # An administrator's MALLOC_ARENA_MAX wins: the call leaves it alone.
    _, said = arenas("cap", {**env, "MALLOC_ARENA_MAX": "4"})
    assert said == "False"
