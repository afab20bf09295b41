"""Evaluation: hand-computed Dice/IoU and an end-to-end run with a hand-made ONNX model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from model_export import evaluate
from tests.unit.model_export.trees import brightness_model


def test_dice_iou_hand_computed() -> None:
    truth = np.array([[1, 1, 0, 0]], bool)
    predicted = np.array([[1, 0, 1, 0]], bool)
    assert evaluate.dice_iou(truth, predicted) == pytest.approx((0.5, 1 / 3))
    empty = np.zeros((2, 2), bool)
    assert evaluate.dice_iou(empty, empty) == (1.0, 1.0)
    assert evaluate.dice_iou(truth, np.zeros_like(truth)) == (0.0, 0.0)


def test_evaluate_models_writes_table_json_and_panels(pair_tree: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("matplotlib")
    model = brightness_model(tmp_path / "bright.onnx")
    out = tmp_path / "eval"
    results = evaluate.evaluate_models([model, model], pair_tree, out, names=["a", "b"], panels=2)
    # the discs are bright (> 0.7) on a dark background (< 0.25): near-perfect segmentation
    assert results[0].mean_dice > 0.9 and results[0].mean_iou > 0.8
    assert len(results[0].images) == 10
    stored = json.loads((out / "a.per_image.json").read_text())
    assert len(stored["images"]) == 10 and stored["resolution"] == "source"
    table = (out / "comparison.md").read_text()
    assert "| a | 10 |" in table and "| b | 10 |" in table
    assert "| parameters | model ms/image |" in table
    # the hand-made model stores 5 numbers: 3 slice bounds, the 0.5 and the gain
    assert results[0].parameters == stored["parameters"] == 5
    assert results[0].ms_per_image is not None and results[0].ms_per_image > 0
    assert (out / "comparison.png").is_file() and (out / "a.panels.png").is_file()
    # the same model twice: a paired difference of exactly zero, every image tied
    assert "| a minus |" in table and "| b | 10 | +0.000 [+0.000, +0.000] | 0 / 0 / 10 |" in table
    paired = json.loads((out / "summary.json").read_text())["paired"]["all"]["b"]
    assert paired["dice_difference"] == 0.0 and paired["ties"] == 10


def test_model_resolution_and_split_selection(pair_tree: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    model = brightness_model(tmp_path / "bright.onnx")
    split_file = tmp_path / "split.json"
    split_file.write_text(json.dumps({"train": [], "val": ["case00", "case01"], "test": []}))
    results = evaluate.evaluate_models(
        [model],
        pair_tree,
        tmp_path / "e",
        split="val",
        split_file=split_file,
        panels=0,
        resolution="model",
    )
    assert [s.key for s in results[0].images] == ["case00", "case01"]


def test_split_needs_a_split_file(pair_tree: Path, tmp_path: Path) -> None:
    with pytest.raises(evaluate.EvaluationError, match="split-file"):
        evaluate.evaluate_models(["m.onnx"], pair_tree, tmp_path, split="val")


def test_min_area_drops_specks_as_the_node_does(pair_tree: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    model = brightness_model(tmp_path / "bright.onnx")
    plain = evaluate.evaluate_models([model], pair_tree, tmp_path / "a", panels=0)[0]
    # larger than any disc in the tree: every prediction is dropped, so images with a
    # mass score 0 and the table says what was done
    huge = 10**6
    dropped = evaluate.evaluate_models(
        [model], pair_tree, tmp_path / "b", panels=0, min_area_px=huge
    )[0]
    assert plain.mean_dice > 0.9
    assert all(s.predicted_px == 0 for s in dropped.images)
    assert dropped.mean_over(True)[0] == 0.0
    assert f"under {huge} px dropped" in (tmp_path / "b" / "comparison.md").read_text()


def test_tune_scores_each_threshold_and_area_and_refuses_the_test_split(
    pair_tree: Path, tmp_path: Path
) -> None:
    pytest.importorskip("onnxruntime")
    from model_export.cli import main

    model = brightness_model(tmp_path / "bright.onnx")
    split_file = tmp_path / "split.json"
    split_file.write_text(json.dumps({"train": [], "val": ["case00", "case01"], "test": []}))
    result = evaluate.tune_postprocessing(
        model, pair_tree, split_file, thresholds=(0.5, 2.0), min_areas_px=(0, 10**6)
    )
    assert result["images"] == 2
    # threshold 0.5 finds the discs; 2.0 (above any probability) and a huge minimum area
    # find nothing, so those cells score 0 and the best is (0.5, 0)
    (good, none), (never, never_too) = result["mean_dice"]
    assert good > 0.9 and none == never == never_too == 0.0
    assert result["best"] == {"threshold": 0.5, "min_area_px": 0, "mean_dice": good}
    out = tmp_path / "tuned"
    args = ["tune", "--model", str(model), "--data", str(pair_tree), "--split-file"]
    assert main([*args, str(split_file), "--out", str(out)]) == 0
    assert "| threshold |" in (out / "tuning.md").read_text()
    with pytest.raises(SystemExit):
        main([*args, str(split_file), "--split", "test", "--out", str(out)])


def _scores(name: str, dice: list[float]) -> evaluate.ModelScore:
    images = tuple(evaluate.ImageScore(f"case{i:02d}", d, d, 10, 10) for i, d in enumerate(dice))
    return evaluate.ModelScore(name, name, images)


def test_paired_difference_cancels_the_spread_between_images() -> None:
    rng = np.random.default_rng(3)
    hardness = rng.uniform(0.0, 0.8, size=40)  # images differ a lot from each other
    other = _scores("naive", list(hardness))
    first = _scores("model", list(hardness + 0.05))  # better by 0.05 on every image
    d = evaluate.paired_difference(first, other)
    assert d["dice_difference"] == pytest.approx(0.05)
    assert d["dice_difference_ci95"][0] == pytest.approx(0.05)
    assert d["dice_difference_ci95"][1] == pytest.approx(0.05)
    assert (d["wins"], d["losses"], d["ties"]) == (40, 0, 0)
    # each model's own interval is wide (unpaired, the two would overlap)
    low, high = evaluate.bootstrap_interval(first.dice_values)
    assert high - low > 0.1


def test_paired_difference_counts_wins_losses_ties_in_image_order_of_either() -> None:
    first = _scores("a", [0.5, 0.2, 0.9, 0.4])
    other = evaluate.ModelScore(
        "b", "b", tuple(reversed(_scores("b", [0.3, 0.2, 1.0, 0.1]).images))
    )
    d = evaluate.paired_difference(first, other)
    assert d["dice_difference"] == pytest.approx((0.2 + 0.0 - 0.1 + 0.3) / 4)
    assert (d["wins"], d["losses"], d["ties"]) == (2, 1, 1)
    low, high = d["dice_difference_ci95"]
    assert -0.1 <= low < d["dice_difference"] < high <= 0.3
    with pytest.raises(evaluate.EvaluationError, match="different images"):
        evaluate.paired_difference(first, _scores("c", [0.1, 0.2]))
    table = evaluate.paired_markdown(evaluate.paired_differences([first, other]))
    assert "| a minus |" in table and "| b | 4 | +0.100 [" in table and "| 2 / 1 / 1 |" in table
