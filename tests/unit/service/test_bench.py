"""``mammoseg bench``: the pure parts (FLOPs, percentiles, tables, flags, profiles) and a
small smoke run of the whole bench against the tiny model."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from service.bench import model as bench_model
from service.bench import node as bench_node
from service.bench import options as bench_options
from service.bench import report as bench_report
from service.bench import run as bench_run
from service.cli import main as cli_main
from service.testkit.processes import kb_field, proportional_kb
from service.testkit.synthetic import ImageSpec, density_map, random_masses, write_mammograms
from tests.conftest import free_port
from tests.tiny_model import write_tiny_model

# --------------------------------------------------------------------------- memory


def test_pss_counts_the_pages_two_processes_share_once() -> None:
    child = subprocess.Popen(["sleep", "30"])
    try:
        pids = [os.getpid(), child.pid]
        rss = sum(kb_field(f"/proc/{pid}/status", "VmRSS") or 0 for pid in pids)
        pss = proportional_kb(pids)
        # Both map the C library (and this process shares its own with nothing else).
        assert 0 < pss < rss
        own_rss = kb_field(f"/proc/{os.getpid()}/status", "VmRSS") or 0
        assert 0 < proportional_kb([os.getpid()]) <= own_rss
        assert proportional_kb([child.pid, 2**22 + 7]) > 0  # a gone pid counts 0
    finally:
        child.kill()
        child.wait()


# --------------------------------------------------------------------------- FLOPs


def test_tiny_model_flops_are_its_one_convolution(tiny_model: Path) -> None:
    # 64x64 output pixels, one 9x9 kernel over one channel.
    macs = bench_model.count_macs(onnx.load(str(tiny_model)))
    assert macs == {"Conv": 64 * 64 * 81, "ConvTranspose": 0, "MatMul": 0, "Gemm": 0}
    assert bench_model.model_gflops(tiny_model) == pytest.approx(2 * 64 * 64 * 81 / 1e9)


def _model(nodes: list, inputs: list, outputs: list, inits: list) -> onnx.ModelProto:  # type: ignore[type-arg]
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _weights(name: str, *shape: int) -> onnx.TensorProto:
    return numpy_helper.from_array(np.zeros(shape, dtype=np.float32), name)


def test_grouped_transposed_matmul_and_gemm_are_counted() -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8, 16, 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    nodes = [
        # depthwise 3x3: 8 x 16 x 16 outputs, 9 MACs each
        helper.make_node("Conv", ["x", "dw"], ["a"], group=8, pads=[1, 1, 1, 1]),
        # stride-2 transposed 2x2, 8 -> 4 channels: every input meets 4 x 2 x 2 weights
        helper.make_node("ConvTranspose", ["a", "up"], ["b"], strides=[2, 2]),
        helper.make_node("Reshape", ["b", "shape"], ["c"]),  # [4 * 32, 32]
        helper.make_node("MatMul", ["c", "m"], ["d"]),  # [128, 32] x [32, 10]
        helper.make_node("Gemm", ["d", "g"], ["y"], transA=1),  # [10, 128] x [128, 3]
    ]
    inits = [
        _weights("dw", 8, 1, 3, 3),
        _weights("up", 8, 4, 2, 2),
        numpy_helper.from_array(np.array([128, 32], dtype=np.int64), "shape"),
        _weights("m", 32, 10),
        _weights("g", 128, 3),
    ]
    macs = bench_model.count_macs(_model(nodes, [x], [y], inits))
    assert macs == {
        "Conv": 8 * 16 * 16 * 9,
        "ConvTranspose": 8 * 16 * 16 * 4 * 2 * 2,
        "MatMul": 128 * 10 * 32,
        "Gemm": 10 * 3 * 128,
    }


def test_unknown_shapes_are_refused_not_guessed() -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 8])
    shape = helper.make_tensor_value_info("shape", TensorProto.INT64, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    nodes = [
        helper.make_node("Reshape", ["x", "shape"], ["r"]),  # shape only known at run time
        helper.make_node("MatMul", ["r", "m"], ["y"]),
    ]
    model = _model(nodes, [x, shape], [y], [_weights("m", 8, 2)])
    with pytest.raises(bench_model.FlopCountError, match="MatMul"):
        bench_model.count_macs(model)


def test_measure_reports_seconds_per_item() -> None:
    calls = []
    latency = bench_model.measure(lambda: calls.append(1), repeats=3, per=4, warmup=1)
    assert len(calls) == 4
    assert latency.runs == 3
    assert 0.0 <= latency.best_s <= latency.median_s
    with pytest.raises(ValueError, match="repeats"):
        bench_model.measure(lambda: None, repeats=0)


def test_configurations_are_timed_in_turn() -> None:
    order: list[str] = []
    calls = {
        "a": (lambda: order.append("a"), 1),
        "b": (lambda: order.append("b"), 4),
    }
    timed = bench_model.measure_interleaved(calls, rounds=2, repeats=2, warmup=1)
    assert order == ["a", "b"] + ["a", "a", "b", "b"] * 2
    assert timed["a"].runs == timed["b"].runs == 4
    with pytest.raises(ValueError, match="rounds"):
        bench_model.measure_interleaved(calls, rounds=0, repeats=1)


# --------------------------------------------------------------------------- report


def test_percentile_interpolates_like_numpy() -> None:
    assert bench_report.percentile([4.0, 1.0, 3.0, 2.0], 50) == 2.5
    assert bench_report.percentile([1.0, 2.0, 3.0, 4.0], 95) == pytest.approx(3.85)
    assert bench_report.percentile([7.0], 95) == 7.0
    with pytest.raises(ValueError, match="no values"):
        bench_report.percentile([], 50)
    with pytest.raises(ValueError, match="q must be"):
        bench_report.percentile([1.0], 101)


def test_markdown_table_aligns_numbers_and_escapes_pipes() -> None:
    text = bench_report.markdown_table(("stage", "p50"), [("decode", "0.081"), ("a|b", "12.5")])
    assert text.splitlines() == [
        "| stage  | p50   |",
        "|--------|------:|",
        "| decode | 0.081 |",
        "| a\\|b   |  12.5 |",
    ]
    with pytest.raises(ValueError, match="cells"):
        bench_report.markdown_table(("a", "b"), [("only one",)])


def test_render_says_which_targets_are_missed() -> None:
    report = bench_report.Report(started="2026-01-01 00:00 UTC", machine={"CPU": "X"}, command="c")
    report.rows += [
        bench_report.Row("p50", "0.80", "<= 1.0", True),
        bench_report.Row("throughput", "60.0 /min", ">= 90 /min", False),
    ]
    report.skip("INT8 / fp32", "skipped: no INT8 model")
    text = bench_report.render(report)
    assert "| p50 " in text and "| met" in text
    assert "| throughput" in text and "MISSED" in text
    assert "skipped: no INT8 model" in text
    assert "Machine: CPU X" in text


def test_stage_times_add_up_to_the_total() -> None:
    timings = {
        "received_at": 100.5,
        "processing_at": 100.6,
        "decode_s": 0.1,
        "preprocess_s": 0.05,
        "infer_s": 0.08,
        "postprocess_build_s": 0.3,
        "send_s": 0.07,
        "done_at": 101.2,
    }
    stages = bench_node.stage_times(timings, submitted_at=100.0)
    assert stages["receive"] == pytest.approx(0.5)
    assert stages["queue"] == pytest.approx(0.1)
    assert stages["total"] == pytest.approx(1.2)
    assert stages["other"] == pytest.approx(1.2 - 0.5 - 0.1 - 0.1 - 0.05 - 0.08 - 0.3 - 0.07)
    assert sum(stages[s] for s in bench_node.STAGES) == pytest.approx(stages["total"])


def test_files_are_dealt_round_robin() -> None:
    files = [Path(f"{i}.dcm") for i in range(5)]
    assert bench_node.split(files, 2) == [files[0::2], files[1::2]]
    assert bench_node.split(files[:1], 3) == [files[:1]]
    with pytest.raises(ValueError, match="parts"):
        bench_node.split(files, 0)


WORKER = "run (service/worker.py:170)"
PROCESS = "process_instance (service/pipeline.py:160)"
RAW_PY_SPY = "\n".join(
    [
        f"thread (101): worker-0;{WORKER};{PROCESS};label (scipy/ndimage/_measurements.py:43) 30",
        f"thread (101): worker-0;{WORKER};{PROCESS} 10",
        f"thread (102): worker-1;{WORKER};dcmread (pydicom/filereader.py:900) 20",
        "thread (103): sender;run (service/worker.py:200);send_files (dicom_node/scu.py:80) 40",
        "not a sample line",
    ]
)


def test_py_spy_samples_are_summarised_by_function_and_thread() -> None:
    summary = bench_node.summarise_py_spy(RAW_PY_SPY, top=3)
    assert summary.samples == 100
    assert summary.threads == {"worker-N": 60, "sender": 40}
    assert summary.total[0] == ("run (service/worker.py)", 100)
    assert ("process_instance (service/pipeline.py)", 40) in summary.total
    assert summary.own[0] == ("send_files (dicom_node/scu.py)", 40)


def test_frame_names_drop_lines_and_install_prefixes() -> None:
    name = bench_node.frame_name(
        "dcmread (/v/lib/python3.11/site-packages/pydicom/filereader.py:9)"
    )
    assert name == "dcmread (pydicom/filereader.py)"
    assert bench_node.frame_name("f (/work/x/service/pipeline.py:3)") == "f (service/pipeline.py)"
    assert bench_node.frame_name("<module>") == "<module>"


# --------------------------------------------------------------------------- flags


def test_defaults_are_the_issue_sizes() -> None:
    options = bench_options.parse_args([])
    assert options.sections == bench_options.SECTIONS
    assert (options.rows, options.columns, options.bits_stored) == (4096, 3328, 14)
    assert options.throughput_images == 100 and options.associations == 2
    assert options.thread_count >= 1


def test_flags_are_parsed_and_checked() -> None:
    options = bench_options.parse_args(
        ["--sections", "receive,model", "--node-env", "MAMMOSEG_WORKERS=2", "--threads", "1"]
    )
    assert options.sections == ("model", "receive")  # always in pipeline order
    assert options.node_env == (("MAMMOSEG_WORKERS", "2"),)
    assert options.thread_count == 1
    assert not options.peers_nodelay
    assert bench_options.parse_args(["--peers-nodelay"]).peers_nodelay
    with pytest.raises(bench_options.BenchUsageError, match="--sections"):
        bench_options.parse_args(["--sections", "model,gpu"])
    with pytest.raises(bench_options.BenchUsageError, match="--node-env"):
        bench_options.parse_args(["--node-env", "2WORKERS"])
    with pytest.raises(bench_options.BenchUsageError, match="--latency-images"):
        bench_options.parse_args(["--latency-images", "0"])
    assert bench_options.parse_args(["--growth-sizes", "256x208, 512x416"]).growth_sizes == (
        (256, 208),
        (512, 416),
    )
    for bad in ("256x208", "256x208,32x32", "256by208,512x416"):
        with pytest.raises(bench_options.BenchUsageError, match="--growth-sizes"):
            bench_options.parse_args(["--growth-sizes", bad])


def test_cli_refuses_bad_bench_flags_with_status_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["bench", "--sections", "nothing"]) == 2
    assert "unknown ['nothing']" in capsys.readouterr().err


def test_cli_hands_bench_help_to_the_bench_parser(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        cli_main(["bench", "--help"])
    assert stopped.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: mammoseg bench [-h] [--sections SECTIONS]")
    assert bench_options.DESCRIPTION in out and "--throughput-images" in out


def test_bench_flags_reach_the_cli() -> None:
    parser = argparse.ArgumentParser()
    bench_options.add_arguments(parser)
    args = parser.parse_args(["--rows", "256", "--columns", "208"])
    assert bench_options.options_from_args(args).rows == 256


# --------------------------------------------------------------------------- images


def test_synthetic_mammograms_go_through_the_display_pipeline(tmp_path: Path) -> None:
    from pydicom import dcmread

    from dicom_node.pixels import display_image

    spec = ImageSpec(rows=128, columns=104, bits_stored=16)
    paths = write_mammograms(tmp_path, 3, spec, seed=1)
    datasets = [dcmread(p) for p in paths]
    assert len({ds.SOPInstanceUID for ds in datasets}) == 3
    first = datasets[0]
    assert (first.Rows, first.Columns, first.BitsStored) == (128, 104, 16)
    assert [ds.ImageLaterality for ds in datasets] == ["L", "R", "L"]
    pixels = display_image(first).pixels
    assert pixels.shape == (128, 104)
    # Left breast: chest wall (tissue) at column 0, air at the far right edge.
    assert pixels[64, :10].mean() > pixels[5, -10:].mean() + 0.2


def test_density_map_is_seeded_and_in_range() -> None:
    masses = random_masses(96, 80, "R", seed=3)
    assert 1 <= len(masses) <= 2 and masses == random_masses(96, 80, "R", seed=3)
    a = density_map(96, 80, laterality="R", masses=masses, seed=3)
    assert a.dtype == np.float32 and 0.0 <= a.min() and a.max() <= 1.0
    np.testing.assert_array_equal(a, density_map(96, 80, laterality="R", masses=masses, seed=3))
    with pytest.raises(ValueError, match="at least 64x64"):
        ImageSpec(rows=32, columns=80)


# --------------------------------------------------------------------------- smoke run


@pytest.mark.slow
@pytest.mark.e2e
def test_dcmtk_peers_get_tcp_nodelay_only_when_asked(tmp_path: Path) -> None:
    if shutil.which("storescu") is None or shutil.which("storescp") is None:
        pytest.skip("DCMTK is not installed (Debian package dcmtk; scripts/test installs it)")
    bn = bench_node
    assert bn.find_dcmtk().env is None  # as installed: the environment of the bench
    tools = bn.find_dcmtk(peers_nodelay=True)
    assert tools.env is not None and tools.env["TCP_NODELAY"] == "1"
    # DCMTK reads it: with --debug its tools say they turned Nagle off, else nothing.
    echoscu = Path(tools.storescu).with_name("echoscu")
    port = free_port()
    peer = subprocess.Popen(
        [tools.storescp, "-od", str(tmp_path), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        bn.wait_for_port(port, peer, 20, "storescp")
        installed = {k: v for k, v in os.environ.items() if k != "TCP_NODELAY"}
        said = {}
        for name, env in (("off", tools.env), ("as installed", installed)):
            said[name] = subprocess.run(
                [str(echoscu), "--debug", "127.0.0.1", str(port)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=30,
            ).stdout
    finally:
        peer.terminate()
        peer.wait(timeout=10)
    assert "disabling Nagle algorithm as requested at runtime" in said["off"]
    assert "Nagle" not in said["as installed"]


def test_the_whole_bench_runs_on_tiny_sizes(tmp_path: Path) -> None:
    if shutil.which("storescu") is None or shutil.which("storescp") is None:
        pytest.skip("DCMTK is not installed (Debian package dcmtk; scripts/test installs it)")
    model = write_tiny_model(tmp_path / "model" / "tiny.onnx")
    options = bench_options.parse_args(
        [
            "--model", str(model),
            "--keras-weights", str(tmp_path / "no-weights"),
            "--threads", "1",
            "--repeats", "2",
            "--rows", "256",
            "--columns", "208",
            "--latency-images", "2",
            "--throughput-images", "4",
            "--receive-rounds", "1",
            "--profile-images", "2",
            "--growth-images", "1",
            "--growth-sizes", "128x104,256x208",
            "--work-dir", str(tmp_path / "work"),
        ]
    )  # fmt: skip
    report = bench_run.run(options, log=lambda _: None)
    figures = report.figures
    assert figures["model"]["gflops"] == pytest.approx(2 * 64 * 64 * 81 / 1e9)
    assert figures["model"]["ort_vs_bound_b1"] > 0
    assert len(figures["latency"]["per_image"]) == 2
    model_s = figures["model_time_s"]
    assert model_s == figures["model"]["fp32"][1]["best_s"] > 0
    latency = figures["latency"]
    assert latency["p50_model_times"] == pytest.approx(latency["p50_s"] / model_s)
    assert 0 < latency["build_share"] < 1
    assert figures["cold_start"]["ready_s"] > 0 and figures["cold_start"]["first_image_s"] > 0
    assert figures["throughput"]["per_minute"] > 0
    throughput = figures["throughput"]
    assert throughput["seconds_per_image_model_times"] == pytest.approx(
        throughput["seconds_per_image"] / model_s
    )
    assert [(g["rows"], g["columns"]) for g in figures["growth"]] == [(128, 104), (256, 208)]
    assert figures["growth"][0]["p50_ratio"] == 1.0
    assert figures["growth"][1]["pixels_ratio"] == pytest.approx(4.0)
    assert figures["receive"]["ratio"] > 0
    assert len(figures["receive"]["round_ratios"]) == 1
    assert figures["memory"]["peak_rss_mb"] >= figures["memory"]["idle_rss_mb"] > 0
    # PSS counts the pages serve and its worker share once: below their summed RSS.
    memory = figures["memory"]
    assert 0 < memory["idle_pss_mb"] < memory["idle_rss_mb"]
    assert 0 < memory["peak_pss_mb"] < memory["peak_rss_mb"]
    assert figures["memory"]["tensorflow_mapped"] == []
    text = bench_report.render(report)
    assert "skipped: no Keras weights" in text
    assert "skipped: no INT8 model" in text
    assert "not run" not in text
    assert "model-times" in text and "cost growth" in text and "cold start" in text
