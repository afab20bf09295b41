"""Two-phase training on a tiny tree: runs, writes its files, resumes, re-estimates BN."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.train
pytest.importorskip("tensorflow")
pytest.importorskip("albumentations")

from model_export import train  # noqa: E402


def tiny_config(data: Path, run: Path, **overrides: object) -> train.TrainConfig:
    settings = dict(
        data=str(data),
        run_dir=str(run),
        encoder_weights=None,
        input_size=32,
        batch_size=2,
        augment_copies=1,
        steps_per_epoch=1,
        phase1_epochs=2,
        phase2_epochs=1,
        bn_reestimate_batches=1,
        log_every=0,
    )
    settings.update(overrides)
    return train.TrainConfig(**settings)  # type: ignore[arg-type]


@pytest.mark.slow
def test_train_then_resume_after_a_budget_stop(pair_tree: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    first = train.train(tiny_config(pair_tree, run, time_budget_min=0.0))
    state = json.loads((run / train.STATE_FILE).read_text())
    assert (state["phase"], state["epoch"], state["done"]) == (1, 1, False)
    assert first.epochs_run == 1
    for name in (
        train.LAST_WEIGHTS,
        train.BEST_WEIGHTS,
        train.HISTORY_FILE,
        "split.json",
        "curves.png",
        train.FINAL_MODEL,
    ):
        assert (run / name).is_file(), name

    second = train.train(tiny_config(pair_tree, run))
    state = json.loads((run / train.STATE_FILE).read_text())
    history = json.loads((run / train.HISTORY_FILE).read_text())
    assert state["done"] and state["phase"] == 2 and second.epochs_run == 3
    assert [(h["phase"], h["epoch"]) for h in history] == [(1, 1), (1, 2), (2, 1)]
    assert {"loss", "dice", "iou", "val_loss", "val_dice", "val_iou", "lr"} <= set(history[0])
    assert history[-1]["lr"] == pytest.approx(1e-5)


def test_a_run_folder_refuses_another_architecture(pair_tree: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / train.CONFIG_FILE).write_text(
        json.dumps(
            {
                "architecture": "unet",
                "input_size": 32,
                "crop_to_breast": False,
                "data": str(pair_tree),
            }
        )
    )
    with pytest.raises(train.TrainingError, match="architecture"):
        train.train(tiny_config(pair_tree, run))


def test_bn_reestimation_matches_the_data_statistics() -> None:
    import keras

    inputs = keras.Input((8, 8, 1))
    outputs = keras.layers.BatchNormalization(momentum=0.999, name="bn")(inputs)
    model = keras.Model(inputs, outputs)
    model.get_layer("bn").trainable = False
    images = np.random.default_rng(0).normal(3.0, 2.0, size=(16, 8, 8)).astype(np.float32)
    used = train.reestimate_bn_statistics(model, images, batch_size=4, batches=4, channels=1)
    bn = model.get_layer("bn")
    assert used == 4
    assert float(np.asarray(bn.moving_mean)[0]) == pytest.approx(images.mean(), abs=0.05)
    assert float(np.asarray(bn.moving_variance)[0]) == pytest.approx(images.var(), rel=0.05)
    assert bn.trainable is False and bn.momentum == 0.999


@pytest.mark.parametrize("phase2_bn", ["frozen", "train"])
def test_phase_trainability(phase2_bn: str, tmp_path: Path) -> None:
    from model_export.architectures import build_mobilenetv2_resunet

    model = build_mobilenetv2_resunet((32, 32, 3), encoder_weights=None)
    config = tiny_config(tmp_path, tmp_path / "run", phase2_bn=phase2_bn, bn_momentum=0.9)
    train.set_phase_trainability(model, 1, config)
    assert not model.get_layer("Conv1").trainable and not model.get_layer("bn_Conv1").trainable
    assert model.get_layer("decoder_stage1_res_a_bn").trainable
    train.set_phase_trainability(model, 2, config)
    assert model.get_layer("Conv1").trainable
    assert model.get_layer("bn_Conv1").trainable == (phase2_bn == "train")
    assert model.get_layer("bn_Conv1").momentum == (0.9 if phase2_bn == "train" else 0.999)
    encoder_bns = train.batchnorm_names(model, encoder=True)
    decoder_bns = train.batchnorm_names(model, encoder=False)
    assert "bn_Conv1" in encoder_bns and "decoder_stage1_res_a_bn" in decoder_bns
    assert not set(encoder_bns) & set(decoder_bns)


def test_bn_reestimation_can_be_limited_to_named_layers() -> None:
    import keras

    inputs = keras.Input((4, 4, 1))
    x = keras.layers.BatchNormalization(name="kept")(inputs)
    outputs = keras.layers.BatchNormalization(name="renewed")(x)
    model = keras.Model(inputs, outputs)
    images = np.random.default_rng(1).normal(5.0, 1.0, size=(8, 4, 4)).astype(np.float32)
    train.reestimate_bn_statistics(model, images, batch_size=4, channels=1, layer_names=["renewed"])
    assert float(np.asarray(model.get_layer("kept").moving_mean)[0]) == 0.0
    assert float(np.asarray(model.get_layer("renewed").moving_mean)[0]) == pytest.approx(
        5.0, abs=0.2
    )
