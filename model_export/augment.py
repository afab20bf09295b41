"""Training-time augmentation: the reference work's albumentations pipeline, image + mask.

Exactly: ShiftScaleRotate p=0.5, RandomBrightnessContrast p=0.3,
GaussianBlur p=0.05, HorizontalFlip p=0.5, CLAHE p=0.2, RandomRotate90
p=0.5. "Each training image x3": an epoch shows every training image
``copies`` (3) times, each copy drawn afresh through the pipeline (which
leaves an image unchanged with some probability), so the training set is
three times its size without storing the copies.

The pipeline runs on 8-bit images because albumentations' CLAHE only takes
uint8; images come back as float32 in [0, 1]. Geometric transforms move the
mask with nearest-neighbour interpolation, so it stays binary.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

AUGMENT_COPIES = 3


def build_pipeline(seed: int | None = None) -> Any:
    """The albumentations ``Compose`` of the reference work."""
    import albumentations as A  # noqa: N812 - the library's own convention

    with warnings.catch_warnings():
        # albumentations 2 calls ShiftScaleRotate a special case of Affine; it is still the
        # transform the reference work names, so keep it.
        warnings.simplefilter("ignore", UserWarning)
        shift_scale_rotate = A.ShiftScaleRotate(p=0.5)
    return A.Compose(
        [
            shift_scale_rotate,
            A.RandomBrightnessContrast(p=0.3),
            A.GaussianBlur(p=0.05),
            A.HorizontalFlip(p=0.5),
            A.CLAHE(p=0.2),
            A.RandomRotate90(p=0.5),
        ],
        seed=seed,
    )


def augment_pair(
    pipeline: Any,
    image: np.ndarray,
    mask: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """One augmented copy: ``image`` (H, W) float [0, 1], ``mask`` (H, W) 0/1 -> the same kinds."""
    image8 = np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)
    out = pipeline(image=image8, mask=mask.astype(np.uint8))
    return out["image"].astype(np.float32) / 255.0, (out["mask"] > 0).astype(np.uint8)


def make_sequence(
    images: np.ndarray,
    masks: np.ndarray,
    *,
    batch_size: int = 8,
    copies: int = AUGMENT_COPIES,
    augment: bool = True,
    shuffle: bool = True,
    seed: int = 0,
    channels: int = 3,
    steps_per_epoch: int | None = None,
) -> Any:
    """A ``keras.utils.PyDataset`` of (x, y) batches: x (B, H, W, channels), y (B, H, W, 1)."""
    import keras

    class AugmentedPairs(keras.utils.PyDataset):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__(workers=1, use_multiprocessing=False)
            self.rng = np.random.default_rng(seed)
            self.pipeline = build_pipeline(seed) if augment else None
            self.order = np.arange(0)
            self.on_epoch_end()

        @property
        def num_batches(self) -> int:
            full = int(np.ceil(len(self.order) / batch_size))
            return min(full, steps_per_epoch) if steps_per_epoch else full

        def __len__(self) -> int:
            return self.num_batches

        def on_epoch_end(self) -> None:
            order = np.tile(np.arange(len(images)), copies if augment else 1)
            self.order = self.rng.permutation(order) if shuffle else order

        def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
            chosen = self.order[index * batch_size : (index + 1) * batch_size]
            xs, ys = [], []
            for i in chosen:
                x, y = images[i], masks[i]
                if self.pipeline is not None:
                    x, y = augment_pair(self.pipeline, x, y)
                xs.append(x)
                ys.append(y)
            x = np.repeat(np.stack(xs)[..., None], channels, axis=3).astype(np.float32)
            return x, np.stack(ys)[..., None].astype(np.float32)

    return AugmentedPairs()
