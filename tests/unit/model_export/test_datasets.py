"""Dataset layouts, reading, preparation and splits on trees generated under tmp_path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from model_export import datasets as ds
from service.contract import ModelContract
from tests.unit.model_export.trees import disc, save_png

CONTRACT = ModelContract(
    model_name="t",
    model_version="1",
    input_name="image",
    output_name="mask",
    input_height=32,
    input_width=32,
)


def make_dmid(root: Path, count: int = 6, unmasked: int = 2) -> Path:
    """DMID layout: TIFF Images/<sub>/IMGxxx.tif (16-bit) + ROI Masks/<sub>/IMGxxx.tif."""
    for i in range(count + unmasked):
        mask = disc((64, 48), (20 + i, 24), 8)
        image = (mask * 3000 + 500).astype(np.uint16)  # 12-bit data in a 16-bit TIFF
        path = root / "TIFF Images" / "part1" / f"IMG{i + 1:03d}.tif"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(path)
        if i < count:
            mpath = root / "ROI Masks" / "part1" / f"IMG{i + 1:03d}.tif"
            mpath.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray((mask * 255).astype(np.uint8)).save(mpath)
    return root


def test_dmid_layout_pairs_by_name(tmp_path: Path) -> None:
    root = make_dmid(tmp_path / "DMID")
    pairs = ds.find_pairs(root)
    assert [p.key for p in pairs] == [f"IMG{i:03d}" for i in range(1, 7)]
    assert all(p.mask is not None and p.mask.stem == p.image.stem for p in pairs)
    assert len(ds.find_pairs(root, include_unmasked=True)) == 8


def test_sixteen_bit_tiff_is_scaled_by_its_bit_depth(tmp_path: Path) -> None:
    root = make_dmid(tmp_path / "DMID", count=1, unmasked=0)
    image = ds.read_image(root / "TIFF Images" / "part1" / "IMG001.tif")
    assert image.dtype == np.float32
    assert image.max() == pytest.approx(3500 / 4095, rel=1e-4)  # 12-bit, not /65535


def test_not_a_dmid_tree_is_refused(tmp_path: Path) -> None:
    (tmp_path / "TIFF Images").mkdir()
    with pytest.raises(ds.DatasetError, match="DMID"):
        ds.find_dmid_pairs(tmp_path)


def test_images_and_masks_folders(pair_tree: Path) -> None:
    pairs = ds.find_pairs(pair_tree)
    assert len(pairs) == 10
    assert pairs[0].image.parent.name == "images" and pairs[0].mask.parent.name == "masks"


def test_flat_folder_with_mask_suffix_in_several_formats(tmp_path: Path) -> None:
    mask = disc((40, 40), (20, 20), 8)
    image = (mask * 200 + 20).astype(np.uint8)
    save_png(tmp_path / "a.png", image)
    save_png(tmp_path / "a_mask.png", (mask * 255).astype(np.uint8))
    Image.fromarray(image).convert("RGB").save(tmp_path / "b.jpg", quality=95)
    save_png(tmp_path / "b_mask.png", (mask * 255).astype(np.uint8))
    Image.fromarray(image.astype(np.uint16) * 257).save(tmp_path / "c.tif")
    Image.fromarray((mask * 255).astype(np.uint8)).save(tmp_path / "c_seg.tif")
    save_png(tmp_path / "lonely.png", image)
    pairs = ds.find_pairs(tmp_path)
    assert [p.key for p in pairs] == ["a", "b", "c"]
    for pair in pairs:
        assert ds.read_image(pair.image).shape == (40, 40)
        np.testing.assert_array_equal(ds.read_mask(pair.mask), mask)


def test_mask_is_binarised_at_127(tmp_path: Path) -> None:
    values = np.array([[0, 127, 128, 255]], np.uint8)
    path = save_png(tmp_path / "m.png", values)
    np.testing.assert_array_equal(ds.read_mask(path), [[False, False, True, True]])


def test_prepare_pair_uses_the_serving_preprocessing(pair_tree: Path) -> None:
    from service.imaging.preprocess import to_model_input

    pair = ds.find_pairs(pair_tree)[0]
    image, mask = ds.read_image(pair.image), ds.read_mask(pair.mask)
    x, y = ds.prepare_pair(image, mask, CONTRACT)
    np.testing.assert_array_equal(x, to_model_input(image, CONTRACT)[0][0, :, :, 0])
    assert y.shape == (32, 32) and set(np.unique(y)) <= {0, 1}
    # the disc's area survives the resize (within a few per cent)
    scale = (32 / image.shape[0]) * (32 / image.shape[1])
    assert y.sum() == pytest.approx(mask.sum() * scale, rel=0.15)


def test_mask_shape_must_match(pair_tree: Path) -> None:
    with pytest.raises(ds.DatasetError, match="differs"):
        ds.prepare_pair(np.zeros((10, 10), np.float32), np.zeros((9, 9), bool), CONTRACT)


def test_split_is_80_10_10_and_reproducible() -> None:
    keys = [f"k{i:03d}" for i in range(100)]
    first = ds.split_keys(keys, seed=7)
    assert [len(first[s]) for s in ds.SPLITS] == [80, 10, 10]
    assert first == ds.split_keys(list(reversed(keys)), seed=7)
    assert first != ds.split_keys(keys, seed=8)
    assert sorted(sum(first.values(), [])) == keys


def test_split_keeps_groups_together() -> None:
    keys = [f"k{i:03d}" for i in range(60)]
    groups = [f"bg{i // 6}" for i in range(60)]
    split = ds.split_keys(keys, groups=groups, seed=0)
    where = {k: s for s, ks in split.items() for k in ks}
    for g in set(groups):
        members = {where[k] for k, gg in zip(keys, groups, strict=True) if gg == g}
        assert len(members) == 1


def test_split_file_is_written_then_reused(pair_tree: Path, tmp_path: Path) -> None:
    pairs = ds.find_pairs(pair_tree)
    path = tmp_path / "run" / "split.json"
    first = ds.load_or_make_split(pairs, path, seed=3)
    stored = json.loads(path.read_text())
    assert stored["seed"] == 3 and stored["train"] == first["train"]
    assert ds.load_or_make_split(pairs, path, seed=99) == first  # the file wins


def test_load_arrays_at_model_size(pair_tree: Path) -> None:
    arrays = ds.load_arrays(ds.find_pairs(pair_tree)[:3], CONTRACT)
    assert arrays.images.shape == (3, 32, 32) and arrays.masks.shape == (3, 32, 32)
    assert arrays.images.dtype == np.float32 and 0.0 <= arrays.images.min() <= 1.0


def test_write_lesion_dataset_round_trips(ddsm66_tree: Path, tmp_path: Path) -> None:
    from model_export.lesions import load_ddsm66_backgrounds, write_lesion_dataset

    out = write_lesion_dataset(load_ddsm66_backgrounds(ddsm66_tree), tmp_path / "set", 5, seed=0)
    pairs = ds.find_pairs(out)
    assert len(pairs) == 5
    assert {p.group for p in pairs} == {"A_0000_1.RIGHT_MLO", "A_0001_1.RIGHT_MLO"}
    manifest = json.loads((out / ds.MANIFEST_FILE).read_text())
    for item, pair in zip(manifest["items"], pairs, strict=True):
        mask = ds.read_mask(pair.mask)
        assert (mask.sum() > 0) == bool(item["lesions"])
