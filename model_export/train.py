"""Two-phase training of a segmentation network, resumable from its run folder.

Phase 1 trains the decoder with the pretrained encoder frozen (20 epochs,
Adam 1e-4); phase 2 trains all layers (Adam 1e-5). Both use the Tversky
loss with Dice and IoU metrics, checkpoint the best validation Dice, stop
early on it (patience 10, best weights restored) and halve the learning rate
when the validation loss stalls (patience 5, down to 1e-6): the reference
work's recipe. Networks without a pretrained encoder train in one phase.

The run folder holds everything: ``state.json`` (phase, next epoch, callback
counters, learning rate), ``last.weights.h5`` (after every epoch),
``best.weights.h5`` (best validation Dice so far), ``history.json``,
``curves.png``, ``split.json`` and finally ``final.keras``. Starting the same
command again resumes where the state file says (Adam's moment estimates
restart; everything else continues).

BatchNorm. In phase 2 the encoder's BN layers stay in inference mode by
default (``phase2_bn="frozen"``: their ImageNet statistics and scale/offset
are kept, every convolution is trained), as Keras' fine-tuning guide
advises: letting them switch to batch statistics (``phase2_bn="train"``)
dropped the shipped run's training Dice from 0.67 to 0.51 in the first
phase-2 epoch. With ``"train"``, MobileNetV2's BN momentum of 0.999 is far too
slow for a short fine-tuning, so it is set to ``bn_momentum``. Either way,
after training, the moving statistics of every BN layer that ran on batch
statistics are re-estimated over training batches (a cumulative average),
without which the exported model's outputs sit near 0.5; the re-estimate is
kept only if it validates at least as well.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from model_export.architectures import (
    ENCODER_WEIGHTS_DEFAULT,
    PRETRAINED_ENCODER,
    build_model,
    encoder_layer_names,
)
from service.contract import ModelContract

log = logging.getLogger(__name__)

STATE_FILE = "state.json"
HISTORY_FILE = "history.json"
LAST_WEIGHTS = "last.weights.h5"
BEST_WEIGHTS = "best.weights.h5"
FINAL_MODEL = "final.keras"
CONFIG_FILE = "config.json"


class TrainingError(RuntimeError):
    """Training cannot start or continue (bad data, a run folder from another config)."""


@dataclass(frozen=True)
class TrainConfig:
    """Every knob of ``mammoseg train``."""

    data: str
    run_dir: str
    architecture: str = "mobilenetv2-resunet"
    encoder_weights: str | None = ENCODER_WEIGHTS_DEFAULT
    input_size: int = 256
    crop_to_breast: bool = False
    pad_to_square: bool = True
    split_file: str | None = None
    split_seed: int = 42
    include_unmasked: bool = False
    batch_size: int = 8
    augment_copies: int = 3
    steps_per_epoch: int | None = None
    phase1_epochs: int = 20
    phase1_lr: float = 1e-4
    phase2_epochs: int = 30
    phase2_lr: float = 1e-5
    tversky_alpha: float = 0.3
    tversky_beta: float = 0.7
    early_stopping_patience: int = 10
    plateau_factor: float = 0.5
    plateau_patience: int = 5
    min_lr: float = 1e-6
    phase2_bn: str = "frozen"
    bn_momentum: float = 0.9
    init_weights: str | None = None
    bn_reestimate_batches: int = 40
    time_budget_min: float | None = None
    log_every: int = 20
    seed: int = 0
    intra_op_threads: int = 2
    inter_op_threads: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

    def contract(self) -> ModelContract:
        """The preprocessing this training uses, as the model contract will state it."""
        return ModelContract(
            model_name="training",
            model_version="0",
            input_name="image",
            output_name="mask",
            input_height=self.input_size,
            input_width=self.input_size,
            crop_to_breast=self.crop_to_breast,
            pad_to_square=self.pad_to_square,
        )


@dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    model_path: Path
    best_val_dice: float
    final_val: dict[str, float]
    epochs_run: int
    seconds: float


def configure_tensorflow(intra_op: int, inter_op: int) -> None:
    """Thread limits (set before TF runs any op) and quieter logs."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(intra_op)
        tf.config.threading.set_inter_op_parallelism_threads(inter_op)
    except RuntimeError:
        log.warning("TensorFlow was already initialised; thread limits not applied")


# --------------------------------------------------------------------------- data


def load_training_data(config: TrainConfig) -> tuple[Any, Any, dict[str, list[str]]]:
    """Train and validation arrays at model resolution, and the split used."""
    from model_export.datasets import find_pairs, load_arrays, load_or_make_split, select

    pairs = find_pairs(config.data, include_unmasked=config.include_unmasked)
    split_file = Path(config.split_file or Path(config.run_dir) / "split.json")
    split = load_or_make_split(pairs, split_file, seed=config.split_seed)
    contract = config.contract()
    train = load_arrays(select(pairs, split["train"]), contract)
    val = load_arrays(select(pairs, split["val"]), contract)
    if len(train) == 0 or len(val) == 0:
        raise TrainingError("the split leaves no training or no validation images")
    return train, val, split


# --------------------------------------------------------------------------- state


def _read_json(path: Path, default: Any) -> Any:
    return json.loads(path.read_text()) if path.is_file() else default


def _write_json(path: Path, value: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(value, indent=1))
    tmp.replace(path)


def _initial_state() -> dict[str, Any]:
    return {
        "phase": 1,
        "epoch": 0,
        "global_epoch": 0,
        "best_val_dice": -math.inf,
        "early_stopping": {"wait": 0, "best": None},
        "plateau": {"wait": 0, "best": None, "cooldown": 0},
        "lr": None,
        "done": False,
        "seconds": 0.0,
    }


# --------------------------------------------------------------------------- model set-up


def set_encoder_trainable(model: Any, trainable: bool) -> None:
    names = set(encoder_layer_names(model))
    for layer in model.layers:
        if layer.name in names:
            layer.trainable = trainable


def batchnorm_names(model: Any, *, encoder: bool | None = None) -> list[str]:
    """BN layer names: all, only the encoder's (True) or only the rest (False)."""
    import keras

    inside = set(encoder_layer_names(model))
    return [
        layer.name
        for layer in model.layers
        if isinstance(layer, keras.layers.BatchNormalization)
        and (encoder is None or (layer.name in inside) == encoder)
    ]


def set_phase_trainability(model: Any, phase: int, config: TrainConfig) -> None:
    """Phase 1: encoder frozen. Phase 2: everything, encoder BN as ``config.phase2_bn`` says."""
    if config.architecture not in PRETRAINED_ENCODER:
        return
    set_encoder_trainable(model, phase == 2)
    if phase != 2:
        return
    if config.phase2_bn == "frozen":
        for name in batchnorm_names(model, encoder=True):
            model.get_layer(name).trainable = False
    else:
        set_bn_momentum(model, config.bn_momentum)


def set_bn_momentum(model: Any, momentum: float) -> None:
    import keras

    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = momentum


def compile_model(model: Any, lr: float, config: TrainConfig) -> None:
    import keras

    from model_export.losses import dice, iou, make_tversky_loss

    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=lr),
        loss=make_tversky_loss(config.tversky_alpha, config.tversky_beta),
        metrics=[dice, iou],
    )


def reestimate_bn_statistics(
    model: Any,
    images: np.ndarray,
    *,
    batch_size: int = 8,
    batches: int = 40,
    channels: int = 3,
    seed: int = 0,
    layer_names: list[str] | None = None,
) -> int:
    """Replace every BN layer's moving mean/variance by the average of batch statistics.

    Runs the model in training mode (BN layers temporarily trainable) over up
    to ``batches`` batches of ``images`` with momentum ``(k-1)/k`` at batch
    ``k``, i.e. a cumulative average, then restores trainability and momentum.
    ``layer_names`` limits it to those BN layers; the others stay in inference
    mode meanwhile. Returns the number of batches used.
    """
    import keras

    every = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    bns = [layer for layer in every if layer_names is None or layer.name in layer_names]
    if not bns or batches <= 0:
        return 0
    saved = [(layer.trainable, layer.momentum) for layer in every]
    order = np.random.default_rng(seed).permutation(len(images))
    used = 0
    try:
        for layer in every:
            layer.trainable = layer in bns
        for k in range(min(batches, int(np.ceil(len(images) / batch_size)))):
            for layer in bns:
                layer.momentum = k / (k + 1.0)  # k=0: take the first batch's statistics
            chosen = order[k * batch_size : (k + 1) * batch_size]
            x = np.repeat(images[chosen][..., None], channels, axis=3).astype(np.float32)
            model(x, training=True)
            used += 1
    finally:
        for layer, (trainable, momentum) in zip(every, saved, strict=True):
            layer.trainable = trainable
            layer.momentum = momentum
    return used


# --------------------------------------------------------------------------- callbacks


def _callbacks(
    model_run: Path,
    state: dict[str, Any],
    phase: int,
    config: TrainConfig,
    history: list[dict[str, Any]],
    started: float,
    phase_epochs: int,
) -> list[Any]:
    import keras

    class ProgressLog(keras.callbacks.Callback):  # type: ignore[misc]
        """One line every ``log_every`` batches and one per epoch (works in a log file)."""

        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self.epoch = epoch
            self.t0 = time.monotonic()

        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            if config.log_every and (batch + 1) % config.log_every == 0:
                logs = logs or {}
                spent = time.monotonic() - self.t0
                steps = self.params.get("steps") or 0
                eta = spent / (batch + 1) * (steps - batch - 1)
                print(
                    f"phase {phase} epoch {self.epoch + 1}/{phase_epochs} batch {batch + 1}/"
                    f"{steps} loss {logs.get('loss', 0):.4f} dice {logs.get('dice', 0):.4f} "
                    f"{spent / (batch + 1):.2f} s/batch, epoch eta {eta / 60:.1f} min",
                    flush=True,
                )

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            logs = logs or {}
            print(
                f"phase {phase} epoch {epoch + 1}/{phase_epochs} done in "
                f"{(time.monotonic() - self.t0) / 60:.1f} min: "
                + " ".join(f"{k} {float(v):.4g}" for k, v in sorted(logs.items())),
                flush=True,
            )

    class BestCheckpoint(keras.callbacks.ModelCheckpoint):  # type: ignore[misc]
        pass

    class EarlyStop(keras.callbacks.EarlyStopping):  # type: ignore[misc]
        def on_train_begin(self, logs: Any = None) -> None:
            super().on_train_begin(logs)
            saved = state["early_stopping"]
            if saved["best"] is not None:
                self.wait, self.best = int(saved["wait"]), float(saved["best"])

    class Plateau(keras.callbacks.ReduceLROnPlateau):  # type: ignore[misc]
        def on_train_begin(self, logs: Any = None) -> None:
            super().on_train_begin(logs)
            saved = state["plateau"]
            if saved["best"] is not None:
                self.wait, self.best = int(saved["wait"]), float(saved["best"])
                self.cooldown_counter = int(saved["cooldown"])

    class TimeBudget(keras.callbacks.Callback):  # type: ignore[misc]
        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            if (
                config.time_budget_min is not None
                and (time.monotonic() - started) / 60 >= config.time_budget_min
            ):
                print(f"time budget of {config.time_budget_min} min spent: stopping", flush=True)
                self.model.stop_training = True
                state["budget_spent"] = True

    early = EarlyStop(
        monitor="val_dice",
        mode="max",
        patience=config.early_stopping_patience,
        restore_best_weights=True,
        verbose=1,
    )
    plateau = Plateau(
        monitor="val_loss",
        mode="min",
        factor=config.plateau_factor,
        patience=config.plateau_patience,
        min_lr=config.min_lr,
        verbose=1,
    )
    best = state["best_val_dice"]
    checkpoint = BestCheckpoint(
        str(model_run / BEST_WEIGHTS),
        monitor="val_dice",
        mode="max",
        save_best_only=True,
        save_weights_only=True,
        verbose=1,
        initial_value_threshold=None if best == -math.inf else best,
    )

    class SaveState(keras.callbacks.Callback):  # type: ignore[misc]
        """After every epoch: last weights, counters and history, atomically enough to resume."""

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            logs = {k: float(v) for k, v in (logs or {}).items()}
            lr = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
            history.append(
                {
                    "phase": phase,
                    "epoch": epoch + 1,
                    "global_epoch": state["global_epoch"] + 1,
                    "lr": lr,
                    **logs,
                }
            )
            self.model.save_weights(str(model_run / LAST_WEIGHTS))
            state["epoch"] = epoch + 1
            state["global_epoch"] += 1
            if logs.get("val_dice", -math.inf) > state["best_val_dice"]:
                state["best_val_dice"] = logs["val_dice"]
            state["early_stopping"] = {"wait": int(early.wait), "best": _num(early.best)}
            state["plateau"] = {
                "wait": int(plateau.wait),
                "best": _num(plateau.best),
                "cooldown": int(plateau.cooldown_counter),
            }
            state["lr"] = lr
            state["seconds"] = state.get("seconds_before", 0.0) + time.monotonic() - started
            _write_json(model_run / HISTORY_FILE, history)
            _write_json(model_run / STATE_FILE, state)
            try:
                plot_curves(history, model_run / "curves.png")
            except Exception as exc:  # noqa: BLE001 - a plot must never stop training
                log.warning("could not draw the training curves: %s", exc)

    return [ProgressLog(), checkpoint, early, plateau, TimeBudget(), SaveState()]


def _num(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


# --------------------------------------------------------------------------- curves


def plot_curves(history: list[dict[str, Any]], path: str | Path) -> None:
    """Dice, IoU and loss per epoch, train and validation, phases marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not history:
        return
    epochs = [h["global_epoch"] for h in history]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, key, title in zip(
        axes, ("dice", "iou", "loss"), ("Dice", "IoU", "Tversky loss"), strict=True
    ):
        ax.plot(epochs, [h.get(key, np.nan) for h in history], "o-", ms=3, label="train")
        ax.plot(epochs, [h.get(f"val_{key}", np.nan) for h in history], "o-", ms=3, label="val")
        switch = [h["global_epoch"] for h in history if h["phase"] == 2]
        if switch and switch[0] > epochs[0]:
            ax.axvline(switch[0] - 0.5, color="grey", ls="--", lw=0.8)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# --------------------------------------------------------------------------- training


def train(config: TrainConfig) -> TrainResult:
    """Run (or resume) the two-phase training described by ``config``."""
    configure_tensorflow(config.intra_op_threads, config.inter_op_threads)
    import keras

    from model_export.augment import make_sequence

    run = Path(config.run_dir)
    run.mkdir(parents=True, exist_ok=True)
    stored = _read_json(run / CONFIG_FILE, None)
    current = asdict(config)
    if stored is not None:
        keys = ("architecture", "input_size", "crop_to_breast", "pad_to_square", "data")
        # A run folder from before pad_to_square existed trained without padding.
        stored.setdefault("pad_to_square", False)
        changed = [k for k in keys if stored.get(k) != current.get(k)]
        if changed:
            raise TrainingError(
                f"{run} holds a run with different {', '.join(changed)}; use another --run-dir"
            )
    _write_json(run / CONFIG_FILE, current)
    state = _read_json(run / STATE_FILE, _initial_state())
    state["seconds_before"] = state.get("seconds", 0.0)
    state["budget_spent"] = False  # a new invocation brings a new time budget
    history: list[dict[str, Any]] = _read_json(run / HISTORY_FILE, [])
    started = time.monotonic()
    keras.utils.set_random_seed(config.seed)

    train_set, val_set, split = load_training_data(config)
    split_file = Path(config.split_file or run / "split.json")
    print(
        f"data: {len(train_set)} training and {len(val_set)} validation images at "
        f"{config.input_size} px (split {split_file}); {config.augment_copies} "
        f"augmented copies per epoch",
        flush=True,
    )
    two_phase = config.architecture in PRETRAINED_ENCODER
    resuming = (run / LAST_WEIGHTS).is_file() and state["global_epoch"] > 0
    model = build_model(
        config.architecture,
        (config.input_size, config.input_size, 3),
        encoder_weights=None if resuming else config.encoder_weights,
    )
    if resuming:
        model.load_weights(str(run / LAST_WEIGHTS))
        print(f"resuming phase {state['phase']} after epoch {state['epoch']}", flush=True)
    elif config.init_weights:
        model.load_weights(str(config.init_weights))
        print(f"starting from the weights in {config.init_weights}", flush=True)

    train_seq = make_sequence(
        train_set.images,
        train_set.masks,
        batch_size=config.batch_size,
        copies=config.augment_copies,
        seed=config.seed + state["global_epoch"],
        steps_per_epoch=config.steps_per_epoch,
    )
    val_seq = make_sequence(
        val_set.images, val_set.masks, batch_size=config.batch_size, augment=False, shuffle=False
    )
    phases = [(1, config.phase1_epochs, config.phase1_lr)] if two_phase else []
    phases.append(
        (2, config.phase2_epochs, config.phase2_lr)
        if two_phase
        else (2, config.phase1_epochs + config.phase2_epochs, config.phase1_lr)
    )

    for phase, epochs, lr in phases:
        if state["done"] or phase < state["phase"] or state.get("budget_spent"):
            continue
        if phase > state["phase"]:
            state.update(
                phase=phase,
                epoch=0,
                lr=None,
                early_stopping={"wait": 0, "best": None},
                plateau={"wait": 0, "best": None, "cooldown": 0},
            )
        if state["epoch"] >= epochs:
            continue
        set_phase_trainability(model, phase, config)
        compile_model(model, state["lr"] or lr, config)
        print(
            f"phase {phase}: epochs {state['epoch'] + 1}..{epochs}, lr {state['lr'] or lr:g}, "
            f"{sum(int(np.prod(w.shape)) for w in model.trainable_weights):,} trainable "
            "parameters",
            flush=True,
        )
        _write_json(run / STATE_FILE, {k: v for k, v in state.items()})
        model.fit(
            train_seq,
            validation_data=val_seq,
            initial_epoch=state["epoch"],
            epochs=epochs,
            verbose=0,
            callbacks=_callbacks(run, state, phase, config, history, started, epochs),
        )
        if not state.get("budget_spent"):
            state["epoch"] = epochs  # finished, or stopped early: either way this phase is over
            _write_json(run / STATE_FILE, state)
        if (run / BEST_WEIGHTS).is_file():
            model.load_weights(str(run / BEST_WEIGHTS))  # phase 2 starts from the best so far

    if (run / BEST_WEIGHTS).is_file():
        model.load_weights(str(run / BEST_WEIGHTS))
    compile_model(model, config.phase2_lr, config)
    before = model.evaluate(val_seq, verbose=0, return_dict=True)
    # BN layers that ran on batch statistics: all, unless the encoder's stayed frozen.
    encoder_bn_trained = not two_phase or config.phase2_bn == "train"
    used = reestimate_bn_statistics(
        model,
        train_set.images,
        batch_size=config.batch_size,
        batches=config.bn_reestimate_batches,
        seed=config.seed,
        layer_names=None if encoder_bn_trained else batchnorm_names(model, encoder=False),
    )
    after = model.evaluate(val_seq, verbose=0, return_dict=True)
    print(
        f"BN statistics re-estimated over {used} batches: val dice "
        f"{before['dice']:.4f} -> {after['dice']:.4f}",
        flush=True,
    )
    final_val = after
    if before["dice"] > after["dice"] and (run / BEST_WEIGHTS).is_file():  # keep the better
        model.load_weights(str(run / BEST_WEIGHTS))
        final_val = before
        print("kept the checkpoint's own BN statistics (they validate better)", flush=True)
    model.save(str(run / FINAL_MODEL))
    state["done"] = not state.get("budget_spent")  # a budget stop resumes next time
    state["final_val"] = {k: float(v) for k, v in final_val.items()}
    state["seconds"] = state["seconds_before"] + time.monotonic() - started
    _write_json(run / STATE_FILE, state)
    plot_curves(history, run / "curves.png")
    print(
        f"saved {run / FINAL_MODEL}: val dice {final_val['dice']:.4f} iou "
        f"{final_val['iou']:.4f}; {state['global_epoch']} epochs, "
        f"{state['seconds'] / 60:.1f} min",
        flush=True,
    )
    sys.stdout.flush()
    return TrainResult(
        run,
        run / FINAL_MODEL,
        float(state["best_val_dice"]),
        state["final_val"],
        int(state["global_epoch"]),
        float(state["seconds"]),
    )
