"""Small generated trees for the model_export tests (all under tmp_path)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.unit.model_export.trees import disc, save_png


@pytest.fixture
def pair_tree(tmp_path: Path) -> Path:
    """images/ + masks/ with 10 pairs: bright discs on noise, mask = the disc."""
    rng = np.random.default_rng(0)
    root = tmp_path / "pairs"
    for i in range(10):
        mask = disc((96, 80), (30 + 3 * i, 40), 10 + i)
        image = (rng.uniform(0, 60, mask.shape) + 180 * mask).astype(np.uint8)
        save_png(root / "images" / f"case{i:02d}.png", image)
        save_png(root / "masks" / f"case{i:02d}.png", (mask * 255).astype(np.uint8))
    return root


@pytest.fixture
def ddsm66_tree(tmp_path: Path) -> Path:
    """A ddsm66-like folder: two 240x120 'mammograms' with tissue label maps."""
    root = tmp_path / "ddsm66"
    rng = np.random.default_rng(1)
    for i in range(2):
        labels = np.full((240, 120), 64, np.uint8)
        breast = disc((240, 120), (120, 0), 100)
        labels[breast] = 128
        labels[disc((240, 120), (120, 0), 60)] = 192
        labels[:40, :30] = 255  # pectoral muscle
        image = np.where(labels == 64, 5, np.where(labels == 255, 220, 90)).astype(np.float32)
        image = np.clip(image + rng.normal(0, 5, image.shape), 0, 255).astype(np.uint8)
        save_png(root / "fgt_seg" / f"A_{i:04d}_1.RIGHT_MLO.png", image)
        save_png(root / "fgt_seg_labels" / f"A_{i:04d}_1.RIGHT_MLO_LI.png", labels)
    return root
