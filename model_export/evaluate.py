"""Evaluation: per-image and mean Dice/IoU, a comparison table of models, prediction panels.

ONNX models are scored the way the node serves them: the source image goes
through :func:`service.imaging.preprocess.to_model_input`, the probability map back
to the source matrix with :func:`service.imaging.preprocess.to_source_probability`,
and is thresholded at the contract's threshold; Dice and IoU are computed
against the full-size mask (``resolution="source"``). ``resolution="model"``
scores at model resolution instead (what Keras' validation metrics see).
Keras models (a ``.keras`` file or a training run folder) get the
preprocessing their run's ``config.json`` names (input size, crop to the
breast); a bare ``.keras`` file gets ``--input-size`` and no crop.

Per-image convention: an image with no mass and no prediction scores 1.0.

Besides Dice and IoU, every image records per-lesion detection: how many
outlined lesions (connected components of the truth) a predicted component
touches, and how many predicted components touch no lesion (false-positive
components). Means come with a 95 % bootstrap interval over images. The
first model is also compared with each of the others image by image: the mean
difference in Dice with a paired bootstrap interval (the same resampled images
for both) and how many images each one wins, which is what "better than a
baseline on these patients" has to rest on when the two intervals overlap. The
baselines of :mod:`model_export.baselines` are scored as if they were
models (``baseline:brightest``, ``baseline:otsu``). A data folder with a
``dataset.json`` (``make-dataset --cddcesm``) also gets the table for its
``has_mass_finding`` and ``mass_only_findings`` images.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from model_export import baselines
from service.contract import ModelContract
from service.imaging.lesions import threshold_mask
from service.imaging.preprocess import (
    output_to_probability,
    to_model_input,
    to_source_probability,
)


class EvaluationError(ValueError):
    """Nothing to evaluate, or models and names that do not match."""


BOOTSTRAP_SAMPLES = 2000
SUBSET_FLAGS = ("has_mass_finding", "mass_only_findings")


@dataclass(frozen=True)
class ImageScore:
    key: str
    dice: float
    iou: float
    true_px: int
    predicted_px: int
    #: Outlined lesions (truth components), and how many a predicted component touches.
    lesions: int = 0
    lesions_hit: int = 0
    #: Predicted components that touch no outlined lesion.
    false_positives: int = 0
    predicted_components: int = 0


def bootstrap_interval(
    values: Sequence[float], *, samples: int = BOOTSTRAP_SAMPLES, seed: int = 0
) -> tuple[float, float]:
    """95 % percentile bootstrap interval of the mean (resampling images)."""
    data = np.asarray(values, dtype=np.float64)
    if data.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, data.size, size=(samples, data.size))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def lesion_detection(truth: np.ndarray, predicted: np.ndarray) -> tuple[int, int, int, int]:
    """(lesions, lesions hit, false-positive components, predicted components), 8-connected."""
    from scipy import ndimage

    structure = np.ones((3, 3), dtype=bool)
    truth_labels, lesions = ndimage.label(truth, structure=structure)
    pred_labels, components = ndimage.label(predicted, structure=structure)
    hit = np.unique(truth_labels[predicted & (truth_labels > 0)]).size
    touching = np.unique(pred_labels[truth & (pred_labels > 0)]).size
    return int(lesions), int(hit), int(components - touching), int(components)


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
    def dice_values(self) -> list[float]:
        return [s.dice for s in self.images]

    @property
    def mean_dice(self) -> float:
        return float(np.mean(self.dice_values))

    @property
    def mean_iou(self) -> float:
        return float(np.mean([s.iou for s in self.images]))

    def restricted(self, keys: set[str]) -> ModelScore:
        """The same model's scores on a subset of the images."""
        return ModelScore(
            self.name,
            self.model,
            tuple(s for s in self.images if s.key in keys),
            self.parameters,
            self.ms_per_image,
        )

    def summary(self) -> dict[str, Any]:
        """Means with 95 % bootstrap intervals, lesion detection and false positives per image."""
        dice = self.dice_values
        iou = [s.iou for s in self.images]
        lesions = sum(s.lesions for s in self.images)
        hit = sum(s.lesions_hit for s in self.images)
        empty = [s for s in self.images if s.true_px == 0]
        return {
            "images": len(self.images),
            "dice": float(np.mean(dice)) if dice else float("nan"),
            "dice_ci95": bootstrap_interval(dice),
            "iou": float(np.mean(iou)) if iou else float("nan"),
            "iou_ci95": bootstrap_interval(iou),
            "lesions": lesions,
            "lesion_sensitivity": hit / lesions if lesions else float("nan"),
            "fp_components_per_image": (
                float(np.mean([s.false_positives for s in self.images]))
                if self.images
                else float("nan")
            ),
            "images_without_lesion": len(empty),
            "clean_share": (
                float(np.mean([s.predicted_px == 0 for s in empty])) if empty else float("nan")
            ),
        }

    def mean_over(self, with_mass: bool) -> tuple[float, float, int]:
        chosen = [s for s in self.images if (s.true_px > 0) == with_mass]
        if not chosen:
            return float("nan"), float("nan"), 0
        return (
            float(np.mean([s.dice for s in chosen])),
            float(np.mean([s.iou for s in chosen])),
            len(chosen),
        )


def paired_difference(
    first: ModelScore,
    other: ModelScore,
    *,
    samples: int = BOOTSTRAP_SAMPLES,
    seed: int = 0,
) -> dict[str, Any]:
    """``first`` minus ``other`` in per-image Dice, paired over the same images.

    The interval is a percentile bootstrap of the mean difference, resampling
    images (each resample scores both models on the same images), so the
    between-image spread that widens each model's own interval cancels.
    ``wins``/``losses``/``ties`` count images where ``first`` scores higher,
    lower or within 1e-9.
    """
    theirs = {s.key: s.dice for s in other.images}
    keys = [s.key for s in first.images]
    if sorted(keys) != sorted(theirs):
        raise EvaluationError(f"{first.name} and {other.name} were scored on different images")
    diff = np.array([s.dice - theirs[s.key] for s in first.images], dtype=np.float64)
    low, high = bootstrap_interval(diff.tolist(), samples=samples, seed=seed)
    return {
        "first": first.name,
        "other": other.name,
        "images": int(diff.size),
        "dice_difference": float(diff.mean()) if diff.size else float("nan"),
        "dice_difference_ci95": (low, high),
        "wins": int((diff > 1e-9).sum()),
        "losses": int((diff < -1e-9).sum()),
        "ties": int((np.abs(diff) <= 1e-9).sum()),
    }


def paired_differences(results: Sequence[ModelScore]) -> dict[str, dict[str, Any]]:
    """:func:`paired_difference` of the first model against each other one, by name."""
    return {other.name: paired_difference(results[0], other) for other in results[1:]}


def paired_markdown(differences: dict[str, dict[str, Any]], *, title: str = "") -> str:
    """A table of :func:`paired_differences`: Dice difference and images won; '' if none."""
    if not differences:
        return ""
    first = next(iter(differences.values()))["first"]
    lines = [f"### {title}", ""] if title else []
    lines += [
        f"| {first} minus | images | mean Dice difference [paired 95 % CI] "
        "| images won / lost / tied |",
        "|---|---|---|---|",
    ]
    for name, d in differences.items():
        low, high = d["dice_difference_ci95"]
        lines.append(
            f"| {name} | {d['images']} | {d['dice_difference']:+.3f} "
            f"[{low:+.3f}, {high:+.3f}] | {d['wins']} / {d['losses']} / {d['ties']} |"
        )
    return "\n".join(lines) + "\n"


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
            from model_export.export import _session
            from service.inference import read_contract

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
                pad_to_square=bool(config.get("pad_to_square", False)),
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


class _BaselinePredictor:
    """A baseline behind the predictor's interface: its mask as a 0/1 "probability"."""

    def __init__(self, spec: str, input_size: int, fraction: float | None) -> None:
        self.spec, self.fraction = spec, fraction
        baselines.parse(spec)
        self.contract = ModelContract(
            model_name="baseline",
            model_version="0",
            input_name="image",
            output_name="mask",
            input_height=input_size,
            input_width=input_size,
            pad_to_square=True,
            threshold=0.5,
        )
        self.parameters: int | None = None
        self.seconds, self.calls = 0.0, 0

    def predict(self, image: np.ndarray, resolution: str) -> tuple[np.ndarray, Any, Any]:
        from model_export.datasets import prepare_pair

        if resolution != "source":
            image, _ = prepare_pair(image, None, self.contract)
        started = time.perf_counter()
        mask = baselines.predict(self.spec, image, self.fraction)
        self.seconds += time.perf_counter() - started
        self.calls += 1
        return mask.astype(np.float32), None, None


def evaluate_model(
    path: str | Path,
    pairs: Sequence[Any],
    *,
    name: str | None = None,
    resolution: str = "source",
    input_size: int = 256,
    keep: int = 0,
    min_area_px: int = 0,
    baseline_fraction: float | None = None,
) -> tuple[ModelScore, list[dict[str, Any]]]:
    """Score one model on image/mask pairs; also return up to ``keep`` panel records.

    ``min_area_px`` drops predicted components smaller than that many pixels
    (at the scored resolution), as the node does with ``min_lesion_area_mm2``.
    """
    from model_export.datasets import prepare_pair, read_image, read_mask

    predictor: Any = (
        _BaselinePredictor(str(path), input_size, baseline_fraction)
        if baselines.is_baseline(str(path))
        else _Predictor(str(path), input_size)
    )
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
        lesions, hit, false_positives, components = lesion_detection(shown_truth, predicted)
        scores.append(
            ImageScore(
                pair.key,
                d,
                j,
                int(shown_truth.sum()),
                int(predicted.sum()),
                lesions,
                hit,
                false_positives,
                components,
            )
        )
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


def _fmt(value: float, digits: int = 3) -> str:
    return "-" if value != value else f"{value:.{digits}f}"


def summary_markdown(results: Sequence[ModelScore], *, title: str = "") -> str:
    """Means with 95 % bootstrap intervals, per-lesion detection and false positives."""
    lines = [f"### {title}", ""] if title else []
    lines += [
        "| model | images | mean Dice [95 % CI] | mean IoU [95 % CI] | lesions hit "
        "| FP components / image | clean (images without lesion) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        m = r.summary()
        d_lo, d_hi = m["dice_ci95"]
        i_lo, i_hi = m["iou_ci95"]
        hit = sum(s.lesions_hit for s in r.images)
        clean = (
            f"{_fmt(m['clean_share'], 2)} (n={m['images_without_lesion']})"
            if m["images_without_lesion"]
            else "-"
        )
        lines.append(
            f"| {r.name} | {m['images']} | {_fmt(m['dice'])} [{_fmt(d_lo)}, {_fmt(d_hi)}] "
            f"| {_fmt(m['iou'])} [{_fmt(i_lo)}, {_fmt(i_hi)}] "
            f"| {hit}/{m['lesions']} ({_fmt(m['lesion_sensitivity'], 2)}) "
            f"| {_fmt(m['fp_components_per_image'], 2)} | {clean} |"
        )
    return "\n".join(lines) + "\n"


def read_subsets(data: str | Path) -> dict[str, set[str]]:
    """The findings-based subsets of a ``make-dataset --cddcesm`` folder (empty otherwise)."""
    from model_export.datasets import DATASET_FILE

    manifest = Path(data) / DATASET_FILE
    if not manifest.is_file():
        return {}
    items = json.loads(manifest.read_text())["items"]
    return {flag: {i["key"] for i in items if i.get(flag)} for flag in SUBSET_FLAGS}


def typical_lesion_fraction(pairs: Sequence[Any]) -> float:
    """Median share of the image that a mask covers, over images that have a lesion."""
    from model_export.datasets import read_mask

    fractions = []
    for pair in pairs:
        if pair.mask is None:
            continue
        mask = read_mask(pair.mask)
        if mask.any():
            fractions.append(float(mask.mean()))
    return float(np.median(fractions)) if fractions else baselines.DEFAULT_FRACTION


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


def _paired_section(differences: dict[str, dict[str, Any]], images: str) -> str:
    if not differences:
        return ""
    first = next(iter(differences.values()))["first"]
    return "\n" + paired_markdown(differences, title=f"{first} against each, {images}")


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
    baseline_fraction: float | None = None,
) -> list[ModelScore]:
    """Evaluate each model on a split; write per-image JSON, Markdown + PNG comparison, panels."""
    from model_export.datasets import find_pairs, select

    if names and len(names) > len(models):
        raise EvaluationError("more --name than --model")
    pairs = find_pairs(data, include_unmasked=True)
    if split != "all":
        if split_file is None:
            raise EvaluationError(f"--split {split} needs --split-file")
        keys = json.loads(Path(split_file).read_text())[split]
        pairs = select(pairs, keys)
    if not pairs:
        raise EvaluationError(f"no images in split {split!r} of {data}")
    fraction = baseline_fraction
    if fraction is None and any(baselines.is_baseline(str(m)) for m in models):
        if split_file is not None:
            train_keys = json.loads(Path(split_file).read_text())["train"]
            fraction = typical_lesion_fraction(select(find_pairs(data), train_keys))
            print(
                f"naive baseline: {100 * fraction:.2f} % of the image (median over the "
                "training split's masks)",
                flush=True,
            )
        else:
            fraction = baselines.DEFAULT_FRACTION
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for index, model in enumerate(models):
        if names and index < len(names):
            name = names[index]
        elif baselines.is_baseline(str(model)):
            name = baselines.display_name(str(model), fraction)
        else:
            name = Path(model).stem
        score, kept = evaluate_model(
            model,
            pairs,
            name=name,
            resolution=resolution,
            input_size=input_size,
            keep=panels,
            min_area_px=min_area_px,
            baseline_fraction=fraction,
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
                    "summary": score.summary(),
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
    table += "\n" + summary_markdown(results, title=f"all {len(pairs)} images")
    paired: dict[str, Any] = {"all": paired_differences(results)}
    table += _paired_section(paired["all"], f"all {len(pairs)} images")
    summaries: dict[str, Any] = {"all": {r.name: r.summary() for r in results}}
    for flag, keys in read_subsets(data).items():
        chosen = keys & {p.key for p in pairs}
        if not chosen:
            continue
        narrowed = [r.restricted(chosen) for r in results]
        table += "\n" + summary_markdown(narrowed, title=f"{flag}: {len(chosen)} images")
        paired[flag] = paired_differences(narrowed)
        table += _paired_section(paired[flag], f"{flag}: {len(chosen)} images")
        summaries[flag] = {r.name: r.summary() for r in narrowed}
    if len(results) > 1:
        summaries["paired"] = paired
    (out / "summary.json").write_text(json.dumps(summaries, indent=1))
    (out / "comparison.md").write_text(table)
    plot_comparison(results, out / "comparison.png")
    print(table, flush=True)
    return results


def tune_postprocessing(
    model: str | Path,
    data: str | Path,
    split_file: str | Path,
    *,
    split: str = "val",
    thresholds: Sequence[float] = (0.3, 0.4, 0.5, 0.6, 0.7),
    min_areas_px: Sequence[int] = (0, 25, 50, 100, 200),
    input_size: int = 256,
) -> dict[str, Any]:
    """Mean per-image Dice for each threshold and minimum component area, on one split.

    The model runs once per image (at source resolution, as served); every
    threshold / area pair is scored on that probability map. Use it on the
    validation split only: a choice made on the test split would make the test
    figures selection figures.
    """
    from model_export.datasets import find_pairs, read_image, read_mask, select

    keys = json.loads(Path(split_file).read_text())[split]
    pairs = select(find_pairs(data, include_unmasked=True), keys)
    if not pairs:
        raise EvaluationError(f"no images in split {split!r} of {data}")
    predictor = _Predictor(str(model), input_size)
    dice = np.zeros((len(thresholds), len(min_areas_px), len(pairs)))
    for k, pair in enumerate(pairs):
        image = read_image(pair.image)
        truth = read_mask(pair.mask) if pair.mask is not None else np.zeros(image.shape, bool)
        prob, _, _ = predictor.predict(image, "source")
        for i, level in enumerate(thresholds):
            for j, area in enumerate(min_areas_px):
                dice[i, j, k] = dice_iou(truth, threshold_mask(prob, level, min_area_px=area))[0]
    mean = dice.mean(axis=2)
    best_i, best_j = (int(v) for v in np.unravel_index(int(np.argmax(mean)), mean.shape))
    return {
        "model": str(model),
        "split": split,
        "images": len(pairs),
        "thresholds": list(thresholds),
        "min_areas_px": list(min_areas_px),
        "mean_dice": mean.round(4).tolist(),
        "best": {
            "threshold": float(thresholds[best_i]),
            "min_area_px": int(min_areas_px[best_j]),
            "mean_dice": round(float(mean[best_i, best_j]), 4),
        },
    }


def tuning_markdown(result: dict[str, Any]) -> str:
    """The tuning grid as a Markdown table (rows: threshold, columns: minimum area)."""
    areas = result["min_areas_px"]
    lines = [
        f"Mean per-image Dice on the {result['split']} split ({result['images']} images) of "
        f"`{result['model']}`, by threshold (rows) and minimum component area in pixels "
        "(columns).",
        "",
        "| threshold | " + " | ".join(f"{a} px" for a in areas) + " |",
        "|---|" + "---|" * len(areas),
    ]
    for level, row in zip(result["thresholds"], result["mean_dice"], strict=True):
        lines.append(f"| {level:g} | " + " | ".join(f"{v:.3f}" for v in row) + " |")
    best = result["best"]
    lines += [
        "",
        f"Best: threshold {best['threshold']:g}, minimum area {best['min_area_px']} px, "
        f"mean Dice {best['mean_dice']:.3f}.",
    ]
    return "\n".join(lines) + "\n"
