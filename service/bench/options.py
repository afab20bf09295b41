"""The flags of ``mammoseg bench`` and the options they make (argparse only: cheap to import).

``service.cli`` hands ``mammoseg bench ...`` to :func:`service.bench.run.main`
without importing this package until the ``bench`` command is chosen.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

SECTIONS = ("model", "latency", "throughput", "growth", "receive", "profile")
#: The cost-growth sizes, rows x columns (issue 14: 1664x2048, 3328x4096, 4096x5120 wide x high).
GROWTH_SIZES = ((2048, 1664), (4096, 3328), (5120, 4096))

#: ``mammoseg --help``'s line for the command, and the description of ``mammoseg bench --help``.
HELP = "measure the model, the node end to end, throughput, receive and memory"
DESCRIPTION = "Print a table of figures taken in one run (docs/performance.md)."


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
    growth_images: int = 5
    growth_sizes: tuple[tuple[int, int], ...] = GROWTH_SIZES
    rows: int = 4096
    columns: int = 3328
    bits_stored: int = 14
    node_env: tuple[tuple[str, str], ...] = ()
    peers_nodelay: bool = False
    token: str | None = None
    work_dir: Path | None = None
    json_path: Path | None = None
    markdown_path: Path | None = None

    @property
    def thread_count(self) -> int:
        return self.threads or os.cpu_count() or 1


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``mammoseg bench`` flags."""
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
    p.add_argument(
        "--growth-images", type=int, default=5, help="images per size for the cost growth"
    )
    p.add_argument(
        "--growth-sizes",
        default=",".join(f"{r}x{c}" for r, c in GROWTH_SIZES),
        help="ROWSxCOLUMNS,... for the cost growth (default: the issue's three sizes)",
    )
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
    p.add_argument(
        "--peers-nodelay",
        action="store_true",
        help="run DCMTK storescu/storescp with TCP_NODELAY=1: without it (DCMTK as "
        "installed) each of their messages may wait ~40 ms for a delayed ACK, on their side",
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
        "--growth-images": (args.growth_images, 1),
        "--rows": (args.rows, 64),
        "--columns": (args.columns, 64),
    }
    for flag, (value, least) in counts.items():
        if value < least:
            raise BenchUsageError(f"{flag} must be >= {least}, got {value}")
    growth_sizes = []
    for item in str(args.growth_sizes).split(","):
        match = re.fullmatch(r"\s*(\d+)x(\d+)\s*", item)
        if match is None or min(int(match[1]), int(match[2])) < 64:
            raise BenchUsageError(f"--growth-sizes wants ROWSxCOLUMNS (each >= 64), got {item!r}")
        growth_sizes.append((int(match[1]), int(match[2])))
    if len(growth_sizes) < 2:
        raise BenchUsageError("--growth-sizes needs at least two sizes to compare")
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
        growth_images=args.growth_images,
        growth_sizes=tuple(growth_sizes),
        rows=args.rows,
        columns=args.columns,
        bits_stored=args.bits_stored,
        node_env=tuple(node_env),
        peers_nodelay=bool(args.peers_nodelay),
        token=args.token,
        work_dir=args.work_dir,
        json_path=args.json_path,
        markdown_path=args.markdown_path,
    )


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``mammoseg bench`` (prog and description as ``mammoseg bench --help``)."""
    parser = argparse.ArgumentParser(prog="mammoseg bench", description=DESCRIPTION)
    add_arguments(parser)
    return parser


def parse_args(argv: Sequence[str]) -> BenchOptions:
    return options_from_args(build_parser().parse_args(list(argv)))
