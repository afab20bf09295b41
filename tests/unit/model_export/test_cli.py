"""The command line: no TensorFlow at import, a clear message without the train extra."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from model_export import cli
from tests.unit.model_export.trees import brightness_model

ROOT = Path(__file__).resolve().parents[3]


def test_importing_the_cli_does_not_import_tensorflow() -> None:
    code = (
        "import sys, model_export.cli; "
        "bad = [m for m in ('tensorflow', 'keras', 'tf2onnx') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--data", "d", "--run-dir", "r"],
        ["export", "--model", "m.keras", "--out", "o.onnx"],
        ["evaluate", "--model", "m.keras", "--data", "d", "--out", "o"],
    ],
)
def test_missing_train_extra_says_how_to_install(
    argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli, "train_extra_available", lambda *a, **k: False)
    assert cli.main(argv) == cli.EXIT_MISSING_EXTRA
    assert cli.TRAIN_EXTRA_MESSAGE in capsys.readouterr().err
    assert "pip install 'mammoseg[train]'" in cli.TRAIN_EXTRA_MESSAGE


def test_subcommands_are_listed(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    for command in ("train", "evaluate", "export", "make-dataset"):
        assert command in out


def test_make_dataset_writes_pairs(
    ddsm66_tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "made"
    status = cli.main(
        [
            "make-dataset",
            "--out",
            str(out),
            "--count",
            "4",
            "--seed",
            "3",
            "--ddsm66",
            str(ddsm66_tree),
            "--min-diameter-mm",
            "5",
        ]
    )
    assert status == cli.EXIT_OK
    assert len(list((out / "images").glob("*.png"))) == 4
    assert len(list((out / "masks").glob("*.png"))) == 4
    manifest = json.loads((out / "lesions.json").read_text())
    assert manifest["seed"] == 3 and manifest["config"]["min_diameter_mm"] == 5.0
    assert "wrote 4 images" in capsys.readouterr().out


def test_bad_data_is_a_clean_failure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status = cli.main(
        [
            "make-dataset",
            "--out",
            str(tmp_path / "o"),
            "--count",
            "1",
            "--ddsm66",
            str(tmp_path / "nothing"),
        ]
    )
    assert status == cli.EXIT_FAILED
    assert "no fgt_seg" in capsys.readouterr().err


def test_evaluating_onnx_models_needs_no_tensorflow(
    pair_tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("onnxruntime")
    monkeypatch.setattr(cli, "train_extra_available", lambda *a, **k: False)
    model = brightness_model(tmp_path / "bright.onnx")
    argv = [
        "evaluate",
        "--model",
        str(model),
        "--data",
        str(pair_tree),
        "--out",
        str(tmp_path / "e"),
        "--panels",
        "0",
    ]
    assert cli.main(argv) == cli.EXIT_OK
    assert (tmp_path / "e" / "comparison.md").is_file()


def test_metric_option_parses_name_value(capsys: pytest.CaptureFixture[str]) -> None:
    args = cli.build_parser().parse_args(
        ["export", "--model", "m", "--out", "o", "--metric", "heldout_dice=0.7"]
    )
    assert args.metric == [("heldout_dice", 0.7)]
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["export", "--model", "m", "--out", "o", "--metric", "x"])
    assert "NAME=VALUE" in capsys.readouterr().err
