"""``mammoseg train | evaluate | export | make-dataset``: the training side's command line.

Importing this module imports neither TensorFlow nor any heavy library, so
the service's console script can dispatch here and, where the ``train``
extra is missing, say so instead of failing with a traceback.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from model_export.bundled import BUNDLED_CDDCESM, BUNDLED_DDSM66

TRAIN_EXTRA_MESSAGE = "this command needs the train extra: pip install 'mammoseg[train]'"
EXIT_OK, EXIT_FAILED, EXIT_MISSING_EXTRA = 0, 1, 2


def _has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def train_extra_available(modules: Sequence[str] = ("tensorflow", "keras", "tf2onnx")) -> bool:
    return all(_has_module(name) for name in modules)


def _add_train(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from model_export.train import TrainConfig

    d = TrainConfig(data="", run_dir="")
    p = sub.add_parser(
        "train",
        help="two-phase training of a segmentation network (resumable)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--data", required=True, help="DMID folder or folder of image/mask pairs")
    p.add_argument(
        "--run-dir",
        required=True,
        help="folder for checkpoints, state, history and curves; rerun to resume",
    )
    p.add_argument(
        "--architecture",
        default=d.architecture,
        choices=["mobilenetv2-resunet", "mobilenetv2-unet", "unet", "resunet", "attention-unet"],
    )
    p.add_argument(
        "--encoder-weights",
        default=d.encoder_weights,
        help="'imagenet-local' (committed file), 'imagenet' (download), a path, or none",
    )
    p.add_argument("--input-size", type=int, default=d.input_size)
    p.add_argument(
        "--crop-to-breast",
        action="store_true",
        help="crop to the breast box before resizing (the contract will say so)",
    )
    p.add_argument(
        "--no-pad-to-square",
        dest="pad_to_square",
        action="store_false",
        help="resize the image as it is instead of zero-padding it to a centred square first",
    )
    p.add_argument("--split-file", help="split JSON to use or write (default RUN_DIR/split.json)")
    p.add_argument("--split-seed", type=int, default=d.split_seed)
    p.add_argument(
        "--include-unmasked", action="store_true", help="train images without a mask as empty masks"
    )
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--augment-copies", type=int, default=d.augment_copies)
    p.add_argument("--steps-per-epoch", type=int, default=None)
    p.add_argument("--phase1-epochs", type=int, default=d.phase1_epochs)
    p.add_argument("--phase1-lr", type=float, default=d.phase1_lr)
    p.add_argument("--phase2-epochs", type=int, default=d.phase2_epochs)
    p.add_argument("--phase2-lr", type=float, default=d.phase2_lr)
    p.add_argument(
        "--tversky-alpha", type=float, default=d.tversky_alpha, help="weight of false positives"
    )
    p.add_argument(
        "--tversky-beta", type=float, default=d.tversky_beta, help="weight of false negatives"
    )
    p.add_argument("--early-stopping-patience", type=int, default=d.early_stopping_patience)
    p.add_argument("--plateau-factor", type=float, default=d.plateau_factor)
    p.add_argument("--plateau-patience", type=int, default=d.plateau_patience)
    p.add_argument("--min-lr", type=float, default=d.min_lr)
    p.add_argument(
        "--phase2-bn",
        default=d.phase2_bn,
        choices=["frozen", "train"],
        help="phase 2: keep the encoder's BatchNorm in inference mode, or train it",
    )
    p.add_argument(
        "--bn-momentum",
        type=float,
        default=d.bn_momentum,
        help="BatchNorm momentum in phase 2 with --phase2-bn train",
    )
    p.add_argument("--init-weights", help="start a new run from these weights (.weights.h5)")
    p.add_argument("--bn-reestimate-batches", type=int, default=d.bn_reestimate_batches)
    p.add_argument(
        "--time-budget-min",
        type=float,
        default=None,
        help="stop after the epoch that passes this many minutes (resumable)",
    )
    p.add_argument("--log-every", type=int, default=d.log_every, help="batches between lines")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument(
        "--threads",
        type=int,
        default=d.intra_op_threads,
        help="TensorFlow intra-op threads (inter-op is 1)",
    )


def _add_make_dataset(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "make-dataset",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        help="write a lesion-insertion dataset (simulated masses in real mammograms)",
    )
    p.add_argument("--out", required=True, help="output folder (images/, masks/, lesions.json)")
    p.add_argument(
        "--cddcesm",
        nargs="?",
        const=str(BUNDLED_CDDCESM),
        default=None,
        metavar="DIR",
        help="write the REAL data instead: CDD-CESM views with radiologists' outlines "
        f"(default folder {BUNDLED_CDDCESM}), with dataset.json and a split by patient",
    )
    p.add_argument(
        "--subset",
        default="all",
        choices=["all", "has_mass_finding", "mass_only_findings"],
        help="with --cddcesm: which images (the masks cover every finding)",
    )
    p.add_argument("--split-seed", type=int, default=42, help="with --cddcesm")
    p.add_argument("--count", type=int, default=816)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--ddsm66",
        action="append",
        default=None,
        help="ddsm66 folder(s) with fgt_seg/ and fgt_seg_labels/ "
        f"(default {BUNDLED_DDSM66 / 'train_valid'})",
    )
    p.add_argument(
        "--dicom",
        action="append",
        default=[],
        help="DICOM background file or folder (breast found by thresholding)",
    )
    p.add_argument("--min-diameter-mm", type=float, default=3.0)
    p.add_argument("--max-diameter-mm", type=float, default=40.0)
    p.add_argument("--contrast", type=float, nargs=2, default=(0.12, 0.45))


def _add_export(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "export",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        help="export a trained Keras model to ONNX with its contract",
    )
    p.add_argument("--model", required=True, help="trained .keras file (or a run folder)")
    p.add_argument("--out", required=True, help="ONNX file to write")
    p.add_argument("--model-name", default="MobileNetV2-ResUNet")
    p.add_argument("--model-version", default="0.1.0")
    p.add_argument("--training-data", default="", help="one-line training data summary")
    p.add_argument("--val-dice", type=float, default=None)
    p.add_argument("--val-iou", type=float, default=None)
    p.add_argument("--val-split", default="validation")
    p.add_argument(
        "--metric",
        action="append",
        default=[],
        type=_metric,
        help="NAME=VALUE added to the contract's validation metrics (repeatable)",
    )
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument(
        "--crop-to-breast",
        action="store_true",
        default=None,
        help="crop to the breast box (default: as the training run's config.json says)",
    )
    p.add_argument("--data", help="image/mask folder for the parity check and INT8 calibration")
    p.add_argument("--parity-tolerance", type=float, default=1e-4)
    p.add_argument("--int8", help="also write a static INT8 (QDQ) model here")
    p.add_argument("--calibration-images", type=int, default=64)
    p.add_argument("--int8-min-dice", type=float, default=0.98)
    p.add_argument(
        "--int8-calibration", default="minmax", choices=["minmax", "percentile", "entropy"]
    )
    p.add_argument(
        "--int8-fp32-head",
        type=int,
        default=0,
        metavar="N",
        help="keep the first N convolutions (and what precedes them) in fp32",
    )
    p.add_argument(
        "--int8-fp32-tail",
        type=int,
        default=0,
        metavar="N",
        help="keep the last N convolutions (and what follows them) in fp32",
    )


def _metric(text: str) -> tuple[str, float]:
    name, sep, value = text.partition("=")
    if not sep or not name.isidentifier():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    try:
        return name, float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{name}: {value!r} is not a number") from None


def _add_evaluate(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "evaluate",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        help="per-image and mean Dice/IoU of one or more models on a split",
    )
    p.add_argument(
        "--model",
        action="append",
        required=True,
        help="ONNX or .keras model, or baseline:brightest[@FRACTION] / baseline:otsu; "
        "repeat to compare",
    )
    p.add_argument("--name", action="append", default=None, help="label per --model")
    p.add_argument("--data", required=True, help="DMID folder or folder of image/mask pairs")
    p.add_argument("--split", default="all", choices=["all", "train", "val", "test"])
    p.add_argument("--split-file", help="split JSON (needed unless --split all)")
    p.add_argument("--out", required=True, help="folder for the tables, JSON and panels")
    p.add_argument("--panels", type=int, default=6, help="prediction panels to draw (0: none)")
    p.add_argument(
        "--resolution",
        default="source",
        choices=["source", "model"],
        help="score at the source image size (as served) or at model size",
    )
    p.add_argument("--input-size", type=int, default=256, help=".keras models only")
    p.add_argument(
        "--min-area-px",
        type=int,
        default=0,
        help="drop predicted components smaller than this (the node's min_lesion_area_mm2 "
        "in pixels of the data: 10 mm2 is 160 px at 0.25 mm)",
    )
    p.add_argument(
        "--baseline-fraction",
        type=float,
        default=None,
        help="share of the image the naive baseline marks (default: the median mask share "
        "of the split file's training images)",
    )


def _add_tune(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "tune",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        help="mean Dice by threshold and minimum lesion area on the validation split",
    )
    p.add_argument("--model", required=True, help="ONNX or .keras model (or a run folder)")
    p.add_argument("--data", required=True, help="image/mask folder")
    p.add_argument("--split-file", required=True, help="split JSON")
    p.add_argument("--split", default="val", choices=["train", "val"], help="never the test split")
    p.add_argument("--threshold", type=float, nargs="+", default=[0.3, 0.4, 0.5, 0.6, 0.7])
    p.add_argument("--min-area-px", type=int, nargs="+", default=[0, 25, 50, 100, 200])
    p.add_argument("--input-size", type=int, default=256, help=".keras models only")
    p.add_argument("--out", required=True, help="folder for tuning.json and tuning.md")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mammoseg", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_evaluate(sub)
    _add_tune(sub)
    _add_export(sub)
    _add_make_dataset(sub)
    return parser


def _run_train(args: argparse.Namespace) -> int:
    from model_export.train import TrainConfig, train

    encoder = None if str(args.encoder_weights).lower() == "none" else args.encoder_weights
    config = TrainConfig(
        data=str(args.data),
        run_dir=str(args.run_dir),
        architecture=args.architecture,
        encoder_weights=encoder,
        input_size=args.input_size,
        crop_to_breast=args.crop_to_breast,
        pad_to_square=args.pad_to_square,
        split_file=args.split_file,
        split_seed=args.split_seed,
        include_unmasked=args.include_unmasked,
        batch_size=args.batch_size,
        augment_copies=args.augment_copies,
        steps_per_epoch=args.steps_per_epoch,
        phase1_epochs=args.phase1_epochs,
        phase1_lr=args.phase1_lr,
        phase2_epochs=args.phase2_epochs,
        phase2_lr=args.phase2_lr,
        tversky_alpha=args.tversky_alpha,
        tversky_beta=args.tversky_beta,
        early_stopping_patience=args.early_stopping_patience,
        plateau_factor=args.plateau_factor,
        plateau_patience=args.plateau_patience,
        min_lr=args.min_lr,
        phase2_bn=args.phase2_bn,
        bn_momentum=args.bn_momentum,
        init_weights=args.init_weights,
        bn_reestimate_batches=args.bn_reestimate_batches,
        time_budget_min=args.time_budget_min,
        log_every=args.log_every,
        seed=args.seed,
        intra_op_threads=args.threads,
    )
    train(config)
    return EXIT_OK


def _run_make_dataset(args: argparse.Namespace) -> int:
    if args.cddcesm is not None:
        from model_export.cddcesm import write_cddcesm_dataset

        out, split = write_cddcesm_dataset(
            args.out, root=args.cddcesm, subset=args.subset, seed=args.split_seed
        )
        counts = ", ".join(f"{len(v)} {k}" for k, v in split.items())
        print(f"wrote the {args.subset} subset of {args.cddcesm} to {out} ({counts}; by patient)")
        return EXIT_OK
    from model_export.lesions import (
        InsertionConfig,
        load_ddsm66_backgrounds,
        load_dicom_background,
        write_lesion_dataset,
    )

    backgrounds = []
    for folder in args.ddsm66 or [str(BUNDLED_DDSM66 / "train_valid")]:
        backgrounds += load_ddsm66_backgrounds(folder)
    for item in args.dicom:
        path = Path(item)
        files = sorted(path.rglob("*.dcm")) if path.is_dir() else [path]
        backgrounds += [load_dicom_background(f) for f in files]
    config = InsertionConfig(
        min_diameter_mm=args.min_diameter_mm,
        max_diameter_mm=args.max_diameter_mm,
        contrast=tuple(args.contrast),
    )
    out = write_lesion_dataset(backgrounds, args.out, args.count, seed=args.seed, config=config)
    print(f"wrote {args.count} images from {len(backgrounds)} backgrounds to {out}")
    return EXIT_OK


def _run_export(args: argparse.Namespace) -> int:
    from model_export.export import ExportOptions, export_model
    from model_export.train import configure_tensorflow

    configure_tensorflow(2, 1)
    options = ExportOptions(
        model_name=args.model_name,
        model_version=args.model_version,
        training_data=args.training_data,
        val_dice=args.val_dice,
        val_iou=args.val_iou,
        val_split=args.val_split,
        extra_metrics=tuple(args.metric),
        threshold=args.threshold,
        crop_to_breast=args.crop_to_breast,
        parity_tolerance=args.parity_tolerance,
        int8_path=args.int8,
        calibration_images=args.calibration_images,
        int8_min_dice=args.int8_min_dice,
        int8_calibration=args.int8_calibration,
        int8_fp32_head=args.int8_fp32_head,
        int8_fp32_tail=args.int8_fp32_tail,
    )
    report = export_model(args.model, args.out, options, data=args.data)
    return EXIT_FAILED if report.int8_refused else EXIT_OK


def _run_evaluate(args: argparse.Namespace) -> int:
    from model_export.evaluate import evaluate_models

    evaluate_models(
        args.model,
        args.data,
        args.out,
        names=args.name,
        split=args.split,
        split_file=args.split_file,
        panels=args.panels,
        resolution=args.resolution,
        input_size=args.input_size,
        min_area_px=args.min_area_px,
        baseline_fraction=args.baseline_fraction,
    )
    return EXIT_OK


def _run_tune(args: argparse.Namespace) -> int:
    from model_export.evaluate import tune_postprocessing, tuning_markdown

    result = tune_postprocessing(
        args.model,
        args.data,
        args.split_file,
        split=args.split,
        thresholds=args.threshold,
        min_areas_px=args.min_area_px,
        input_size=args.input_size,
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tuning.json").write_text(json.dumps(result, indent=2) + "\n")
    text = tuning_markdown(result)
    (out / "tuning.md").write_text(text)
    print(text, end="")
    return EXIT_OK


def _needs_tensorflow(args: argparse.Namespace) -> bool:
    if args.command in ("train", "export"):
        return True
    if args.command == "tune":
        return not str(args.model).lower().endswith(".onnx")
    if args.command == "evaluate":
        return any(
            not str(m).lower().endswith(".onnx") and not str(m).startswith("baseline:")
            for m in args.model
        )
    return False


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; returns the exit status (2: the train extra is missing)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if _needs_tensorflow(args) and not train_extra_available():
        print(TRAIN_EXTRA_MESSAGE, file=sys.stderr)
        return EXIT_MISSING_EXTRA
    if args.command == "train" and not _has_module("albumentations"):
        print(TRAIN_EXTRA_MESSAGE, file=sys.stderr)
        return EXIT_MISSING_EXTRA
    handlers = {
        "train": _run_train,
        "make-dataset": _run_make_dataset,
        "export": _run_export,
        "evaluate": _run_evaluate,
        "tune": _run_tune,
    }
    try:
        return handlers[args.command](args)
    except (ValueError, RuntimeError, FileNotFoundError) as exc:
        print(f"mammoseg {args.command}: {exc}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    raise SystemExit(main())
