"""Per-step timings and peak memory of ``process_instance`` on full-size bench images.

docs/performance.md, "Build stage, round two". In one process: bench images
(``service.testkit``, 3328 x 4096) go through ``service.pipeline.process_instance``
after a warm-up, ROUNDS times; each step is timed by wrapping the function the
pipeline calls (a name the code under test lacks is skipped, so the same script
times older code: run it with ``PYTHONPATH`` set to an unpacked
``git archive HEAD service dicom_node``). One model-time (ONNX Runtime's
``session.run`` at batch 1, best of 10) is measured before, between and after
the rounds, and every figure is also given in model-times. VmHWM is the
process's peak RSS, after the last image.

    .venv/bin/python scripts/build_stage.py --rounds 2
"""

from __future__ import annotations

import argparse
import functools
import importlib
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

#: (module, function) pairs wrapped and timed, old names and new.
STEPS = [
    ("service.pipeline", "read_instance"),
    ("service.pipeline", "display_image"),
    ("service.inference", "to_model_input"),
    ("service.inference", "to_source_probability"),
    ("service.segmentation", "find_lesions"),
    ("service.segmentation", "find_lesions_in_map"),
    ("service.pipeline", "overlay_gray"),
    ("service.pipeline", "build_overlay_capture"),
    ("service.pipeline", "build_segmentation"),
    ("service.pipeline", "build_measurement_report"),
    ("service.pipeline", "write_results"),
]


def _wrap(times: dict[str, float], module: str, name: str) -> None:
    target = importlib.import_module(module)
    function = getattr(target, name, None)
    if function is None:
        return

    @functools.wraps(function)
    def timed(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            times[name] = times.get(name, 0.0) + time.perf_counter() - start

    setattr(target, name, timed)


def _status_mb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1]) // 1024
    return -1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--images", type=int, default=4, help="bench images (4 variants)")
    parser.add_argument("--folder", type=Path, help="reuse mg*.dcm here (default: make them)")
    args = parser.parse_args()

    times: dict[str, float] = {}
    for module, name in STEPS:
        _wrap(times, module, name)
    from service.inference import load_segmenter
    from service.pipeline import PipelineOptions, process_instance
    from service.settings import DEFAULT_MODEL
    from service.testkit.synthetic import ImageSpec, example_provenance, write_mammograms

    with tempfile.TemporaryDirectory() as tmp:
        folder = args.folder or Path(tmp) / "images"
        images = sorted(folder.glob("mg*.dcm")) if args.folder else []
        if not images:
            images = write_mammograms(folder, args.images, ImageSpec())
        segmenter = load_segmenter(Path(DEFAULT_MODEL))
        contract = segmenter.contract
        options = PipelineOptions(
            provenance=example_provenance(),
            outbox_dir=Path(tmp) / "outbox",
            seg_series_number=9901,
            sc_series_number=9902,
            sc_max_size=2048,
            min_lesion_area_mm2=10.0,
            threshold=contract.threshold,
            process_for_processing=False,
            sc_compression="jpeg",
        )
        rng = np.random.default_rng(0)
        tensor = np.ascontiguousarray(
            rng.random((1, contract.input_height, contract.input_width, 3), dtype=np.float32)
        )
        if contract.input_layout == "NCHW":
            tensor = np.ascontiguousarray(tensor.transpose(0, 3, 1, 2))

        def model_time() -> float:
            best = float("inf")
            for _ in range(10):
                start = time.perf_counter()
                segmenter.session.run([contract.output_name], {contract.input_name: tensor})
                best = min(best, time.perf_counter() - start)
            return best

        process_instance(images[0], 0, segmenter, options)  # warm-up: caches, arenas
        figures: dict[str, list[float]] = defaultdict(list)
        models = [model_time()]
        lesions = []
        for round_ in range(args.rounds):
            for index, image in enumerate(images):
                times.clear()
                start = time.perf_counter()
                results = process_instance(
                    image, 1 + round_ * len(images) + index, segmenter, options
                )
                figures["total"].append(time.perf_counter() - start)
                for stage, seconds in results.timings.items():
                    figures[f"stage {stage}"].append(seconds)
                for step, seconds in times.items():
                    figures[f"step {step}"].append(seconds)
                lesions.append(len(results.segmentation.lesions))
            models.append(model_time())
        model = min(models)
        print(f"code: {Path(importlib.import_module('service').__file__ or '').parent.parent}")
        print(f"model-time: {model * 1e3:.1f} ms (best of 10, {len(models)} times)")
        count, typical = len(figures["total"]), statistics.median(lesions)
        print(f"images: {count}; lesions per image: median {typical}")
        print(f"VmHWM: {_status_mb('VmHWM')} MB; VmRSS now: {_status_mb('VmRSS')} MB")
        _table(figures, model)


def _table(figures: dict[str, list[float]], model: float) -> None:
    def cell(seconds: float) -> str:
        return f"{seconds * 1e3:.0f}"

    print("| figure | median ms | best ms | median model-times |")
    print("|---|--:|--:|--:|")
    for name, values in figures.items():
        median = statistics.median(values)
        print(f"| {name} | {cell(median)} | {cell(min(values))} | {median / model:.1f} |")


if __name__ == "__main__":
    main()
