"""The report of ``mammoseg bench``: summary rows, detail tables, Markdown, the machine."""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


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
