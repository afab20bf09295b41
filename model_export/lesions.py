"""Lesion insertion: simulated breast masses placed in real mammograms, with exact masks.

No mammography set with mass masks can be had here, so the shipped model is
trained on real breast backgrounds (DDSM film, ddsm66 and CBIS-DDSM) into
which simulated masses are inserted. Because we draw each mass, its mask is
exact: the mask is where the mass's own density profile is at least half its
full strength (so a blurred, ill-defined margin fades out past the mask edge,
and thin spicules thinner than the blur stay faint and outside the mask, as a
radiologist's outline would leave them).

Physical size. The ddsm66 PNGs are 960x480 px, downsampled from DDSM film
scans (42-50 um pixels, 4-6k rows, the breast's MLO height roughly 20-24 cm).
We assume an isotropic :data:`DDSM66_MM_PER_PX` = 0.25 mm per pixel (960 rows
~ 240 mm); it is an estimate within about +-20 %, not a measured spacing.
DICOM backgrounds use their Pixel Spacing / Imager Pixel Spacing when present
and otherwise :data:`CBIS_MM_PER_PX` (DDSM's 50 um scan pitch).

Appearance. A mass is denser than fat: it is drawn as a brightening
``I + c * T * (1 - I)`` (saturating towards white, so it shows less in dense
tissue, as masses do), with ``c`` the contrast, ``T`` the blurred shape times
a mild inner texture. Margins: round, oval, lobulated, irregular and
spiculated (a core with radiating spicules). Masses go only where the
tissue map says breast (adipose or fibroglandular), never into the pectoral
muscle or the background.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from model_export.datasets import MANIFEST_FILE, DatasetError, read_dicom

DDSM66_MM_PER_PX = 0.25
CBIS_MM_PER_PX = 0.05
#: ddsm66 tissue label values (fgt_seg_labels/*_LI.png).
LABEL_BACKGROUND, LABEL_ADIPOSE, LABEL_FIBROGLANDULAR, LABEL_PECTORAL = 64, 128, 192, 255
MARGINS = ("round", "oval", "lobulated", "irregular", "spiculated")
MIN_DIAMETER_MM = 3.0
MAX_DIAMETER_MM = 40.0
#: Working resolution for large backgrounds: the long side is brought down to this.
WORKING_LONG_SIDE = 1024


class LesionError(ValueError):
    """A background or a lesion request that cannot be honoured."""


@dataclass(frozen=True)
class Background:
    """A real mammogram and where in it breast tissue is."""

    name: str
    image: np.ndarray  # float32 [0, 1], HxW
    tissue: np.ndarray  # bool HxW: adipose or fibroglandular tissue
    mm_per_px: float
    source: str = ""


@dataclass(frozen=True)
class LesionSpec:
    """One simulated mass, as drawn."""

    margin: str
    diameter_mm: float
    center: tuple[int, int]
    contrast: float
    blur_mm: float


@dataclass(frozen=True)
class InsertionConfig:
    """How masses are drawn; every field is a knob of ``make-dataset``."""

    min_diameter_mm: float = MIN_DIAMETER_MM
    max_diameter_mm: float = MAX_DIAMETER_MM
    contrast: tuple[float, float] = (0.12, 0.45)
    #: Probability of 0, 1, 2, 3 masses in an image.
    count_probabilities: tuple[float, ...] = (0.15, 0.6, 0.18, 0.07)
    margins: tuple[str, ...] = MARGINS
    attempts: int = 40
    extra: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 0 < self.min_diameter_mm <= self.max_diameter_mm:
            raise LesionError("need 0 < min_diameter_mm <= max_diameter_mm")
        if abs(sum(self.count_probabilities) - 1.0) > 1e-6:
            raise LesionError("count_probabilities must sum to 1")
        unknown = set(self.margins) - set(MARGINS)
        if unknown:
            raise LesionError(f"unknown margins {sorted(unknown)}; choose from {MARGINS}")


# --------------------------------------------------------------------------- backgrounds


def load_ddsm66_backgrounds(folder: str | Path) -> list[Background]:
    """ddsm66 images (``fgt_seg/*.png``) with tissue from ``fgt_seg_labels/*_LI.png``."""
    folder = Path(folder)
    images = sorted((folder / "fgt_seg").glob("*.png"))
    if not images:
        raise LesionError(f"no fgt_seg/*.png under {folder}")
    backgrounds = []
    for path in images:
        label_path = folder / "fgt_seg_labels" / f"{path.stem}_LI.png"
        if not label_path.is_file():
            raise LesionError(f"tissue map missing for {path.name}: {label_path}")
        image = np.asarray(Image.open(path).convert("L"), dtype=np.float32) / 255.0
        labels = np.asarray(Image.open(label_path).convert("L"))
        tissue = (labels == LABEL_ADIPOSE) | (labels == LABEL_FIBROGLANDULAR)
        backgrounds.append(Background(path.stem, image, tissue, DDSM66_MM_PER_PX, str(path)))
    return backgrounds


def breast_mask_by_threshold(image: np.ndarray, *, erode_px: int = 6) -> np.ndarray:
    """Breast region of a mammogram without a tissue map.

    Otsu threshold, the largest connected component, holes filled, then
    eroded so that the skin line and film edge stay free of masses.
    """
    values = np.clip(image, 0.0, 1.0)
    hist, edges = np.histogram(values, bins=256, range=(0.0, 1.0))
    weights = hist.astype(np.float64)
    centers = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(weights)
    w1 = w0[-1] - w0
    m0 = np.cumsum(weights * centers)
    mean0 = m0 / np.maximum(w0, 1)
    mean1 = (m0[-1] - m0) / np.maximum(w1, 1)
    level = centers[int(np.argmax(w0 * w1 * (mean0 - mean1) ** 2))]
    bright = values > max(level * 0.6, 0.05)
    labels, count = ndimage.label(bright)
    if count == 0:
        return np.zeros_like(bright)
    sizes = ndimage.sum_labels(bright, labels, index=np.arange(1, count + 1))
    breast = ndimage.binary_fill_holes(labels == int(np.argmax(sizes)) + 1)
    if erode_px:
        breast = ndimage.binary_erosion(breast, iterations=erode_px)
    # Film labels and the chest wall edge: keep masses off the outermost 3 % of rows/columns.
    h, w = breast.shape
    rim_r, rim_c = max(1, h * 3 // 100), max(1, w * 3 // 100)
    breast[:rim_r] = breast[-rim_r:] = False
    breast[:, :rim_c] = breast[:, -rim_c:] = False
    return breast


def _downsample(image: np.ndarray, long_side: int) -> tuple[np.ndarray, float]:
    scale = long_side / max(image.shape)
    if scale >= 1.0:
        return image.astype(np.float32), 1.0
    size = (round(image.shape[1] * scale), round(image.shape[0] * scale))
    pil = Image.fromarray(np.ascontiguousarray(image, dtype=np.float32), mode="F")
    small = np.asarray(pil.resize(size, Image.Resampling.BOX), dtype=np.float32)
    return small, image.shape[0] / small.shape[0]


def dicom_spacing_mm(ds: object) -> float | None:
    """Row spacing in mm from Pixel Spacing or Imager Pixel Spacing, if the file has one."""
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = getattr(ds, keyword, None)
        if value:
            return float(value[0])
    return None


def load_dicom_background(
    path: str | Path,
    *,
    long_side: int = WORKING_LONG_SIDE,
    mm_per_px: float | None = None,
) -> Background:
    """A DICOM mammogram as a background, the breast found by thresholding."""
    image, ds = read_dicom(path)
    spacing = mm_per_px or dicom_spacing_mm(ds) or CBIS_MM_PER_PX
    small, factor = _downsample(image, long_side)
    path = Path(path)
    return Background(
        f"{path.parent.name}_{path.stem}",
        small,
        breast_mask_by_threshold(small),
        spacing * factor,
        str(path),
    )


# --------------------------------------------------------------------------- shapes


def _radial_function(margin: str, theta: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Boundary radius as a function of angle, scaled so that its maximum is 1."""
    if margin == "round":
        r = 1.0 + 0.04 * np.cos(2 * theta + rng.uniform(0, 2 * np.pi))
    elif margin == "oval":
        aspect = rng.uniform(1.3, 2.0)
        phi = rng.uniform(0, np.pi)
        a, b = math.sqrt(aspect), 1 / math.sqrt(aspect)
        r = 1.0 / np.sqrt((np.cos(theta - phi) / a) ** 2 + (np.sin(theta - phi) / b) ** 2)
    elif margin == "lobulated":
        lobes = int(rng.integers(3, 7))
        r = (
            1.0
            + rng.uniform(0.12, 0.25) * np.cos(lobes * theta + rng.uniform(0, 2 * np.pi))
            + 0.04 * np.cos(2 * theta + rng.uniform(0, 2 * np.pi))
        )
    elif margin in ("irregular", "spiculated"):
        r = np.ones_like(theta)
        for order in range(2, 11):
            amp = rng.uniform(0.0, 0.16) / order**0.7
            r = r + amp * np.cos(order * theta + rng.uniform(0, 2 * np.pi))
    else:
        raise LesionError(f"unknown margin {margin!r}")
    return r / r.max()


def _segment_distance(
    yy: np.ndarray,
    xx: np.ndarray,
    start: tuple[float, float],
    end: tuple[float, float],
) -> tuple[np.ndarray, np.ndarray]:
    """Distance of each pixel to a segment and the position along it (0 at start, 1 at end)."""
    dy, dx = end[0] - start[0], end[1] - start[1]
    length2 = dy * dy + dx * dx
    t = np.clip(((yy - start[0]) * dy + (xx - start[1]) * dx) / max(length2, 1e-9), 0.0, 1.0)
    return np.hypot(yy - (start[0] + t * dy), xx - (start[1] + t * dx)), t


def draw_mass(
    margin: str,
    diameter_px: float,
    blur_px: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw one mass on its own patch.

    Returns the density profile ``T`` in [0, 1] (what is added, before
    contrast), the exact mask (where the blurred shape is >= 0.5) and the
    sharp shape. The largest extent of the shape is at most ``diameter_px``.
    """
    radius = diameter_px / 2.0
    half = int(math.ceil(radius + 4 * blur_px + 3))
    yy, xx = np.mgrid[-half : half + 1, -half : half + 1].astype(np.float32)
    rho = np.hypot(yy, xx)
    theta = np.arctan2(yy, xx)
    core_scale = rng.uniform(0.45, 0.65) if margin == "spiculated" else 1.0
    boundary = radius * core_scale * _radial_function(margin, theta, rng)
    shape = rho <= boundary
    if margin == "spiculated":
        for _ in range(int(rng.integers(8, 21))):
            angle = rng.uniform(0, 2 * np.pi)
            inner = radius * core_scale * 0.6
            outer = radius * rng.uniform(0.75, 1.0)
            start = (inner * math.sin(angle), inner * math.cos(angle))
            end = (outer * math.sin(angle), outer * math.cos(angle))
            dist, t = _segment_distance(yy, xx, start, end)
            width = max(0.6, radius * rng.uniform(0.04, 0.09)) * (1.0 - 0.8 * t)
            shape |= dist <= width
        shape &= rho <= radius  # spicule tips stay within the stated diameter
    if not shape.any():
        shape[half, half] = True
    blurred = (
        ndimage.gaussian_filter(shape.astype(np.float32), blur_px)
        if blur_px > 0
        else (shape.astype(np.float32))
    )
    mask = blurred >= 0.5
    if not mask.any():  # a mass smaller than its blur: its centre is where it is
        mask = blurred >= blurred.max() * 0.5
    dome = np.clip(1.0 - (rho / max(radius, 1.0)) ** 2, 0.0, 1.0)
    noise = ndimage.gaussian_filter(
        rng.standard_normal(shape.shape).astype(np.float32), max(1.0, radius / 8)
    )
    noise /= max(float(np.abs(noise).max()), 1e-6)
    texture = np.clip(0.8 + 0.2 * dome + 0.08 * noise, 0.6, 1.1)
    profile = np.clip(blurred * texture, 0.0, 1.0).astype(np.float32)
    return profile, mask, shape


def _place(
    patch: np.ndarray,
    center: tuple[int, int],
    shape: tuple[int, int],
) -> tuple[tuple[slice, slice], tuple[slice, slice]] | None:
    """Slices of the image and of the patch where a patch centred at ``center`` overlaps."""
    half = patch.shape[0] // 2
    top, left = center[0] - half, center[1] - half
    r0, c0 = max(top, 0), max(left, 0)
    r1, c1 = min(top + patch.shape[0], shape[0]), min(left + patch.shape[1], shape[1])
    if r0 >= r1 or c0 >= c1:
        return None
    return (slice(r0, r1), slice(c0, c1)), (slice(r0 - top, r1 - top), slice(c0 - left, c1 - left))


def insert_lesions(
    background: Background,
    rng: np.random.Generator,
    config: InsertionConfig | None = None,
    *,
    count: int | None = None,
) -> tuple[np.ndarray, np.ndarray, list[LesionSpec]]:
    """Insert 0-3 simulated masses into a background; returns image, exact mask and specs.

    Every mask pixel lies inside ``background.tissue``; a mass that cannot be
    placed there after ``config.attempts`` tries (shrinking as it goes) is
    dropped, so the returned specs say what was really drawn.
    """
    config = config or InsertionConfig()
    if count is None:
        count = int(rng.choice(len(config.count_probabilities), p=config.count_probabilities))
    image = background.image.astype(np.float32, copy=True)
    mask = np.zeros(image.shape, dtype=bool)
    specs: list[LesionSpec] = []
    candidates = np.argwhere(background.tissue)
    if count == 0 or len(candidates) == 0:
        return image, mask, specs
    log_lo, log_hi = math.log(config.min_diameter_mm), math.log(config.max_diameter_mm)
    keep_clear = ndimage.binary_dilation(mask, iterations=2)
    for _ in range(count):
        margin = str(rng.choice(config.margins))
        diameter_mm = math.exp(rng.uniform(log_lo, log_hi))
        blur_mm = rng.uniform(0.2, 0.6) if margin in ("round", "oval") else rng.uniform(0.4, 1.5)
        contrast = float(rng.uniform(*config.contrast))
        for attempt in range(config.attempts):
            if attempt and attempt % 8 == 0:
                diameter_mm = max(config.min_diameter_mm, diameter_mm * 0.8)
            diameter_px = diameter_mm / background.mm_per_px
            # a margin's blur never swamps the mass itself
            blur_px = min(blur_mm, 0.15 * diameter_mm) / background.mm_per_px
            profile, lesion_mask, _ = draw_mass(margin, diameter_px, blur_px, rng)
            row, col = candidates[rng.integers(len(candidates))]
            center = (int(row), int(col))
            where = _place(profile, center, image.shape)
            if where is None:
                continue
            (img_sl, patch_sl) = where
            # The whole mask must land in the image and in tissue, clear of other masses.
            if lesion_mask[patch_sl].sum() != lesion_mask.sum():
                continue
            placed = lesion_mask[patch_sl]
            if not background.tissue[img_sl][placed].all() or keep_clear[img_sl][placed].any():
                continue
            region = image[img_sl]
            image[img_sl] = region + contrast * profile[patch_sl] * (1.0 - region)
            mask[img_sl] |= placed
            keep_clear = ndimage.binary_dilation(mask, iterations=max(2, int(2 * blur_px)))
            specs.append(
                LesionSpec(
                    margin,
                    round(diameter_mm, 2),
                    center,
                    round(contrast, 3),
                    round(blur_px * background.mm_per_px, 2),
                )
            )
            break
    return np.clip(image, 0.0, 1.0), mask, specs


def write_lesion_dataset(
    backgrounds: Sequence[object],
    out_dir: str | Path,
    count: int,
    *,
    seed: int = 0,
    config: object | None = None,
    prefix: str = "lesion",
) -> Path:
    """Write ``count`` lesion-insertion images as ``images/*.png`` + ``masks/*.png``.

    Backgrounds are used in turn (each about ``count / len(backgrounds)``
    times with different masses); ``lesions.json`` records each image's
    background (the split's group), pixel spacing and the masses drawn.
    Images are 8-bit PNGs at the background's working resolution; masks 0/255.
    """
    if not backgrounds:
        raise DatasetError("no backgrounds to insert lesions into")
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    (out_dir / "masks").mkdir(parents=True, exist_ok=True)
    config = config if isinstance(config, InsertionConfig) else InsertionConfig()
    rng = np.random.default_rng(seed)
    items = []
    for index in range(count):
        background = backgrounds[index % len(backgrounds)]
        if not isinstance(background, Background):
            raise DatasetError("backgrounds must be model_export.lesions.Background objects")
        image, mask, specs = insert_lesions(background, rng, config)
        key = f"{prefix}_{index:05d}"
        image8 = np.round(image * 255).astype(np.uint8)
        Image.fromarray(image8).save(out_dir / "images" / f"{key}.png")
        Image.fromarray(mask.astype(np.uint8) * 255).save(out_dir / "masks" / f"{key}.png")
        items.append(
            {
                "key": key,
                "background": background.name,
                "source": Path(background.source).name,
                "mm_per_px": round(background.mm_per_px, 4),
                "lesions": [
                    {
                        "margin": s.margin,
                        "diameter_mm": s.diameter_mm,
                        "center_rc": list(s.center),
                        "contrast": s.contrast,
                        "blur_mm": s.blur_mm,
                    }
                    for s in specs
                ],
            }
        )
    manifest = {
        "seed": seed,
        "count": count,
        "backgrounds": sorted({getattr(b, "name", "") for b in backgrounds}),
        "config": {
            "min_diameter_mm": config.min_diameter_mm,
            "max_diameter_mm": config.max_diameter_mm,
            "contrast": list(config.contrast),
            "count_probabilities": list(config.count_probabilities),
            "margins": list(config.margins),
        },
        "items": items,
    }
    (out_dir / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1))
    return out_dir
