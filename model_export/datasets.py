"""Training data: DMID, any folder of image/mask pairs, and lesion-insertion sets on disk.

Every image becomes a display-ready ``[0, 1]`` grayscale array and goes to
model resolution through :func:`service.imaging.preprocess.to_model_input`, the very
function the node uses, so training and serving see the same pixels. Masks
are binarised at 127 (on an 8-bit scale) and resized with the same box.

Splits are 80/10/10 with a fixed seed, written to a JSON file so that a
later run (or evaluation) uses exactly the same images; items that share a
group (lesion images made from one background) stay in one split.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from dicom_node.pixels import display_image
from service.contract import ModelContract
from service.imaging.preprocess import crop_padded, resize, to_model_input

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp", ".dcm", ".dicom")
MASK_SUFFIXES = ("_mask", "_masks", "_seg", "_roi", "_label")
MASK_LEVEL = 127
SPLITS = ("train", "val", "test")
SPLIT_FILE = "split.json"
MANIFEST_FILE = "lesions.json"
#: Written by ``make-dataset --cddcesm``: items with the patient as their ``group``.
DATASET_FILE = "dataset.json"


class DatasetError(ValueError):
    """A dataset folder that cannot be read as promised."""


@dataclass(frozen=True)
class Pair:
    """One image with its mask file (``mask`` None: an image with no lesion)."""

    key: str
    image: Path
    mask: Path | None
    group: str = ""


# --------------------------------------------------------------------------- reading


def read_dicom(path: str | Path) -> tuple[np.ndarray, object]:
    """A DICOM file's display-ready [0, 1] image through the node's own pixel path."""
    import pydicom

    ds = pydicom.dcmread(str(path))
    return np.asarray(display_image(ds).pixels, dtype=np.float32), ds


def _is_dicom(path: Path) -> bool:
    if path.suffix.lower() in (".dcm", ".dicom"):
        return True
    with path.open("rb") as handle:
        head = handle.read(132)
    return head[128:132] == b"DICM"


def _to_unit(array: np.ndarray) -> np.ndarray:
    """Integer pixels to [0, 1]: 8-bit by 255; 16-bit by the smallest of 10/12/14/16 bits that fits.

    Many 16-bit TIFF mammograms hold 12- or 14-bit data; dividing them by
    65535 would leave them nearly black.
    """
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    if np.issubdtype(array.dtype, np.integer):
        top = max(int(array.max()), 1)
        bits = next((b for b in (8, 10, 12, 14, 16) if top < 2**b), int(math.log2(top)) + 1)
        return np.clip(array.astype(np.float32) / float(2**bits - 1), 0.0, 1.0)
    array = array.astype(np.float32)
    if array.max() > 1.0:
        array = array / float(array.max())
    return np.clip(array, 0.0, 1.0)


def _pil_gray(path: Path) -> np.ndarray:
    with Image.open(path) as opened:
        pil: Image.Image = opened
        if pil.mode in ("RGB", "RGBA", "P", "LA", "CMYK", "YCbCr"):
            pil = pil.convert("L")
        array = np.asarray(pil)
    if array.ndim == 3:
        array = array[..., :3].mean(axis=2).astype(array.dtype)
    return array


def read_image(path: str | Path) -> np.ndarray:
    """Any supported image (8/16-bit TIFF, PNG, JPEG, DICOM) as float32 [0, 1] grayscale."""
    path = Path(path)
    if _is_dicom(path):
        return read_dicom(path)[0]
    return _to_unit(_pil_gray(path))


def read_mask(path: str | Path) -> np.ndarray:
    """A mask binarised at 127 on an 8-bit scale (16-bit masks are scaled first)."""
    path = Path(path)
    if _is_dicom(path):
        return read_dicom(path)[0] > MASK_LEVEL / 255.0
    array = _pil_gray(path)
    if array.dtype == np.bool_:
        return array
    if array.dtype == np.uint16 and array.max() > 255:
        array = array / 257.0
    return array > MASK_LEVEL


def prepare_pair(
    image: np.ndarray,
    mask: np.ndarray | None,
    contract: ModelContract,
) -> tuple[np.ndarray, np.ndarray]:
    """Image and mask at model resolution: ``(H, W)`` float32 image and ``(H, W)`` uint8 mask."""
    tensor, box = to_model_input(image, contract)
    x = tensor[0, :, :, 0] if contract.input_layout == "NHWC" else tensor[0, 0]
    if mask is None:
        y = np.zeros(x.shape, dtype=np.uint8)
    else:
        if mask.shape != image.shape:
            raise DatasetError(f"mask shape {mask.shape} differs from image shape {image.shape}")
        crop = crop_padded(mask, box, dtype=np.float32)
        y = (resize(crop, contract.input_height, contract.input_width) >= 0.5).astype(np.uint8)
    return x.astype(np.float32), y


# --------------------------------------------------------------------------- layouts


def _image_files(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and (p.suffix.lower() in IMAGE_SUFFIXES or (not p.suffix and _is_dicom(p)))
    )


def find_dmid_pairs(root: str | Path, *, include_unmasked: bool = False) -> list[Pair]:
    """DMID: ``TIFF Images/.../IMGxxx.tif`` with ``ROI Masks/.../IMGxxx.tif`` (matched by name).

    Images without an ROI mask are normal cases; they are left out unless
    ``include_unmasked`` (then they train as empty masks).
    """
    root = Path(root)
    image_dir = (
        next((d for d in root.iterdir() if d.is_dir() and d.name.lower() == "tiff images"), None)
        if root.is_dir()
        else None
    )
    mask_dir = (
        next((d for d in root.iterdir() if d.is_dir() and d.name.lower() == "roi masks"), None)
        if root.is_dir()
        else None
    )
    if image_dir is None or mask_dir is None:
        raise DatasetError(f"{root} is not in DMID layout ('TIFF Images/' and 'ROI Masks/')")
    masks = {p.stem.upper(): p for p in _image_files(mask_dir)}
    pairs = []
    for image in _image_files(image_dir):
        mask = masks.get(image.stem.upper())
        if mask is None and not include_unmasked:
            continue
        pairs.append(Pair(image.stem, image, mask))
    if not pairs:
        raise DatasetError(f"no DMID image has an ROI mask under {root}")
    return pairs


def _strip_mask_suffix(stem: str) -> str | None:
    lower = stem.lower()
    for suffix in MASK_SUFFIXES:
        if lower.endswith(suffix):
            return stem[: -len(suffix)]
    return None


def find_folder_pairs(root: str | Path, *, include_unmasked: bool = False) -> list[Pair]:
    """Image/mask pairs in a folder, in either of two layouts.

    ``images/`` beside ``masks/`` with the same file stems (what
    ``make-dataset`` writes), or one folder with ``NAME.ext`` beside
    ``NAME_mask.ext`` (also ``_seg``, ``_roi``, ``_label``).
    """
    root = Path(root)
    groups = _read_groups(root)
    if (root / "images").is_dir() and (root / "masks").is_dir():
        masks = {p.stem: p for p in _image_files(root / "masks")}
        pairs = []
        for image in _image_files(root / "images"):
            mask = masks.get(image.stem)
            if mask is None and not include_unmasked:
                continue
            pairs.append(Pair(image.stem, image, mask, groups.get(image.stem, "")))
    else:
        files = _image_files(root)
        masks = {}
        for path in files:
            base = _strip_mask_suffix(path.stem)
            if base is not None:
                masks[str(path.parent / base)] = path
        pairs = []
        for path in files:
            if _strip_mask_suffix(path.stem) is not None:
                continue
            mask = masks.get(str(path.parent / path.stem))
            if mask is None and not include_unmasked:
                continue
            key = str(path.relative_to(root).with_suffix(""))
            pairs.append(Pair(key, path, mask, groups.get(key, "")))
    if not pairs:
        raise DatasetError(f"no image/mask pairs found under {root}")
    return pairs


def find_pairs(root: str | Path, *, include_unmasked: bool = False) -> list[Pair]:
    """DMID layout when the folder has it, otherwise a folder of pairs."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset folder not found: {root}")
    names = {d.name.lower() for d in root.iterdir() if d.is_dir()}
    if {"tiff images", "roi masks"} <= names:
        return find_dmid_pairs(root, include_unmasked=include_unmasked)
    return find_folder_pairs(root, include_unmasked=include_unmasked)


def _read_groups(root: Path) -> dict[str, str]:
    """Each key's split group: the lesion image's background, or the real image's patient."""
    groups: dict[str, str] = {}
    for name, field in ((MANIFEST_FILE, "background"), (DATASET_FILE, "group")):
        manifest = root / name
        if manifest.is_file():
            items = json.loads(manifest.read_text())["items"]
            groups.update({item["key"]: item[field] for item in items})
    return groups


# --------------------------------------------------------------------------- splits


def split_keys(
    keys: Sequence[str],
    *,
    groups: Sequence[str] | None = None,
    seed: int = 42,
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
) -> dict[str, list[str]]:
    """Deterministic train/val/test split; keys sharing a non-empty group stay together."""
    if abs(sum(fractions) - 1.0) > 1e-6 or min(fractions) < 0:
        raise DatasetError(f"split fractions must be >= 0 and sum to 1, got {fractions}")
    groups = list(groups) if groups is not None else [""] * len(keys)
    units: dict[str, list[str]] = {}
    for key, group in sorted(zip(keys, groups, strict=True)):
        units.setdefault(group or f"key:{key}", []).append(key)
    names = sorted(units)
    order = np.random.default_rng(seed).permutation(len(names))
    n_train = round(fractions[0] * len(names))
    n_val = round(fractions[1] * len(names))
    if len(names) >= 3 and fractions[1] > 0 and n_val == 0:
        n_val = 1
    if len(names) >= 3 and fractions[2] > 0 and n_train + n_val >= len(names):
        n_train = len(names) - n_val - 1
    cut = {
        "train": order[:n_train],
        "val": order[n_train : n_train + n_val],
        "test": order[n_train + n_val :],
    }
    return {split: sorted(k for i in idx for k in units[names[i]]) for split, idx in cut.items()}


def load_or_make_split(
    pairs: Sequence[Pair],
    split_file: str | Path,
    *,
    seed: int = 42,
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
) -> dict[str, list[str]]:
    """Read the split file if it exists (checking it covers these pairs), else write it."""
    split_file = Path(split_file)
    keys = [p.key for p in pairs]
    if split_file.is_file():
        stored = json.loads(split_file.read_text())
        split = {name: list(stored[name]) for name in SPLITS}
        missing = set(keys) - {k for v in split.values() for k in v}
        if missing:
            raise DatasetError(f"{split_file} does not cover {len(missing)} images of this dataset")
        return split
    split = split_keys(keys, groups=[p.group for p in pairs], seed=seed, fractions=fractions)
    split_file.parent.mkdir(parents=True, exist_ok=True)
    split_file.write_text(
        json.dumps({"seed": seed, "fractions": list(fractions), **split}, indent=1)
    )
    return split


@dataclass(frozen=True)
class ArraySet:
    """Images ``(N, H, W)`` float32 in [0, 1] and masks ``(N, H, W)`` uint8 at model size."""

    keys: tuple[str, ...]
    images: np.ndarray
    masks: np.ndarray

    def __len__(self) -> int:
        return len(self.keys)


def load_arrays(pairs: Iterable[Pair], contract: ModelContract) -> ArraySet:
    """Read and prepare pairs at model resolution (through the serving preprocessing)."""
    keys, images, masks = [], [], []
    for pair in pairs:
        image = read_image(pair.image)
        mask = read_mask(pair.mask) if pair.mask is not None else None
        x, y = prepare_pair(image, mask, contract)
        keys.append(pair.key)
        images.append(x)
        masks.append(y)
    if not keys:
        raise DatasetError("no images to load")
    return ArraySet(tuple(keys), np.stack(images), np.stack(masks))


def select(pairs: Sequence[Pair], keys: Iterable[str]) -> list[Pair]:
    wanted = set(keys)
    return [p for p in pairs if p.key in wanted]
