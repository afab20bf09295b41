"""``mammoseg segment PATH... --out DIR``: the model on files, without a node.

For every input (PNG, JPEG, TIFF or DICOM) it writes ``<name>-mask.png`` at the
input's size (0 outside, 255 inside), ``<name>-overlay.png`` (red at alpha 0.4,
as the node's Secondary Capture) and ``<name>.json`` (lesions, areas, boxes,
probabilities). For a DICOM mammogram it also writes the node's results:
``<name>-seg.dcm``, ``<name>-sc.dcm`` and ``<name>-sr.dcm``. Needs the runtime
only (no TensorFlow).

A directory is walked (recursively, in name order): every file whose first bytes
show PNG, JPEG, TIFF or DICOM (PS3.10 7.1) is segmented, others (and DICOMDIR) are
skipped; the results mirror the directory's tree under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from dicom_node.spacing import pixel_spacing
from service.inference import Segmenter, load_segmenter
from service.pipeline import (
    JobFailed,
    JobSkipped,
    build_results,
    check_policy,
    decode_pixels,
    read_instance,
    segment_instance,
    write_results,
)
from service.segmentation import LesionRules, lesion_view
from service.settings import Settings, SettingsError, load_settings
from service.upload import (
    DecodedImage,
    UploadError,
    UploadResult,
    mask_png,
    overlay_png,
    segment_upload,
    sniff,
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "paths",
        nargs="+",
        type=Path,
        help="images (PNG, JPEG, TIFF or DICOM), or directories walked for them",
    )
    p.add_argument("--out", type=Path, required=True, help="folder for the results")
    p.add_argument("--model-path", type=Path, help="ONNX model (default: the shipped model)")
    p.add_argument("--threshold", type=float, help="probability threshold (default: the model's)")
    p.add_argument("--min-lesion-area-mm2", type=float, help="drop smaller regions (default 10)")
    p.add_argument(
        "--pixel-spacing-mm",
        type=float,
        help="for pictures (PNG, JPEG, TIFF): mm per pixel; DICOM files use their own",
    )


SNIFF_BYTES = 256  # enough for DICOM's preamble and 'DICM' (PS3.10 7.1)


def _is_image(path: Path, relative: Path) -> bool:
    """Hidden files and folders (``relative`` to the walked directory) and DICOMDIR are not."""
    if path.name.upper() == "DICOMDIR" or any(part.startswith(".") for part in relative.parts):
        return False
    try:
        with path.open("rb") as fh:
            return sniff(fh.read(SNIFF_BYTES)) is not None
    except OSError:
        return False


def input_files(paths: list[Path]) -> Iterator[tuple[Path, Path]]:
    """Each input file with the folder (relative to ``--out``) its results go to.

    A file named on the command line goes to ``--out`` itself; the files found in a
    directory go to the same relative folder as in that directory.
    """
    for path in paths:
        if not path.is_dir():
            yield path, Path()
            continue
        for found in sorted(path.rglob("*")):
            relative = found.relative_to(path)
            if found.is_file() and _is_image(found, relative):
                yield found, relative.parent


def segment_file(
    path: Path, out: Path, segmenter: Segmenter, settings: Settings, pixel_spacing_mm: float | None
) -> dict[str, object]:
    """Write the outputs for one file; returns its summary (also written as JSON).

    The model runs once per file. A DICOM file goes through the node's own steps
    (:mod:`service.pipeline`), so its PNG/JSON and its SEG/SC/SR show the same
    lesions, measured with the file's own spacing (``pixel_spacing_mm`` is for
    pictures).
    """
    data = path.read_bytes()
    dicom_results: dict[str, str] = {}
    if sniff(data) == "DICOM":
        result, dicom_results = _segment_dicom(path, out, segmenter, settings)
    else:
        rules = LesionRules.of(settings, segmenter.contract)
        result = segment_upload(data, None, segmenter, rules, pixel_spacing_mm=pixel_spacing_mm)
    stem = path.stem
    (out / f"{stem}-mask.png").write_bytes(mask_png(result.mask))
    (out / f"{stem}-overlay.png").write_bytes(overlay_png(result))
    summary: dict[str, object] = {
        "input": str(path),
        "format": result.image.format,
        "rows": int(result.mask.shape[0]),
        "columns": int(result.mask.shape[1]),
        "pixel_spacing_mm": result.image.spacing_mm,
        "spacing_source": result.image.spacing_source,
        "threshold": result.threshold,
        "lesions": [lesion_view(lesion) for lesion in result.lesions],
        "dicom_results": dicom_results,
    }
    (out / f"{stem}.json").write_text(json.dumps(summary, indent=1, default=str))
    return summary


def _segment_dicom(
    path: Path, out: Path, segmenter: Segmenter, settings: Settings
) -> tuple[UploadResult, dict[str, str]]:
    """One DICOM file through the pipeline's steps; SEG/SC/SR unless its policy says no."""
    from service.node import pipeline_options

    options = pipeline_options(settings, segmenter)
    start = time.perf_counter()
    try:
        ds = read_instance(path)
        display = decode_pixels(ds, options)
    except JobFailed as exc:
        raise UploadError(str(exc)) from exc
    decoded = time.perf_counter()
    segmentation = segment_instance(ds, display, segmenter, options)
    spacing = pixel_spacing(ds)
    image = DecodedImage(
        pixels=display.pixels,
        format="DICOM",
        spacing_mm=segmentation.spacing_mm,
        spacing_source=spacing.source if spacing else None,
        padding=display.padding,
    )
    result = UploadResult(
        image=image,
        segmentation=segmentation,
        seconds_decode=decoded - start,
        seconds_inference=time.perf_counter() - decoded,
    )
    try:
        check_policy(ds, options)
        built = build_results(ds, display, segmentation, options)
    except (JobFailed, JobSkipped) as exc:
        return result, {"not_written": str(exc)}
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        written = {}
        for kind, produced in write_results(built, Path(tmp) / "results").items():
            target = out / f"{path.stem}-{kind}.dcm"
            shutil.move(produced, target)
            written[kind] = str(target)
    return result, written


def main(args: argparse.Namespace) -> int:
    overrides = {
        "model_path": args.model_path,
        "threshold": args.threshold,
        "min_lesion_area_mm2": args.min_lesion_area_mm2,
        "min_free_mb": 0,
        "data_dir": args.out,
    }
    try:
        settings = load_settings(None, **overrides)
    except SettingsError as exc:
        print(f"mammoseg segment: {exc}", file=sys.stderr)
        return 2
    from service.contract import ContractError

    try:
        segmenter = load_segmenter(settings.model_path, threads=settings.inference_threads)
    except ContractError as exc:
        print(f"mammoseg segment: {exc}", file=sys.stderr)
        return 3
    args.out.mkdir(parents=True, exist_ok=True)
    failures = 0
    walked = 0
    for path, folder in input_files(args.paths):
        walked += 1
        out = args.out / folder
        try:
            out.mkdir(parents=True, exist_ok=True)
            summary = segment_file(path, out, segmenter, settings, args.pixel_spacing_mm)
        except (UploadError, OSError) as exc:
            failures += 1
            print(f"{path}: not segmented: {exc}", file=sys.stderr)
            continue
        lesions = list(summary["lesions"])  # type: ignore[call-overload]
        print(
            f"{path}: {len(lesions)} lesion(s) -> {out}/{path.stem}-*.png/json"
            + (" + SEG/SC/SR" if summary["dicom_results"] else "")
        )
    if walked == 0:
        print("mammoseg segment: no PNG, JPEG, TIFF or DICOM file found", file=sys.stderr)
        return 1
    return 1 if failures else 0
