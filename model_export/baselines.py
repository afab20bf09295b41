"""Two non-learnt baselines that every evaluation table puts beside the model.

- ``brightest``: the brightest pixels inside the breast, as many as a typical
  lesion covers (a fraction of the image: by default the median mask fraction
  of the training split, which ``mammoseg evaluate`` computes and prints).
- ``otsu``: a classical two-level Otsu inside the breast: Otsu's threshold
  over the breast's pixels separates fat from dense tissue, a second Otsu over
  the dense pixels keeps the brightest class.

Both take a display-ready ``[0, 1]`` image and return a boolean mask of its
shape. Names on the command line: ``baseline:brightest`` (optionally
``baseline:brightest@0.05``) and ``baseline:otsu``.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from service.imaging.preprocess import BREAST_LEVEL

PREFIX = "baseline:"
KINDS = ("brightest", "otsu")
DEFAULT_FRACTION = 0.05


def is_baseline(spec: str) -> bool:
    return str(spec).startswith(PREFIX)


def parse(spec: str) -> tuple[str, float | None]:
    """``baseline:brightest@0.04`` -> ("brightest", 0.04); ``baseline:otsu`` -> ("otsu", None)."""
    body = str(spec)[len(PREFIX) :]
    kind, _, value = body.partition("@")
    if kind not in KINDS:
        raise ValueError(f"unknown baseline {kind!r}; choose one of {', '.join(KINDS)}")
    if not value:
        return kind, None
    try:
        fraction = float(value)
    except ValueError:
        raise ValueError(f"{spec}: {value!r} is not a fraction") from None
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"{spec}: the fraction must lie between 0 and 1")
    return kind, fraction


def breast_mask(image: np.ndarray, *, level: float = BREAST_LEVEL) -> np.ndarray:
    """The largest connected region brighter than the air level."""
    above = image > level
    labels, count = ndimage.label(above)
    if count == 0:
        return above
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of values in [0, 1] (the bin edge that maximises between-class variance)."""
    if values.size == 0:
        return 1.0
    hist, edges = np.histogram(values, bins=bins, range=(0.0, 1.0))
    hist = hist.astype(np.float64)
    centres = (edges[:-1] + edges[1:]) / 2
    weight_low = np.cumsum(hist)
    weight_high = weight_low[-1] - weight_low
    sum_low = np.cumsum(hist * centres)
    mean_low = np.divide(sum_low, weight_low, out=np.zeros_like(sum_low), where=weight_low > 0)
    mean_high = np.divide(
        sum_low[-1] - sum_low, weight_high, out=np.zeros_like(sum_low), where=weight_high > 0
    )
    between = weight_low * weight_high * (mean_low - mean_high) ** 2
    return float(edges[int(np.argmax(between)) + 1])


def brightest(image: np.ndarray, fraction: float = DEFAULT_FRACTION) -> np.ndarray:
    """The ``fraction * image.size`` brightest breast pixels (ties at the cut included)."""
    breast = breast_mask(image)
    values = image[breast]
    count = min(int(round(fraction * image.size)), values.size)
    if count <= 0:
        return np.zeros(image.shape, dtype=bool)
    cut = np.partition(values, values.size - count)[values.size - count]
    return breast & (image >= cut)


def otsu(image: np.ndarray) -> np.ndarray:
    """Two-level Otsu inside the breast: the brightest of three classes."""
    breast = breast_mask(image)
    first = otsu_threshold(image[breast])
    dense = breast & (image > first)
    second = otsu_threshold(image[dense])
    return dense & (image > second)


def predict(spec: str, image: np.ndarray, fraction: float | None = None) -> np.ndarray:
    kind, given = parse(spec)
    if kind == "brightest":
        return brightest(image, given or fraction or DEFAULT_FRACTION)
    return otsu(image)


def display_name(spec: str, fraction: float | None = None) -> str:
    kind, given = parse(spec)
    if kind == "brightest":
        return f"naive: brightest {100 * (given or fraction or DEFAULT_FRACTION):.1f} % in breast"
    return "classical: two-level Otsu in breast"
