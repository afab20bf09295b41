"""``mammoseg bench``: one command, one table, every figure a ratio taken in one run.

Sections (``--sections``, all by default):

- ``model``: ONNX Runtime fp32 per 256x256 image (batch 1 and 4) against the
  FLOP bound; Keras ``tf.function`` on the same weights; INT8 against fp32
  (latency and mask Dice). See :mod:`service.bench_model`.
- ``latency``: full-size 16-bit MG images, one at a time, DCMTK storescu ->
  node -> DCMTK storescp; p50/p95 per stage. Also the node's idle RSS.
- ``throughput``: many images over concurrent associations, images per
  minute; the node's peak RSS; TensorFlow never in its memory map.
- ``receive``: the node's SCP (store only) against DCMTK storescp.
- ``profile``: py-spy samples of the node at work (skipped without py-spy).

The machine these run on is usually shared, so nothing here is a timed
assertion: each target is reported as met or missed with the measured figure,
and the date, machine and load average are printed with the table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

SECTIONS = ("model", "latency", "throughput", "receive", "profile")

# Targets of the performance issue (docs/performance.md).
TARGET_ORT_VS_BOUND = 1.15  # ONNX Runtime fp32 latency / FLOP bound, at most
TARGET_KERAS_VS_ORT = 1.8  # Keras latency / ONNX Runtime latency, at least
TARGET_INT8_VS_FP32 = 0.5  # INT8 latency / fp32 latency, at most
TARGET_INT8_DICE = 0.98  # INT8 vs fp32 mask Dice, at least
TARGET_P50_S = 1.0  # end-to-end seconds per image, p50, at most
TARGET_PER_MINUTE = 90.0  # images per minute, at least
TARGET_RECEIVE_RATIO = 0.7  # node receive rate / storescp receive rate, at least
TARGET_RSS_MB = 400.0  # node RSS, at most


class BenchUsageError(ValueError):
    """A bad command-line value (the message names it)."""


@dataclass(frozen=True, kw_only=True)
class BenchOptions:
    sections: tuple[str, ...] = SECTIONS
    model: Path | None = None
    int8: Path | None = None
    keras_weights: Path | None = None
    threads: int = 0
    repeats: int = 20
    latency_images: int = 20
    throughput_images: int = 100
    associations: int = 2
    receive_rounds: int = 2
    profile_images: int = 20
    rows: int = 4096
    columns: int = 3328
    bits_stored: int = 14
    node_env: tuple[tuple[str, str], ...] = ()
    token: str | None = None
    work_dir: Path | None = None
    json_path: Path | None = None
    markdown_path: Path | None = None

    @property
    def thread_count(self) -> int:
        return self.threads or os.cpu_count() or 1


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``mammoseg bench`` flags (service.cli adds them to its subcommand)."""
    p.add_argument(
        "--sections",
        default=",".join(SECTIONS),
        help=f"comma-separated parts to run (default all: {','.join(SECTIONS)})",
    )
    p.add_argument("--model", type=Path, help="fp32 ONNX model (default: the shipped model)")
    p.add_argument(
        "--int8", type=Path, help="INT8 ONNX model (default: <model>-int8.onnx if it exists)"
    )
    p.add_argument(
        "--keras-weights",
        type=Path,
        help="training run folder or .keras file for the Keras comparison "
        "(default: runs/ship in a source checkout, if present)",
    )
    p.add_argument("--threads", type=int, default=0, help="threads for the model part (0: cores)")
    p.add_argument("--repeats", type=int, default=20, help="timed runs per model figure")
    p.add_argument("--latency-images", type=int, default=20, help="images sent one at a time")
    p.add_argument("--throughput-images", type=int, default=100, help="images for throughput")
    p.add_argument("--associations", type=int, default=2, help="concurrent storescu senders")
    p.add_argument("--receive-rounds", type=int, default=2, help="alternating receive runs")
    p.add_argument("--profile-images", type=int, default=20, help="images sampled by py-spy")
    p.add_argument("--rows", type=int, default=4096, help="image rows (default 4096)")
    p.add_argument("--columns", type=int, default=3328, help="image columns (default 3328)")
    p.add_argument("--bits-stored", type=int, default=14, choices=range(9, 17), metavar="9..16")
    p.add_argument(
        "--node-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="environment of the node under test (repeatable): a setting such as "
        "MAMMOSEG_WORKERS=2, or e.g. MALLOC_ARENA_MAX=2",
    )
    p.add_argument("--token", help="viewer token if the node's read API needs one")
    p.add_argument("--work-dir", type=Path, help="keep images and logs here (default: temporary)")
    p.add_argument("--json", dest="json_path", type=Path, help="also write the figures as JSON")
    p.add_argument(
        "--markdown", dest="markdown_path", type=Path, help="also write the report as Markdown"
    )


def options_from_args(args: argparse.Namespace) -> BenchOptions:
    """Validate parsed flags; raise :class:`BenchUsageError` naming a bad one."""
    sections = tuple(s.strip() for s in str(args.sections).split(",") if s.strip())
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown or not sections:
        raise BenchUsageError(f"--sections: unknown {unknown or 'empty'}; choose from {SECTIONS}")
    counts = {
        "--threads": (args.threads, 0),
        "--repeats": (args.repeats, 1),
        "--latency-images": (args.latency_images, 1),
        "--throughput-images": (args.throughput_images, 1),
        "--associations": (args.associations, 1),
        "--receive-rounds": (args.receive_rounds, 1),
        "--profile-images": (args.profile_images, 1),
        "--rows": (args.rows, 64),
        "--columns": (args.columns, 64),
    }
    for flag, (value, least) in counts.items():
        if value < least:
            raise BenchUsageError(f"{flag} must be >= {least}, got {value}")
    node_env = []
    for item in args.node_env:
        key, sep, value = str(item).partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise BenchUsageError(f"--node-env wants KEY=VALUE, got {item!r}")
        node_env.append((key, value))
    return BenchOptions(
        sections=tuple(s for s in SECTIONS if s in sections),
        model=args.model,
        int8=args.int8,
        keras_weights=args.keras_weights,
        threads=args.threads,
        repeats=args.repeats,
        latency_images=args.latency_images,
        throughput_images=args.throughput_images,
        associations=args.associations,
        receive_rounds=args.receive_rounds,
        profile_images=args.profile_images,
        rows=args.rows,
        columns=args.columns,
        bits_stored=args.bits_stored,
        node_env=tuple(node_env),
        token=args.token,
        work_dir=args.work_dir,
        json_path=args.json_path,
        markdown_path=args.markdown_path,
    )


def parse_args(argv: Sequence[str]) -> BenchOptions:
    parser = argparse.ArgumentParser(prog="mammoseg bench", description=__doc__)
    add_arguments(parser)
    return options_from_args(parser.parse_args(list(argv)))


# --------------------------------------------------------------------------- report


@dataclass(frozen=True)
class Row:
    """One line of the summary: a figure, its target, and whether the target is met."""

    figure: str
    value: str
    target: str = ""
    met: bool | None = None


@dataclass(frozen=True)
class Table:
    title: str
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    note: str = ""


@dataclass
class Report:
    started: str
    machine: dict[str, str]
    command: str
    rows: list[Row] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)

    def skip(self, section: str, reason: str) -> None:
        self.rows.append(Row(section, reason))
        self.notes.append(f"{section}: {reason}")


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linear between closest ranks (numpy's default)."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"q must be in [0, 100], got {q}")
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub Markdown table; ``|`` in cells is escaped, numbers right-aligned."""

    def cell(text: str) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    widths = [len(cell(h)) for h in header]
    for row in rows:
        if len(row) != len(header):
            raise ValueError(f"row {row!r} has {len(row)} cells, header has {len(header)}")
        widths = [max(w, len(cell(c))) for w, c in zip(widths, row, strict=True)]
    numeric = [bool(rows) and all(_looks_numeric(r[i]) for r in rows) for i in range(len(header))]
    lines = [
        "| " + " | ".join(cell(h).ljust(w) for h, w in zip(header, widths, strict=True)) + " |",
        "|"
        + "|".join(
            ("-" * (w + 1) + ":") if num else ("-" * (w + 2))
            for w, num in zip(widths, numeric, strict=True)
        )
        + "|",
    ]
    for row in rows:
        cells = [
            cell(c).rjust(w) if num else cell(c).ljust(w)
            for c, w, num in zip(row, widths, numeric, strict=True)
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _looks_numeric(text: str) -> bool:
    try:
        float(str(text).split()[0].rstrip("x%"))
    except (ValueError, IndexError):
        return False
    return True


def verdict(met: bool | None) -> str:
    return {True: "met", False: "MISSED", None: ""}[met]


def render(report: Report) -> str:
    """The whole report as Markdown: header, summary, detail tables, notes."""
    lines = [
        f"mammoseg bench, {report.started}",
        "",
        "Machine: " + "; ".join(f"{k} {v}" for k, v in report.machine.items()),
        "",
        f"Command: `{report.command}`",
        "",
        markdown_table(
            ("figure", "measured", "target", ""),
            [(r.figure, r.value, r.target, verdict(r.met)) for r in report.rows],
        ),
    ]
    for table in report.tables:
        lines += ["", f"**{table.title}**", "", markdown_table(table.header, table.rows)]
        if table.note:
            lines += ["", table.note]
    if report.notes:
        lines += ["", "Notes:", ""] + [f"- {n}" for n in report.notes]
    return "\n".join(lines) + "\n"


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def machine_description(threads: int) -> dict[str, str]:
    """CPU, cores, memory, software versions: no host name, nothing identifying."""
    cpu = platform.processor() or platform.machine()
    flags = ""
    try:
        info = Path("/proc/cpuinfo").read_text()
        for line in info.splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = line
                break
    except OSError:
        pass
    simd = "AVX-512" if " avx512f" in flags else "AVX2" if " avx2" in flags else "no AVX2"
    memory = "unknown"
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        memory = f"{kb / 1024**2:.0f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    import onnxruntime

    return {
        "CPU": f"{cpu} ({simd})",
        "cores": str(os.cpu_count()),
        "threads used": str(threads),
        "memory": memory,
        "OS": f"{platform.system()} {platform.release()}",
        "Python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__,
        "load average at start": load_average(),
    }


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
    candidate = Path(__file__).resolve().parents[1] / "runs" / "ship"
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
    from service import bench_model as bm

    threads = options.thread_count
    model = options.model or default_model()
    session = bm.load_session(model, threads)
    contract = bm.read_contract_of(session)
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
    from service import bench_model as bm

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
    from service import bench_model as bm

    a = bm.predict(session, inputs) >= threshold
    b = bm.predict(int8, inputs) >= threshold
    dice = bm.mask_dice(a, b)
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


def _prepare_images(options: BenchOptions, root: Path) -> Workspace:
    from pydicom import dcmread

    from service.bench_images import ImageSpec, write_mammograms

    spec = ImageSpec(rows=options.rows, columns=options.columns, bits_stored=options.bits_stored)
    sections = set(options.sections)
    latency = options.latency_images + 1 if "latency" in sections else 0
    load = 0
    if sections & {"throughput", "receive"}:
        load = options.throughput_images
    if "profile" in sections:
        load = max(load, options.profile_images)
    files = write_mammograms(root / "images", max(1, latency + load), spec)
    uids = {f: str(dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}
    return Workspace(root, files[:latency], files[latency:], uids)


def _node_env(options: BenchOptions) -> dict[str, str]:
    # The node's own disk watermark would refuse images on a nearly full bench disk.
    return {"MAMMOSEG_MIN_FREE_MB": "0", **dict(options.node_env)}


def run_node_parts(options: BenchOptions, report: Report, ws: Workspace) -> None:
    """Latency, throughput and memory on one node with a storescp destination."""
    from service import bench_node as bn

    tools = bn.find_dcmtk()
    sections = set(options.sections)
    with bn.storescp(tools, ws.root / "destination") as dest_port:
        with bn.running_node(
            ws.root / "node",
            destination=f"{bn.DEST_AET}@127.0.0.1:{dest_port}",
            env=_node_env(options),
            model_path=options.model,
            token=options.token,
        ) as node:
            time.sleep(2.0)
            idle_kb = node.status_kb("VmRSS")
            report.figures["memory"] = {"idle_rss_mb": idle_kb / 1024}
            if "latency" in sections:
                _latency(options, report, ws, tools, node)
            peak_kb = 0
            if "throughput" in sections:
                peak_kb = _throughput(options, report, ws, tools, node)
            _memory(report, node, idle_kb, peak_kb)


def _latency(options: BenchOptions, report: Report, ws: Workspace, tools: Any, node: Any) -> None:
    from service import bench_node as bn

    per_image = []
    for index, path in enumerate(ws.latency_files):
        submitted = time.time()
        bn.send_all(tools, node.dicom_port, [path], called=bn.NODE_AET, associations=1)
        job = bn.wait_for_jobs(node, [ws.uids[path]], timeout_s=300, interval_s=0.2)
        if index == 0:
            continue  # warm-up: first-call costs (page cache, lazy imports)
        per_image.append(bn.stage_times(job[ws.uids[path]]["timings"], submitted))
    totals = [s["total"] for s in per_image]
    p50, p95 = percentile(totals, 50), percentile(totals, 95)
    report.figures["latency"] = {"per_image": per_image, "p50_s": p50, "p95_s": p95}
    report.rows.append(
        Row(
            f"end to end, s per image, p50 / p95 ({len(per_image)} images)",
            f"{p50:.2f} / {p95:.2f}",
            f"p50 <= {TARGET_P50_S}",
            p50 <= TARGET_P50_S,
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


def _throughput(options: BenchOptions, report: Report, ws: Workspace, tools: Any, node: Any) -> int:
    from service import bench_node as bn

    files = ws.load_files[: options.throughput_images]
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
    report.figures["throughput"] = {
        "images": len(files),
        "associations": options.associations,
        "seconds": elapsed,
        "per_minute": per_minute,
        "steady_per_minute": steady,
    }
    report.rows.append(
        Row(
            f"throughput, {len(files)} images over {options.associations} associations",
            f"{per_minute:.1f} /min (steady {steady:.1f})",
            f">= {TARGET_PER_MINUTE:.0f} /min",
            per_minute >= TARGET_PER_MINUTE,
        )
    )
    return int(sampler.peak_kb)


def _memory(report: Report, node: Any, idle_kb: int, peak_kb: int) -> None:
    hwm_kb = node.status_kb("VmHWM")
    peak_mb = max(peak_kb, hwm_kb) / 1024
    tensorflow = node.tensorflow_mapped()
    report.figures["memory"].update(peak_rss_mb=peak_mb, tensorflow_mapped=tensorflow)
    report.rows.append(
        Row(
            "node RSS idle / peak (VmHWM)",
            f"{idle_kb / 1024:.0f} / {peak_mb:.0f} MB",
            f"<= {TARGET_RSS_MB:.0f} MB",
            peak_mb <= TARGET_RSS_MB,
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
    from service import bench_node as bn

    tools = bn.find_dcmtk()
    files = ws.load_files[: options.throughput_images]
    node_s: list[float] = []
    dcmtk_s: list[float] = []
    env = {**_node_env(options), "MAMMOSEG_POLL_INTERVAL_S": str(bn.PARKED_POLL_INTERVAL_S)}
    for round_ in range(options.receive_rounds):
        work = ws.root / f"receive-{round_}"
        with bn.running_node(
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
    mb = sum(f.stat().st_size for f in files) / 1e6
    report.figures["receive"] = {
        "images": len(files),
        "megabytes": mb,
        "node_s": node_s,
        "storescp_s": dcmtk_s,
        "ratio": ratio,
    }
    report.rows.append(
        Row(
            f"receive, node / storescp ({len(files)} images, {mb:.0f} MB, "
            f"best of {options.receive_rounds})",
            f"{ratio:.2f} ({node_rate:.1f} vs {dcmtk_rate:.1f} images/s)",
            f">= {TARGET_RECEIVE_RATIO}",
            ratio >= TARGET_RECEIVE_RATIO,
        )
    )


def run_profile(options: BenchOptions, report: Report, ws: Workspace) -> None:
    """py-spy samples of a node working through ``profile_images`` images."""
    from service import bench_node as bn

    if bn.py_spy_path() is None:
        report.skip("profile", "skipped: py-spy is not installed (pip install py-spy)")
        return
    tools = bn.find_dcmtk()
    files = ws.load_files[: options.profile_images]
    work = ws.root / "profile"
    raw = work / "py-spy.txt"
    with bn.storescp(tools, work / "destination") as dest_port:
        with bn.running_node(
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
    from service.bench_node import BenchError

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
            log("bench: writing full-size images ...")
            ws = _prepare_images(options, root)
            steps: list[tuple[str, Callable[[BenchOptions, Report, Workspace], None]]] = []
            if sections & {"latency", "throughput"}:
                steps.append(("latency / throughput / memory", run_node_parts))
            if "receive" in sections:
                steps.append(("receive", run_receive))
            if "profile" in sections:
                steps.append(("profile", run_profile))
            for name, step in steps:
                log(f"bench: {name} ...")
                try:
                    step(options, report, ws)
                except BenchError as exc:
                    report.skip(name, f"not run: {exc}")
    finally:
        if owned:
            shutil.rmtree(root, ignore_errors=True)
    report.machine["load average at end"] = load_average()
    return report


def main(args: argparse.Namespace) -> int:
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
