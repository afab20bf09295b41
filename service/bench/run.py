"""``mammoseg bench`` itself: run the chosen sections, print the report (see the package doc)."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from service.bench.options import BenchOptions, BenchUsageError, build_parser, options_from_args
from service.bench.report import (
    Report,
    Row,
    Table,
    load_average,
    machine_description,
    percentile,
    render,
)

# Targets of the performance issue (docs/performance.md).
TARGET_ORT_VS_BOUND = 1.15  # ONNX Runtime fp32 latency / FLOP bound, at most
TARGET_KERAS_VS_ORT = 1.8  # Keras latency / ONNX Runtime latency, at least
TARGET_INT8_VS_FP32 = 0.5  # INT8 latency / fp32 latency, at most
TARGET_INT8_DICE = 0.98  # INT8 vs fp32 mask Dice, at least
# The node's time figures are in model-times: one model-time is ONNX Runtime fp32, batch 1,
# per image (the best), measured in the same run, so the targets hold on any machine.
TARGET_P50_MODEL_TIMES = 20.0  # end to end p50, full-size MG, at most
TARGET_SECONDS_PER_IMAGE_MODEL_TIMES = 18.0  # throughput, seconds per image, at most
TARGET_BUILD_SHARE = 0.25  # the build stage's share of end to end (median per image), at most
TARGET_RECEIVE_RATIO = 0.9  # node receive rate / storescp receive rate, in every round
TARGET_RSS_MB = 400.0  # node peak RSS (VmHWM) during throughput, at most


# --------------------------------------------------------------------------- model


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def default_model() -> Path:
    from service.settings import DEFAULT_MODEL

    return DEFAULT_MODEL


def default_int8(model: Path) -> Path | None:
    candidate = model.with_name(model.stem + "-int8.onnx")
    return candidate if candidate.is_file() else None


def default_keras_weights() -> Path | None:
    """runs/ship of a source checkout (git-ignored; absent on a fresh clone)."""
    candidate = Path(__file__).resolve().parents[2] / "runs" / "ship"
    return candidate if candidate.is_dir() else None


def describe_model(path: Path) -> str:
    """Name, version and hash of the model under test (the figures belong to it)."""
    from service.inference import file_sha256, read_contract

    contract = read_contract(path)
    return (
        f"{contract.model_name} {contract.model_version} "
        f"({path.name}, sha256 {file_sha256(path)[:12]})"
    )


def run_model(options: BenchOptions, report: Report) -> None:
    from service.bench import model as bm
    from service.inference import contract_of

    threads = options.thread_count
    model = options.model or default_model()
    session = bm.load_session(model, threads)
    contract = contract_of(session, model)
    inputs = bm.model_inputs(contract, 8)
    fig = report.figures.setdefault("model", {"path": str(model), "threads": threads})

    gflops: float | None
    try:
        gflops = bm.model_gflops(model)
    except ImportError:
        gflops = None
        report.notes.append("FLOP bound skipped: the onnx package is not installed")
    numpy_rates = [bm.numpy_matmul_gflops(threads)]
    ort_rates: list[float] = []
    if gflops is not None:
        ort_rates.append(bm.ort_matmul_gflops(threads))

    # Every ONNX Runtime configuration is timed in turn, round by round (fair ratios).
    calls = {f"fp32 b{b}": bm.ort_call(session, inputs, batch=b) for b in (1, 4)}
    for t in range(1, (os.cpu_count() or 1) + 1):
        if t != threads:
            calls[f"fp32 b1 t{t}"] = bm.ort_call(bm.load_session(model, t), inputs, batch=1)
    int8_path = options.int8 or default_int8(model)
    int8 = None
    if int8_path is not None and int8_path.is_file():
        int8 = bm.load_session(int8_path, threads)
        calls.update({f"int8 b{b}": bm.ort_call(int8, inputs, batch=b) for b in (1, 4)})
    rounds = min(4, options.repeats)
    timed = bm.measure_interleaved(calls, rounds=rounds, repeats=max(1, options.repeats // rounds))
    fp32 = {b: timed[f"fp32 b{b}"] for b in (1, 4)}
    sweep = {
        t: timed[f"fp32 b1 t{t}"] if t != threads else fp32[1]
        for t in range(1, (os.cpu_count() or 1) + 1)
    }
    # Rates again after the model runs: the best of both brackets the model's timings.
    numpy_rates.append(bm.numpy_matmul_gflops(threads))
    if gflops is not None:
        ort_rates.append(bm.ort_matmul_gflops(threads))

    fig["fp32"] = {b: asdict(lat) for b, lat in fp32.items()}
    fig["threads_sweep"] = {t: asdict(lat) for t, lat in sweep.items()}
    fig["numpy_matmul_gflops"] = max(numpy_rates)
    report.rows.append(
        Row(
            "ONNX Runtime fp32, per image, batch 1 / 4 (best)",
            f"{_ms(fp32[1].best_s)} / {_ms(fp32[4].best_s)}",
        )
    )
    if gflops is not None:
        rate = max(numpy_rates + ort_rates)
        bound = gflops / rate
        fig.update(gflops=gflops, ort_matmul_gflops=max(ort_rates), bound_s=bound)
        report.rows.append(
            Row(
                "fp32 matmul rate (numpy / ONNX Runtime MatMul)",
                f"{max(numpy_rates):.0f} / {max(ort_rates):.0f} GFLOP/s",
            )
        )
        report.rows.append(
            Row("FLOP bound per image", f"{gflops:.2f} GFLOP / {rate:.0f} GFLOP/s = {_ms(bound)}")
        )
        for batch in (1, 4):
            ratio = fp32[batch].best_s / bound
            fig[f"ort_vs_bound_b{batch}"] = ratio
            report.rows.append(
                Row(
                    f"ONNX Runtime fp32 / FLOP bound, batch {batch}",
                    f"{ratio:.2f}x",
                    f"<= {TARGET_ORT_VS_BOUND}x",
                    ratio <= TARGET_ORT_VS_BOUND,
                )
            )
    report.tables.append(
        Table(
            "ONNX Runtime fp32 per image (ms)",
            ("configuration", "best", "median"),
            tuple(
                (
                    f"batch {b}, {threads} threads",
                    f"{lat.best_s * 1e3:.1f}",
                    f"{lat.median_s * 1e3:.1f}",
                )
                for b, lat in fp32.items()
            )
            + tuple(
                (
                    f"batch 1, {t} thread{'s' if t > 1 else ''}",
                    f"{lat.best_s * 1e3:.1f}",
                    f"{lat.median_s * 1e3:.1f}",
                )
                for t, lat in sweep.items()
                if t != threads
            ),
            note="All configurations timed in turn, round by round "
            f"({rounds} rounds), best and median of all runs.",
        )
    )
    _keras_part(options, report, session, inputs, fp32, threads)
    if int8 is None:
        report.skip(
            "INT8 / fp32",
            "skipped: no INT8 model (pass --int8, or export one with mammoseg export --int8)",
        )
    else:
        int8_latency = {b: timed[f"int8 b{b}"] for b in (1, 4)}
        _int8_part(report, session, int8, inputs, fp32, int8_latency, contract.threshold)


def _keras_part(
    options: BenchOptions,
    report: Report,
    session: Any,
    inputs: np.ndarray,
    fp32: dict[int, Any],
    threads: int,
) -> None:
    from service.bench import model as bm

    weights = options.keras_weights or default_keras_weights()
    if weights is None:
        report.skip("Keras / ONNX Runtime", "skipped: no Keras weights (pass --keras-weights)")
        return
    try:
        keras = bm.keras_latency(
            weights, inputs, threads=threads, batches=(1, 4), repeats=options.repeats
        )
    except bm.KerasSkipped as exc:
        report.skip("Keras / ONNX Runtime", str(exc))
        return
    reference = bm.predict(session, inputs)
    diff = float(np.abs(keras.probabilities - reference).max())
    fig = report.figures["model"]
    fig["keras"] = {b: asdict(lat) for b, lat in keras.latency.items()}
    fig["keras_max_abs_diff"] = diff
    for batch in (1, 4):
        ratio = keras.latency[batch].best_s / fp32[batch].best_s
        fig[f"keras_vs_ort_b{batch}"] = ratio
        report.rows.append(
            Row(
                f"Keras tf.function / ONNX Runtime, batch {batch}",
                f"{ratio:.2f}x ({_ms(keras.latency[batch].best_s)})",
                f">= {TARGET_KERAS_VS_ORT}x",
                ratio >= TARGET_KERAS_VS_ORT,
            )
        )
    same = "same weights" if diff < 1e-3 else "NOT the same weights as the ONNX model"
    report.notes.append(
        f"Keras (TensorFlow {keras.tensorflow}) from {weights}: largest probability "
        f"difference to ONNX Runtime {diff:.1e} ({same}; timing does not depend on it)"
    )


def _int8_part(
    report: Report,
    session: Any,
    int8: Any,
    inputs: np.ndarray,
    fp32: dict[int, Any],
    latency: dict[int, Any],
    threshold: float,
) -> None:
    from service.bench import model as bm
    from service.imaging.lesions import mask_dice

    a = bm.predict(session, inputs) >= threshold
    b = bm.predict(int8, inputs) >= threshold
    dice = mask_dice(a, b)
    fig = report.figures["model"]
    fig["int8"] = {k: asdict(v) for k, v in latency.items()}
    fig["int8_dice"] = dice
    for batch in (1, 4):
        ratio = latency[batch].best_s / fp32[batch].best_s
        fig[f"int8_vs_fp32_b{batch}"] = ratio
        report.rows.append(
            Row(
                f"INT8 / fp32, batch {batch}",
                f"{ratio:.2f}x ({_ms(latency[batch].best_s)})",
                f"<= {TARGET_INT8_VS_FP32}x",
                ratio <= TARGET_INT8_VS_FP32,
            )
        )
    report.rows.append(
        Row(
            f"INT8 vs fp32 mask Dice ({len(inputs)} images)",
            f"{dice:.4f}",
            f">= {TARGET_INT8_DICE}",
            dice >= TARGET_INT8_DICE,
        )
    )


# --------------------------------------------------------------------------- node parts


@dataclass
class Workspace:
    root: Path
    latency_files: list[Path]
    load_files: list[Path]
    uids: dict[Path, str]
    #: (rows, columns) -> a warm-up image and ``growth_images`` more, for the cost growth
    growth_files: dict[tuple[int, int], list[Path]] = field(default_factory=dict)


def model_time(options: BenchOptions, report: Report) -> float:
    """One model-time: ONNX Runtime fp32, batch 1, per image, best; this run's unit.

    The model section's figure when it ran, else measured here the same way (fewer repeats).
    """
    fig = report.figures.get("model", {})
    if "fp32" in fig:
        best = float(fig["fp32"][1]["best_s"])
    else:
        from service.bench import model as bm
        from service.inference import contract_of

        path = options.model or default_model()
        session = bm.load_session(path, options.thread_count)
        inputs = bm.model_inputs(contract_of(session, path), 8)
        rounds = min(2, options.repeats)
        timed = bm.measure_interleaved(
            {"fp32 b1": bm.ort_call(session, inputs, batch=1)},
            rounds=rounds,
            repeats=max(1, options.repeats // rounds),
        )
        best = timed["fp32 b1"].best_s
    report.figures["model_time_s"] = best
    report.rows.append(
        Row("one model-time: ONNX Runtime fp32, batch 1, per image (best, this run)", _ms(best))
    )
    return best


def _times(seconds: float, model_s: float) -> str:
    """``seconds`` in model-times, as the node's rows print it."""
    return f"{seconds / model_s:.1f} model-times"


def _prepare_images(options: BenchOptions, root: Path) -> Workspace:
    from pydicom import dcmread

    from service.testkit.synthetic import ImageSpec, write_mammograms

    spec = ImageSpec(rows=options.rows, columns=options.columns, bits_stored=options.bits_stored)
    sections = set(options.sections)
    latency = options.latency_images + 1 if "latency" in sections else 0
    load = 0
    if sections & {"throughput", "receive"}:
        load = options.throughput_images
    if "profile" in sections:
        load = max(load, options.profile_images)
    files = write_mammograms(root / "images", max(1, latency + load), spec)
    growth: dict[tuple[int, int], list[Path]] = {}
    if "growth" in sections:
        for rows, columns in options.growth_sizes:
            size = ImageSpec(rows=rows, columns=columns, bits_stored=options.bits_stored)
            growth[(rows, columns)] = write_mammograms(
                root / f"growth-{rows}x{columns}", options.growth_images + 1, size
            )
    every = files + [f for group in growth.values() for f in group]
    uids = {f: str(dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in every}
    return Workspace(root, files[:latency], files[latency:], uids, growth)


def _node_env(options: BenchOptions) -> dict[str, str]:
    # On top of the launcher's MAMMOSEG_MIN_FREE_MB=0: the node's own disk watermark
    # would refuse images on a nearly full bench disk.
    return dict(options.node_env)


def run_node_parts(options: BenchOptions, report: Report, ws: Workspace) -> None:
    """Latency, throughput and memory on one node with a storescp destination."""
    from service.bench import node as bn

    tools = bn.find_dcmtk(options.peers_nodelay)
    sections = set(options.sections)
    with bn.storescp(tools, ws.root / "destination") as dest_port:
        launched = time.monotonic()
        with bn.node_under_test(
            ws.root / "node",
            destination=f"{bn.DEST_AET}@127.0.0.1:{dest_port}",
            env=_node_env(options),
            model_path=options.model,
            token=options.token,
        ) as node:
            ready_s = time.monotonic() - launched
            report.figures["cold_start"] = {"ready_s": ready_s}
            report.rows.append(
                Row("cold start: process start -> /readyz ready", f"{ready_s:.1f} s")
            )
            time.sleep(2.0)
            idle_kb = node.status_kb("VmRSS")
            idle_pss_kb = node.pss_kb()
            report.figures["memory"] = {
                "idle_rss_mb": idle_kb / 1024,
                "idle_pss_mb": idle_pss_kb / 1024,
            }
            if "latency" in sections:
                _latency(options, report, ws, tools, node)
            peaks = (0, 0)
            if "throughput" in sections:
                peaks = _throughput(options, report, ws, tools, node)
            _memory(report, node, (idle_kb, idle_pss_kb), peaks)
            if "growth" in sections:
                _growth(options, report, ws, tools, node)


def _latency(options: BenchOptions, report: Report, ws: Workspace, tools: Any, node: Any) -> None:
    from service.bench import node as bn

    mt = report.figures["model_time_s"]
    first = one_at_a_time(tools, node, ws.latency_files[:1], ws.uids)[0]
    # The first image pays first-call costs (page cache, lazy imports): the cold figure.
    report.figures["cold_start"].update(
        first_image_s=first["total"], first_image_model_times=first["total"] / mt
    )
    report.rows.append(
        Row(
            "cold start: the first image, end to end",
            f"{first['total']:.2f} s = {_times(first['total'], mt)}",
        )
    )
    per_image = one_at_a_time(tools, node, ws.latency_files[1:], ws.uids)
    totals = [s["total"] for s in per_image]
    p50, p95 = percentile(totals, 50), percentile(totals, 95)
    share = percentile([s["build"] / s["total"] for s in per_image], 50)
    build = percentile([s["build"] for s in per_image], 50)
    report.figures["latency"] = {
        "per_image": per_image,
        "p50_s": p50,
        "p95_s": p95,
        "p50_model_times": p50 / mt,
        "p95_model_times": p95 / mt,
        "build_p50_s": build,
        "build_share": share,
    }
    report.rows.append(
        Row(
            f"end to end p50 / p95, {options.columns}x{options.rows} MG, storescu -> node -> "
            f"storescp ({len(per_image)} images)",
            f"{p50:.2f} / {p95:.2f} s = {p50 / mt:.1f} / {p95 / mt:.1f} model-times",
            f"p50 <= {TARGET_P50_MODEL_TIMES:.0f} model-times",
            p50 / mt <= TARGET_P50_MODEL_TIMES,
        )
    )
    report.rows.append(
        Row(
            "build stage share of end to end (median per image)",
            f"{100 * share:.0f} % (build p50 {build:.2f} s = {_times(build, mt)})",
            f"<= {100 * TARGET_BUILD_SHARE:.0f} %",
            share <= TARGET_BUILD_SHARE,
        )
    )
    rows = []
    for stage in (*bn.STAGES, "total"):
        values = [s[stage] for s in per_image]
        rows.append((stage, f"{percentile(values, 50):.3f}", f"{percentile(values, 95):.3f}"))
    report.tables.append(
        Table(
            f"End to end by stage, seconds ({len(per_image)} images, "
            f"{options.rows}x{options.columns}, {options.bits_stored} bits stored, one at a time)",
            ("stage", "p50", "p95"),
            tuple(rows),
            note="receive: storescu launched -> job committed; queue: committed -> claimed; "
            "build: threshold, SEG, SC, SR written; send: C-STORE of the results; "
            "other: hand-over to the sender and store updates. "
            "Stage percentiles do not add up to the total's.",
        )
    )


def one_at_a_time(
    tools: Any, node: Any, files: Sequence[Path], uids: dict[Path, str]
) -> list[dict[str, float]]:
    """Send each file alone and wait for its job: the stage times of each, in order."""
    from service.bench import node as bn

    per_image = []
    for path in files:
        submitted = time.time()
        bn.send_all(tools, node.dicom_port, [path], called=bn.NODE_AET, associations=1)
        job = bn.wait_for_jobs(node, [uids[path]], timeout_s=300, interval_s=0.2)
        per_image.append(bn.stage_times(job[uids[path]]["timings"], submitted))
    return per_image


def _growth(options: BenchOptions, report: Report, ws: Workspace, tools: Any, node: Any) -> None:
    """End to end p50 at each size (after one warm-up image each) against the pixel count."""
    mt = report.figures["model_time_s"]
    measured = []
    for (rows, columns), files in ws.growth_files.items():
        one_at_a_time(tools, node, files[:1], ws.uids)  # the size's own first-call costs
        totals = [s["total"] for s in one_at_a_time(tools, node, files[1:], ws.uids)]
        measured.append((rows, columns, percentile(totals, 50)))
    base_rows, base_columns, base_p50 = measured[0]
    table, figures, linear = [], [], True
    for rows, columns, p50 in measured:
        pixels = rows * columns / (base_rows * base_columns)
        cost = p50 / base_p50
        linear = linear and cost <= pixels * (1 + 1e-9)
        figures.append(
            {"rows": rows, "columns": columns, "p50_s": p50, "p50_model_times": p50 / mt,
             "pixels_ratio": pixels, "p50_ratio": cost}
        )  # fmt: skip
        table.append(
            (f"{columns}x{rows}", f"{rows * columns / 1e6:.1f}", f"{p50:.2f}",
             f"{p50 / mt:.1f}", f"x{pixels:.2f}", f"x{cost:.2f}")
        )  # fmt: skip
    report.figures["growth"] = figures
    report.rows.append(
        Row(
            "cost growth: end to end p50 at " + ", ".join(f"{c}x{r}" for r, c, _ in measured),
            " / ".join(f"{p:.2f} s" for _, _, p in measured)
            + " (x"
            + " / x".join(f"{f['p50_ratio']:.2f}" for f in figures)
            + " for pixels x"
            + " / x".join(f"{f['pixels_ratio']:.2f}" for f in figures)
            + ")",
            "grows at most linearly with pixels",
            linear,
        )
    )
    report.tables.append(
        Table(
            f"Cost growth: end to end p50 by image size ({options.growth_images} images each, "
            "one at a time, after one warm-up image per size)",
            ("size (w x h)", "megapixels", "p50 s", "model-times", "pixels", "p50"),
            tuple(table),
            note="The last two columns are ratios to the smallest size; linear growth would "
            "make them equal.",
        )
    )


def _throughput(
    options: BenchOptions, report: Report, ws: Workspace, tools: Any, node: Any
) -> tuple[int, int]:
    """Sends the load; returns the sampled peaks (kB) of the summed VmRSS and PSS."""
    from service.bench import node as bn

    files = ws.load_files[: options.throughput_images]
    # The peak asked for is the one during throughput, not the model load at start-up.
    if not node.reset_peak():
        report.notes.append("VmHWM could not be reset: the peak includes the start-up")
    with bn.RssSampler(node) as sampler:
        submitted = time.time()
        bn.send_all(
            tools, node.dicom_port, files, called=bn.NODE_AET, associations=options.associations
        )
        jobs = bn.wait_for_jobs(
            node, [ws.uids[f] for f in files], timeout_s=120 + 30 * len(files), interval_s=1.0
        )
    done = sorted(j["timings"]["done_at"] for j in jobs.values())
    elapsed = done[-1] - submitted
    per_minute = 60.0 * len(files) / elapsed
    steady = 60.0 * (len(done) - 1) / (done[-1] - done[0]) if len(done) > 1 else per_minute
    per_image = elapsed / len(files)
    mt = report.figures["model_time_s"]
    report.figures["throughput"] = {
        "images": len(files),
        "associations": options.associations,
        "seconds": elapsed,
        "per_minute": per_minute,
        "steady_per_minute": steady,
        "seconds_per_image": per_image,
        "seconds_per_image_model_times": per_image / mt,
    }
    report.rows.append(
        Row(
            f"throughput: seconds per image, {len(files)} images over "
            f"{options.associations} associations",
            f"{per_image:.2f} s = {_times(per_image, mt)} ({per_minute:.1f} /min, "
            f"steady {steady:.1f})",
            f"<= {TARGET_SECONDS_PER_IMAGE_MODEL_TIMES:.0f} model-times",
            per_image / mt <= TARGET_SECONDS_PER_IMAGE_MODEL_TIMES,
        )
    )
    return int(sampler.peak_kb), int(sampler.peak_pss_kb)


def _memory(report: Report, node: Any, idle_kb: tuple[int, int], peak_kb: tuple[int, int]) -> None:
    """The RSS target row (VmHWM, or the sampled VmRSS if higher) and the PSS beside it.

    ``idle_kb`` and ``peak_kb``: (VmRSS summed over the node's processes, their PSS).
    """
    hwm_kb = node.status_kb("VmHWM")
    peak_mb = max(peak_kb[0], hwm_kb) / 1024
    tensorflow = node.tensorflow_mapped()
    report.figures["memory"].update(
        peak_rss_mb=peak_mb, peak_pss_mb=peak_kb[1] / 1024, tensorflow_mapped=tensorflow
    )
    report.rows.append(
        Row(
            "node RSS idle / peak during throughput (VmHWM; serve + worker processes)",
            f"{idle_kb[0] / 1024:.0f} / {peak_mb:.0f} MB",
            f"<= {TARGET_RSS_MB:.0f} MB",
            peak_mb <= TARGET_RSS_MB,
        )
    )
    if peak_kb[1]:
        # No target: what the processes take from the machine, shared library pages once.
        report.rows.append(
            Row(
                "node PSS idle / sampled peak during throughput (shared pages counted once)",
                f"{idle_kb[1] / 1024:.0f} / {peak_kb[1] / 1024:.0f} MB",
            )
        )
    report.rows.append(
        Row(
            "TensorFlow in the node's memory map",
            "no" if not tensorflow else ", ".join(tensorflow)[:80],
            "never",
            not tensorflow,
        )
    )


def run_receive(options: BenchOptions, report: Report, ws: Workspace) -> None:
    """The node (workers parked: store only) against storescp --fork, alternating rounds."""
    from service.bench import node as bn

    tools = bn.find_dcmtk(options.peers_nodelay)
    files = ws.load_files[: options.throughput_images]
    node_s: list[float] = []
    dcmtk_s: list[float] = []
    env = {**_node_env(options), "MAMMOSEG_POLL_INTERVAL_S": str(bn.PARKED_POLL_INTERVAL_S)}
    for round_ in range(options.receive_rounds):
        work = ws.root / f"receive-{round_}"
        with bn.node_under_test(
            work / "node",
            destination=None,
            env=env,
            model_path=options.model,
            token=options.token,
            stop_timeout_s=5,
        ) as node:
            node_s.append(
                bn.send_all(
                    tools,
                    node.dicom_port,
                    files,
                    called=bn.NODE_AET,
                    associations=options.associations,
                )
            )
            received = node.jobs(newest=len(files) + 10)
            if len(received) != len(files):
                raise bn.BenchError(f"the node committed {len(received)} of {len(files)} jobs")
        with bn.storescp(tools, work / "storescp", aet="STORESCP") as port:
            dcmtk_s.append(
                bn.send_all(
                    tools, port, files, called="STORESCP", associations=options.associations
                )
            )
        shutil.rmtree(work, ignore_errors=True)
    node_rate = len(files) / min(node_s)
    dcmtk_rate = len(files) / min(dcmtk_s)
    ratio = node_rate / dcmtk_rate
    # Each round's node run against the storescp run right after it (the same load).
    rounds = [d / n for n, d in zip(node_s, dcmtk_s, strict=True)]
    mb = sum(f.stat().st_size for f in files) / 1e6
    report.figures["receive"] = {
        "images": len(files),
        "megabytes": mb,
        "node_s": node_s,
        "storescp_s": dcmtk_s,
        "ratio": ratio,
        "round_ratios": rounds,
        "lowest_round_ratio": min(rounds),
    }
    report.rows.append(
        Row(
            f"receive, node / storescp ({len(files)} images, {mb:.0f} MB, "
            f"{options.receive_rounds} alternating rounds)",
            f"lowest {min(rounds):.2f}, rounds "
            + ", ".join(f"{r:.2f}" for r in rounds)
            + f" (best {node_rate:.1f} vs {dcmtk_rate:.1f} images/s)",
            f">= {TARGET_RECEIVE_RATIO} in every round",
            min(rounds) >= TARGET_RECEIVE_RATIO,
        )
    )


def run_profile(options: BenchOptions, report: Report, ws: Workspace) -> None:
    """py-spy samples of a node working through ``profile_images`` images."""
    from service.bench import node as bn

    if bn.py_spy_path() is None:
        report.skip("profile", "skipped: py-spy is not installed (pip install py-spy)")
        return
    tools = bn.find_dcmtk(options.peers_nodelay)
    files = ws.load_files[: options.profile_images]
    work = ws.root / "profile"
    raw = work / "py-spy.txt"
    with bn.storescp(tools, work / "destination") as dest_port:
        with bn.node_under_test(
            work / "node",
            destination=f"{bn.DEST_AET}@127.0.0.1:{dest_port}",
            env=_node_env(options),
            model_path=options.model,
            token=options.token,
        ) as node:
            with bn.py_spy(node.pid, raw):
                bn.send_all(
                    tools,
                    node.dicom_port,
                    files,
                    called=bn.NODE_AET,
                    associations=options.associations,
                )
                bn.wait_for_jobs(
                    node,
                    [ws.uids[f] for f in files],
                    timeout_s=120 + 30 * len(files),
                    interval_s=1.0,
                )
    summary = bn.summarise_py_spy(raw.read_text())
    if summary.samples == 0:
        report.skip("profile", f"py-spy recorded no samples (see {work})")
        return

    def share(count: int) -> str:
        return f"{100.0 * count / summary.samples:.1f}"

    report.figures["profile"] = asdict(summary)
    report.tables.append(
        Table(
            f"Profile: py-spy, {summary.samples} samples of busy threads, {len(files)} images",
            ("function (total: anywhere on the stack)", "% of samples"),
            tuple((name, share(n)) for name, n in summary.total),
            note="Busy samples by thread: "
            + ", ".join(f"{t} {share(n)}%" for t, n in summary.threads.items()),
        )
    )
    report.tables.append(
        Table(
            "Profile: where the CPU is (function on top of the stack)",
            ("function (self)", "% of samples"),
            tuple((name, share(n)) for name, n in summary.own),
        )
    )


# --------------------------------------------------------------------------- main


def run(options: BenchOptions, *, log: Callable[[str], None] = print) -> Report:
    from service.bench.node import BenchError
    from service.testkit.processes import ProcessError

    report = Report(
        started=dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        machine=machine_description(options.thread_count),
        command="mammoseg " + " ".join(sys.argv[1:]),
    )
    report.machine["model"] = describe_model(options.model or default_model())
    sections = set(options.sections)
    owned = options.work_dir is None
    root = options.work_dir or Path(tempfile.mkdtemp(prefix="mammoseg-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        if "model" in sections:
            log("bench: model (ONNX Runtime, FLOP bound, Keras, INT8) ...")
            run_model(options, report)
        if sections - {"model"}:
            log("bench: one model-time (the unit of the node's figures) ...")
            model_time(options, report)
            report.notes.append(
                "DCMTK peers with TCP_NODELAY=1 (--peers-nodelay): their Nagle waits not counted"
                if options.peers_nodelay
                else "DCMTK peers as installed (Nagle on: each of their messages may wait ~40 ms "
                "for a delayed ACK, counted in receive and send; --peers-nodelay turns it off)"
            )
            log("bench: writing full-size images ...")
            ws = _prepare_images(options, root)
            steps: list[tuple[str, Callable[[BenchOptions, Report, Workspace], None]]] = []
            if sections & {"latency", "throughput", "growth"}:
                steps.append(("latency / throughput / memory / growth", run_node_parts))
            if "receive" in sections:
                steps.append(("receive", run_receive))
            if "profile" in sections:
                steps.append(("profile", run_profile))
            for name, step in steps:
                log(f"bench: {name} ...")
                try:
                    step(options, report, ws)
                except (BenchError, ProcessError) as exc:
                    report.skip(name, f"not run: {exc}")
    finally:
        if owned:
            shutil.rmtree(root, ignore_errors=True)
    report.machine["load average at end"] = load_average()
    return report


def main(argv: Sequence[str]) -> int:
    """``mammoseg bench ARGS``: parse, run, print the report; 2 on a bad flag."""
    return main_with_args(build_parser().parse_args(list(argv)))


def main_with_args(args: argparse.Namespace) -> int:
    """The same from flags already parsed (:func:`service.bench.options.add_arguments`)."""
    try:
        options = options_from_args(args)
    except BenchUsageError as exc:
        print(f"mammoseg bench: {exc}", file=sys.stderr)
        return 2
    report = run(options, log=lambda text: print(text, file=sys.stderr, flush=True))
    text = render(report)
    print(text)
    if options.markdown_path:
        options.markdown_path.write_text(text, encoding="utf-8")
    if options.json_path:
        payload = {
            "started": report.started,
            "machine": report.machine,
            "rows": [asdict(r) for r in report.rows],
            "figures": report.figures,
            "notes": report.notes,
        }
        options.json_path.write_text(json.dumps(payload, indent=1, default=str), encoding="utf-8")
    return 0
