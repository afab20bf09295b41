"""Evaluation: per-image and mean Dice/IoU, a comparison table of models, prediction panels.

ONNX models are scored the way the node serves them: the source image goes
through :func:`service.preprocess.to_model_input`, the probability map back
to the source matrix with :func:`service.preprocess.to_source_probability`,
and is thresholded at the contract's threshold; Dice and IoU are computed
against the full-size mask (``resolution="source"``). ``resolution="model"``
scores at model resolution instead (what Keras' validation metrics see).
Keras models (a ``.keras`` file or a training run folder) get the
preprocessing their run's ``config.json`` names (input size, crop to the
breast); a bare ``.keras`` file gets ``--input-size`` and no crop.

Per-image convention: an image with no mass and no prediction scores 1.0.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from service.contract import ModelContract
from service.preprocess import (
    output_to_probability,
    threshold_mask,
    to_model_input,
    to_source_probability,
)


class EvaluationError(ValueError):
    """Nothing to evaluate, or models and names that do not match."""


@dataclass(frozen=True)
class ImageScore:
    key: str
    dice: float
    iou: float
    true_px: int
    predicted_px: int


@dataclass(frozen=True)
class ModelScore:
    name: str
    model: str
    images: tuple[ImageScore, ...]
    #: Weights in the model (ONNX initializers after tf2onnx's folding, or Keras' count).
    parameters: int | None = None
    #: Mean time of the model call alone per image (batch 1), in milliseconds.
    ms_per_image: float | None = None

    @property
    def mean_dice(self) -> float:
        return float(np.mean([s.dice for s in self.images]))

    @property
    def mean_iou(self) -> float:
        return float(np.mean([s.iou for s in self.images]))

    def mean_over(self, with_mass: bool) -> tuple[float, float, int]:
        chosen = [s for s in self.images if (s.true_px > 0) == with_mass]
        if not chosen:
            return float("nan"), float("nan"), 0
        return (
            float(np.mean([s.dice for s in chosen])),
            float(np.mean([s.iou for s in chosen])),
            len(chosen),
        )


def onnx_parameter_count(path: str | Path) -> int:
    """Number of weights stored in an ONNX file's initializers."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return sum(int(np.prod(init.dims)) for init in proto.graph.initializer)


def dice_iou(truth: np.ndarray, predicted: np.ndarray) -> tuple[float, float]:
    """Binary Dice and IoU of one image (1.0, 1.0 when both are empty)."""
    truth, predicted = truth.astype(bool), predicted.astype(bool)
    inter = int(np.logical_and(truth, predicted).sum())
    total = int(truth.sum()) + int(predicted.sum())
    if total == 0:
        return 1.0, 1.0
    return 2.0 * inter / total, inter / (total - inter)


class _Predictor:
    """Turns a [0, 1] source image into a source-size probability map."""

    def __init__(self, path: str, input_size: int) -> None:
        self.path = path
        if path.lower().endswith(".onnx"):
            from model_export.export import _session, read_contract

            self.contract = read_contract(path)
            self.session = _session(path)
            self.keras_model: Any = None
            self.parameters = onnx_parameter_count(path)
        else:
            from model_export.export import load_keras_model

            self.keras_model, info = load_keras_model(path)
            config = info.get("config", {})
            input_size = int(config.get("input_size", input_size))
            self.contract = ModelContract(
                model_name="keras",
                model_version="0",
                input_name="image",
                output_name="mask",
                input_height=input_size,
                input_width=input_size,
                crop_to_breast=bool(config.get("crop_to_breast", False)),
            )
            self.session = None
            self.parameters = int(self.keras_model.count_params())
        self.seconds = 0.0
        self.calls = 0

    def model_probability(self, tensor: np.ndarray) -> np.ndarray:
        started = time.perf_counter()
        if self.session is not None:
            out = self.session.run(None, {self.contract.input_name: tensor})[0]
        else:
            out = np.asarray(self.keras_model(tensor, training=False))
        self.seconds += time.perf_counter() - started
        self.calls += 1
        return output_to_probability(out, self.contract)

    def predict(self, image: np.ndarray, resolution: str) -> tuple[np.ndarray, np.ndarray, Any]:
        tensor, box = to_model_input(image, self.contract)
        prob = self.model_probability(tensor)
        if resolution == "source":
            prob = to_source_probability(prob, box, image.shape)
        return prob, tensor, box


def evaluate_model(
    path: str | Path,
    pairs: Sequence[Any],
    *,
    name: str | None = None,
    resolution: str = "source",
    input_size: int = 256,
    keep: int = 0,
    min_area_px: int = 0,
) -> tuple[ModelScore, list[dict[str, Any]]]:
    """Score one model on image/mask pairs; also return up to ``keep`` panel records.

    ``min_area_px`` drops predicted components smaller than that many pixels
    (at the scored resolution), as the node does with ``min_lesion_area_mm2``.
    """
    from model_export.datasets import prepare_pair, read_image, read_mask

    predictor = _Predictor(str(path), input_size)
    threshold = predictor.contract.threshold
    scores: list[ImageScore] = []
    kept: list[dict[str, Any]] = []
    for pair in pairs:
        image = read_image(pair.image)
        truth = read_mask(pair.mask) if pair.mask is not None else np.zeros(image.shape, bool)
        prob, _, _ = predictor.predict(image, resolution)
        if resolution == "source":
            shown_image, shown_truth = image, truth
        else:
            shown_image, small_truth = prepare_pair(image, truth, predictor.contract)
            shown_truth = small_truth.astype(bool)
        predicted = threshold_mask(prob, threshold, min_area_px=min_area_px)
        d, j = dice_iou(shown_truth, predicted)
        scores.append(ImageScore(pair.key, d, j, int(shown_truth.sum()), int(predicted.sum())))
        if len(kept) < keep:
            kept.append(
                {
                    "key": pair.key,
                    "image": shown_image,
                    "truth": shown_truth,
                    "prob": prob,
                    "predicted": predicted,
                    "dice": d,
                }
            )
    ms = 1000.0 * predictor.seconds / predictor.calls if predictor.calls else None
    score = ModelScore(name or Path(path).stem, str(path), tuple(scores), predictor.parameters, ms)
    return score, kept


def comparison_markdown(results: Sequence[ModelScore], *, title: str = "") -> str:
    """The comparison table: mean Dice/IoU over all images, over those with a mass, and empty."""
    lines = [f"## {title}", ""] if title else []
    lines += [
        "| model | images | mean Dice | mean IoU | Dice (with mass) | IoU (with mass) "
        "| Dice (no mass) | parameters | model ms/image |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        dm, im, nm = r.mean_over(True)
        de, _, ne = r.mean_over(False)
        params = f"{r.parameters / 1e6:.2f} M" if r.parameters is not None else "-"
        ms = f"{r.ms_per_image:.1f}" if r.ms_per_image is not None else "-"
        lines.append(
            f"| {r.name} | {len(r.images)} | {r.mean_dice:.4f} | {r.mean_iou:.4f} | "
            f"{dm:.4f} (n={nm}) | {im:.4f} | {de:.4f} (n={ne}) | {params} | {ms} |"
        )
    return "\n".join(lines) + "\n"


def plot_comparison(results: Sequence[ModelScore], path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r.name for r in results]
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(4.0, 1.6 * len(names) + 2), 3.6))
    ax.bar(x - 0.2, [r.mean_dice for r in results], 0.4, label="Dice")
    ax.bar(x + 0.2, [r.mean_iou for r in results], 0.4, label="IoU")
    for i, r in enumerate(results):
        ax.text(i - 0.2, r.mean_dice + 0.01, f"{r.mean_dice:.3f}", ha="center", fontsize=8)
        ax.text(i + 0.2, r.mean_iou + 0.01, f"{r.mean_iou:.3f}", ha="center", fontsize=8)
    ax.set_xticks(x, names, rotation=15)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("mean per image")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_panels(records: Sequence[dict[str, Any]], path: str | Path, title: str = "") -> None:
    """Per image: the image, ground truth (green) and the scored prediction (red, alpha 0.4)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not records:
        return
    fig, axes = plt.subplots(len(records), 3, figsize=(9, 3.2 * len(records)), squeeze=False)
    for row, rec in zip(axes, records, strict=True):
        row[0].imshow(rec["image"], cmap="gray", vmin=0, vmax=1)
        row[0].set_title(rec["key"], fontsize=8)
        row[1].imshow(rec["image"], cmap="gray", vmin=0, vmax=1)
        row[1].imshow(
            np.ma.masked_where(~rec["truth"], rec["truth"]),
            cmap="Greens",
            alpha=0.5,
            vmin=0,
            vmax=1,
        )
        row[1].set_title("ground truth", fontsize=8)
        row[2].imshow(rec["image"], cmap="gray", vmin=0, vmax=1)
        predicted = rec["predicted"]
        overlay = np.zeros((*predicted.shape, 4), dtype=np.float32)
        overlay[predicted] = (1.0, 0.0, 0.0, 0.4)
        row[2].imshow(overlay)
        row[2].set_title(f"prediction (Dice {rec['dice']:.3f})", fontsize=8)
        for ax in row:
            ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def evaluate_models(
    models: Sequence[str | Path],
    data: str | Path,
    out_dir: str | Path,
    *,
    names: Sequence[str] | None = None,
    split: str = "all",
    split_file: str | Path | None = None,
    panels: int = 6,
    resolution: str = "source",
    input_size: int = 256,
    min_area_px: int = 0,
) -> list[ModelScore]:
    """Evaluate each model on a split; write per-image JSON, Markdown + PNG comparison, panels."""
    from model_export.datasets import find_pairs, select

    if names and len(names) != len(models):
        raise EvaluationError("give one --name per --model")
    pairs = find_pairs(data, include_unmasked=True)
    if split != "all":
        if split_file is None:
            raise EvaluationError(f"--split {split} needs --split-file")
        keys = json.loads(Path(split_file).read_text())[split]
        pairs = select(pairs, keys)
    if not pairs:
        raise EvaluationError(f"no images in split {split!r} of {data}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for index, model in enumerate(models):
        name = names[index] if names else Path(model).stem
        score, kept = evaluate_model(
            model,
            pairs,
            name=name,
            resolution=resolution,
            input_size=input_size,
            keep=panels,
            min_area_px=min_area_px,
        )
        results.append(score)
        print(
            f"{name}: mean Dice {score.mean_dice:.4f}, mean IoU {score.mean_iou:.4f} over "
            f"{len(score.images)} images ({split}, {resolution} resolution)",
            flush=True,
        )
        slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
        (out / f"{slug}.per_image.json").write_text(
            json.dumps(
                {
                    "model": str(model),
                    "data": str(data),
                    "split": split,
                    "resolution": resolution,
                    "min_area_px": min_area_px,
                    "mean_dice": score.mean_dice,
                    "mean_iou": score.mean_iou,
                    "parameters": score.parameters,
                    "ms_per_image": score.ms_per_image,
                    "images": [s.__dict__ for s in score.images],
                },
                indent=1,
            )
        )
        if kept:
            plot_panels(kept, out / f"{slug}.panels.png", title=name)
    title = f"{Path(data).name}, split {split}, {resolution} resolution"
    if min_area_px:
        title += f", predicted components under {min_area_px} px dropped"
    table = comparison_markdown(results, title=title)
    (out / "comparison.md").write_text(table)
    plot_comparison(results, out / "comparison.png")
    print(table, flush=True)
    return results
