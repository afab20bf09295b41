"""Lesions from a probability map: the one rule for masks, components and measurements.

A lesion is a 4-connected component of ``probability >= threshold`` with at
least ``min_area_px`` pixels (smaller components are specks and leave the
mask too). The probability map is labelled once; for each component, in
pixels and, given the row and column spacing, in mm:

- area: the number of pixels times the area of one pixel;
- largest diameter: the maximum Feret diameter, the longest distance between
  two points of the lesion taken as the union of its pixel squares, found on
  the convex hull of the pixel corners of each row's outermost pixels (the
  hull of a union of squares is the hull of their corners); its two ends are kept
  (``long_axis``: the SR draws the diameter as a line);
- bounding box: the half-open pixel box [top, bottom) x [left, right) of the
  matrix, and its height and width;
- centroid (row, column, pixel centres) and the mean and maximum probability.

Lesions are numbered 1.. from the largest area down (ties: top-most, then
left-most, then the first pixel in raster order), so that "Mass 1" is the largest.

The node never makes the full-size map: :func:`find_lesions_in_map` thresholds
the model-resolution map, grows each candidate by one model pixel (as far as a
bilinear tap reaches) and upsamples only the box of each, with Pillow's values
bit for bit (:func:`service.imaging.preprocess.upsample_window`), so that its
mask and lesions are those of :func:`find_lesions` on the full-size map.
:func:`minimum_area_px` is the one rule that turns ``min_lesion_area_mm2`` into
pixels, with or without a spacing. Nothing here knows DICOM or the app: the SR
builder, the upload JSON and the CLI JSON are views of these numbers.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

import numpy as np
from scipy import ndimage

from service.imaging.preprocess import Box, ModelProbability

#: Without a pixel spacing the image is taken to span this many mm on its longer side
#: (a 24 x 30 cm mammography detector), so that ``min_lesion_area_mm2`` still means
#: about the same share of a breast in a picture of any size.
ASSUMED_FIELD_MM: Final = 300.0


@dataclass(frozen=True, kw_only=True)
class Lesion:
    """One connected component of the mask and its measurements.

    ``*_mm*`` fields are None when the image states no pixel spacing; the
    pixel-unit fields are always there. ``bbox`` lies inside the matrix.
    """

    number: int
    pixel_count: int
    area_mm2: float | None
    diameter_px: float
    diameter_mm: float | None
    bbox: Box
    height_mm: float | None
    width_mm: float | None
    centroid_row: float
    centroid_col: float
    mean_probability: float
    max_probability: float
    #: The two ends of the largest diameter, (row, column) on pixel edges of the source
    #: matrix (pixel (r, c) covers [r, r+1) x [c, c+1)): the pair that gives
    #: ``diameter_mm`` when there is a spacing, else ``diameter_px``. None only for a
    #: lesion made elsewhere (tests) without it.
    long_axis: tuple[tuple[float, float], tuple[float, float]] | None = None

    def __post_init__(self) -> None:
        if self.number < 1 or self.pixel_count < 1:
            raise ValueError("a lesion has a number >= 1 and at least one pixel")
        box = self.bbox
        if not (0 <= box.top < box.bottom and 0 <= box.left < box.right):
            raise ValueError(f"bounding box {box} is empty or negative")
        for name in ("mean_probability", "max_probability"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} {getattr(self, name)} is not in [0, 1]")


def minimum_area_px(
    min_area_mm2: float, spacing_mm: tuple[float, float] | None, shape: tuple[int, int]
) -> int:
    """``min_area_mm2`` in pixels of this image (at least one pixel).

    Without a spacing, the longer side is taken to be :data:`ASSUMED_FIELD_MM`.
    """
    if spacing_mm is None:
        side_mm = ASSUMED_FIELD_MM / max(1, *shape)
        spacing_mm = (side_mm, side_mm)
    return max(1, math.ceil(min_area_mm2 / (spacing_mm[0] * spacing_mm[1])))


def find_lesions(
    probability: np.ndarray,
    threshold: float,
    *,
    min_area_px: int,
    spacing_mm: tuple[float, float] | None,
) -> tuple[np.ndarray, tuple[Lesion, ...]]:
    """The mask (bool, specks dropped) and its lesions, from one labelling of the map."""
    if not isinstance(probability, np.ndarray) or probability.ndim != 2:
        raise ValueError("probability must be a 2-D numpy array")
    mask = probability >= threshold
    _check(mask, probability, spacing_mm, min_area_px)
    if not mask.any():
        return mask, ()
    labels, count = ndimage.label(mask)
    found, keep = _components(labels, count, probability, min_area_px, (0, 0), mask.shape[1])
    return keep[labels], _lesions(found, spacing_mm)


@dataclass(frozen=True)
class LesionSearch:
    """What :func:`find_lesions_in_map` found: the mask, its lesions, the map's maximum."""

    mask: np.ndarray  # bool, the source matrix, specks dropped
    lesions: tuple[Lesion, ...]
    max_probability: float  # over the source matrix (0 where padding or outside the box)


def find_lesions_in_map(
    prob_map: ModelProbability,
    threshold: float,
    *,
    min_area_px: int,
    spacing_mm: tuple[float, float] | None,
    padding: np.ndarray | None = None,
) -> LesionSearch:
    """:func:`find_lesions` of ``prob_map.full()`` (0 at ``padding``), without making it.

    Bilinear upsampling gives each source pixel a weighted mean of model pixels
    at most one model pixel from its cell (:meth:`ModelProbability.cells`), and a
    weighted mean is never above the largest value it averages. So a source
    pixel reaches ``threshold`` only in a cell next to a model pixel that does,
    and a 4-connected group of source pixels lies in one connected group of such
    cells. Each group of cells is upsampled on its own box only, thresholded and
    labelled there: the same components, pixel for pixel. A map that is not an
    upsampling (a source box smaller than the model input) is simply made whole.
    """
    _check_rules(spacing_mm, min_area_px)
    shape = prob_map.shape
    if padding is not None and (padding.dtype != np.bool_ or padding.shape != shape):
        raise ValueError("padding must be a bool array shaped like the source matrix")
    if not prob_map.upsampled or not threshold > 0.0:
        probability = prob_map.full()
        if padding is not None:
            probability[padding] = 0.0
        mask, lesions = find_lesions(
            probability, threshold, min_area_px=min_area_px, spacing_mm=spacing_mm
        )
        return LesionSearch(mask, lesions, float(probability.max(initial=0.0)))
    mask = np.zeros(shape, dtype=np.bool_)
    inside = prob_map.inside()
    if inside.height <= 0 or inside.width <= 0:
        return LesionSearch(mask, (), 0.0)
    cells = prob_map.cells()
    found: list[_Candidate] = []
    seen = 0.0
    seeds = prob_map.probability >= threshold
    for window, part, values in _windows(prob_map, seeds, cells, padding, min_area_px):
        hits = values >= threshold
        if part is not None:
            hits &= part
        del part
        labels, count = _label(hits)
        del hits
        if count == 0:
            continue
        pieces, _ = _components(
            labels, count, values, min_area_px, (window.top, window.left), shape[1]
        )
        for piece in pieces:
            box = piece.box
            mask[box.top : box.bottom, box.left : box.right] |= piece.region
            seen = max(seen, piece.peak)
        found.extend(pieces)
    peak = _map_maximum(prob_map, cells, padding, seen)
    return LesionSearch(mask, _lesions(found, spacing_mm), peak)


def _label(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """``ndimage.label`` (4-connected), in 16 bits when the labels fit (half the memory)."""
    try:
        labels, count = ndimage.label(mask, output=np.uint16)
    except RuntimeError:  # more than 65535 components: "insufficient bit-depth"
        labels, count = ndimage.label(mask)
    return labels, int(count)


def _windows(
    prob_map: ModelProbability,
    seeds: np.ndarray,
    cells: tuple[np.ndarray, np.ndarray],
    padding: np.ndarray | None,
    min_pixels: int,
) -> Iterator[tuple[Box, np.ndarray | None, np.ndarray]]:
    """For each group of cells within one model pixel of ``seeds``: its source box.

    Yields the box (source coordinates), which of its pixels have their cell in
    the group (bool; None when no other group's cells reach into the box) and
    the upsampled probability there (float32, 0 at padding). Groups whose cells
    hold fewer than ``min_pixels`` source pixels, or none, are left out.
    """
    if not seeds.any():
        return
    rows, columns = cells
    grown = ndimage.binary_dilation(seeds, structure=np.ones((3, 3), dtype=np.bool_))
    labels, count = ndimage.label(grown)
    per_row = np.bincount(rows, minlength=seeds.shape[0]).astype(np.float64)
    per_column = np.bincount(columns, minlength=seeds.shape[1]).astype(np.float64)
    pixels = np.bincount(
        labels.ravel(), weights=np.outer(per_row, per_column).ravel(), minlength=count + 1
    )
    inside = prob_map.inside()
    for label, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None or pixels[label] < min_pixels:
            continue
        r0, r1 = (int(i) for i in np.searchsorted(rows, (box[0].start, box[0].stop)))
        c0, c1 = (int(i) for i in np.searchsorted(columns, (box[1].start, box[1].stop)))
        if r1 <= r0 or c1 <= c0:
            continue
        window = Box(inside.top + r0, inside.left + c0, inside.top + r1, inside.left + c1)
        # Another group's cells in the box: keep each pixel to the group of its cell.
        near = labels[box]
        part = None
        if np.any((near != 0) & (near != label)):
            part = (labels == label)[np.ix_(rows[r0:r1], columns[c0:c1])]
        values = prob_map.window(window)
        if padding is not None:
            values[padding[window.top : window.bottom, window.left : window.right]] = 0.0
        yield window, part, values


def _map_maximum(
    prob_map: ModelProbability,
    cells: tuple[np.ndarray, np.ndarray],
    padding: np.ndarray | None,
    seen: float,
) -> float:
    """The largest source-matrix probability (at least 0 and ``seen``, a value already met).

    A source pixel above ``best`` needs a model pixel above ``best`` within one
    cell (as for the threshold), so only those boxes are upsampled, once
    ``best`` has been raised to the largest value in the cell of the map's peak.
    """
    small = prob_map.probability
    rows, columns = cells
    best = max(0.0, seen)
    reached = small[rows[0] : rows[-1] + 1, columns[0] : columns[-1] + 1]
    top, left = (int(i) for i in np.unravel_index(int(np.argmax(reached)), reached.shape))
    peak_cell = np.zeros(small.shape, dtype=np.bool_)
    peak_cell[rows[0] + top, columns[0] + left] = True
    for _window, _part, values in _windows(prob_map, peak_cell, cells, padding, 1):
        best = max(best, float(values.max()))
    for _window, _part, values in _windows(prob_map, small > best, cells, padding, 1):
        best = max(best, float(values.max()))
    return best


def measure_lesions(
    mask: np.ndarray,
    probability: np.ndarray,
    *,
    spacing_mm: tuple[float, float] | None,
    min_pixels: int = 1,
) -> tuple[Lesion, ...]:
    """The lesions of a given ``mask`` (bool) with ``probability`` (float, same shape).

    For a mask made elsewhere (tests, a reference outline); the node uses
    :func:`find_lesions_in_map`. ``spacing_mm`` is (row spacing, column spacing) or
    None for pixel units only; components smaller than ``min_pixels`` are not lesions.
    """
    _check(mask, probability, spacing_mm, min_pixels)
    if not mask.any():
        return ()
    labels, count = ndimage.label(mask)
    found, _ = _components(labels, count, probability, min_pixels, (0, 0), mask.shape[1])
    return _lesions(found, spacing_mm)


def threshold_mask(prob: np.ndarray, threshold: float, *, min_area_px: int = 0) -> np.ndarray:
    """The mask of :func:`find_lesions` without the measurements (training and evaluation)."""
    mask = prob >= threshold
    if min_area_px > 0 and mask.any():
        labels, count = ndimage.label(mask)
        mask = _kept(labels, count, min_area_px)[labels]
    return mask


def mask_dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two boolean masks pooled over all pixels (1.0 when both are empty)."""
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def _kept(labels: np.ndarray, count: int, min_pixels: int) -> np.ndarray:
    """Per label (0 = background): whether its component has at least ``min_pixels``."""
    # bincount is ~15x faster than ndimage.sum_labels on a full-size matrix.
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    keep = sizes >= min_pixels
    keep[0] = False
    return keep


@dataclass(frozen=True)
class _Candidate:
    """One kept component, in source coordinates, before numbering."""

    size: int
    box: Box
    first: int  # raster index of its first pixel: the last tie-break of the numbering
    region: np.ndarray  # bool, the component inside its box
    mean: float
    peak: float
    centroid: tuple[float, float]


def _components(
    labels: np.ndarray,
    count: int,
    probability: np.ndarray,
    min_pixels: int,
    origin: tuple[int, int],
    columns: int,
) -> tuple[list[_Candidate], np.ndarray]:
    """The components of ``labels`` with at least ``min_pixels``, and the keep table.

    ``origin`` is where ``labels`` lies on a source matrix ``columns`` wide.
    """
    # Sizes from each component's box rather than np.bincount, which would copy the
    # labels as int64 (71 MB for a 3712 x 2400 box). Per-component work stays inside
    # each component's box: cheap on full-size images.
    keep = np.zeros(count + 1, dtype=np.bool_)
    found = []
    for label, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        region = labels[box] == label
        size = int(np.count_nonzero(region))
        if size < min_pixels:
            continue
        keep[label] = True
        values = probability[box]
        # Centroid from the row and column counts: the same sums as np.nonzero's means.
        rows = int(np.dot(np.arange(region.shape[0]), np.count_nonzero(region, axis=1)))
        cols = int(np.dot(np.arange(region.shape[1]), np.count_nonzero(region, axis=0)))
        top, left = origin[0] + box[0].start, origin[1] + box[1].start
        found.append(
            _Candidate(
                size=size,
                box=Box(top, left, origin[0] + box[0].stop, origin[1] + box[1].stop),
                first=top * columns + left + int(np.argmax(region[0])),
                region=region,
                mean=float(np.sum(values, where=region, dtype=np.float64)) / size,
                peak=float(np.max(values, where=region, initial=-np.inf)),
                centroid=(top + rows / size, left + cols / size),
            )
        )
    return found, keep


def _lesions(found: list[_Candidate], spacing_mm: tuple[float, float] | None) -> tuple[Lesion, ...]:
    """Number the components largest first and measure them."""
    found = sorted(found, key=lambda item: (-item.size, item.box.top, item.box.left, item.first))
    row_mm, column_mm = spacing_mm if spacing_mm is not None else (1.0, 1.0)
    lesions = []
    for number, item in enumerate(found, start=1):
        bbox = item.box
        hull = _hull_of_sorted(_row_extreme_corners(item.region))
        diameter_px, ends_px = _hull_extremes(hull, 1.0, 1.0)
        diameter_mm, ends_mm = _hull_extremes(hull, row_mm, column_mm)
        (a_row, a_col), (b_row, b_col) = ends_mm if spacing_mm else ends_px
        lesions.append(
            Lesion(
                number=number,
                pixel_count=item.size,
                area_mm2=item.size * row_mm * column_mm if spacing_mm else None,
                diameter_px=diameter_px,
                diameter_mm=diameter_mm if spacing_mm else None,
                bbox=bbox,
                height_mm=bbox.height * row_mm if spacing_mm else None,
                width_mm=bbox.width * column_mm if spacing_mm else None,
                centroid_row=item.centroid[0],
                centroid_col=item.centroid[1],
                mean_probability=min(1.0, max(0.0, item.mean)),
                max_probability=min(1.0, max(0.0, item.peak)),
                long_axis=(
                    (bbox.top + a_row, bbox.left + a_col),
                    (bbox.top + b_row, bbox.left + b_col),
                ),
            )
        )
    return tuple(lesions)


def _check_rules(spacing_mm: tuple[float, float] | None, min_pixels: int) -> None:
    if spacing_mm is not None:
        if len(spacing_mm) != 2 or not all(0 < s < math.inf for s in spacing_mm):
            raise ValueError(f"spacing_mm must be two positive numbers, got {spacing_mm}")
    if isinstance(min_pixels, bool) or not isinstance(min_pixels, int) or min_pixels < 1:
        raise ValueError(f"min_pixels must be an int >= 1, got {min_pixels!r}")


def _check(
    mask: np.ndarray,
    probability: np.ndarray,
    spacing_mm: tuple[float, float] | None,
    min_pixels: int,
) -> None:
    if not isinstance(mask, np.ndarray) or mask.dtype != np.bool_ or mask.ndim != 2:
        raise ValueError("mask must be a 2-D bool numpy array")
    if not isinstance(probability, np.ndarray) or probability.shape != mask.shape:
        raise ValueError("probability must be a numpy array shaped like the mask")
    if not np.issubdtype(probability.dtype, np.floating):
        raise ValueError("probability must be a float array")
    _check_rules(spacing_mm, min_pixels)


def _row_extreme_corners(region: np.ndarray) -> np.ndarray:
    """Corners (row, column) of the outermost pixel of each row of ``region``, sorted, distinct.

    Coordinates are pixel edges relative to the region's box: pixel (r, c)
    covers [r, r+1) x [c, c+1).  Inner pixels cannot lie on the convex hull.
    """
    occupied = region.any(axis=1)
    if occupied.all():  # a component's rows always are: no copies of the region
        rows, part = np.arange(region.shape[0]), region
    else:
        rows = np.flatnonzero(occupied)
        part = region[rows]
    first = np.argmax(part, axis=1)
    last = region.shape[1] - np.argmax(part[:, ::-1], axis=1)
    points = np.concatenate(
        [
            np.stack([rows, first], axis=1),
            np.stack([rows + 1, first], axis=1),
            np.stack([rows, last], axis=1),
            np.stack([rows + 1, last], axis=1),
        ]
    )
    return _sorted_distinct(points.astype(np.float64))


def _sorted_distinct(points: np.ndarray) -> np.ndarray:
    """``np.unique(points, axis=0)`` for (n, 2) points, by one lexsort (much faster)."""
    ordered = points[np.lexsort((points[:, 1], points[:, 0]))]
    fresh = np.ones(len(ordered), dtype=np.bool_)
    fresh[1:] = np.any(ordered[1:] != ordered[:-1], axis=1)
    return ordered[fresh]


def convex_hull(points: np.ndarray) -> np.ndarray:
    """Vertices of the convex hull of 2-D ``points`` (Andrew's monotone chain, vectorised).

    Collinear and inner points are dropped; the vertices come in the order
    Andrew's algorithm gives them, from the lexicographically smallest.
    """
    return _hull_of_sorted(_sorted_distinct(np.asarray(points, dtype=np.float64).reshape(-1, 2)))


def _hull_of_sorted(ordered: np.ndarray) -> np.ndarray:
    """:func:`convex_hull` of points already sorted and distinct."""
    if len(ordered) <= 2:
        return ordered
    lower = ordered[_chain(ordered)]
    upper = ordered[::-1][_chain(ordered[::-1])]
    return np.concatenate([lower[:-1], upper[:-1]])


#: Pruning rounds before the chain is finished one point at a time (never reached on masks).
_PRUNING_ROUNDS = 64


def _chain(points: np.ndarray) -> np.ndarray:
    """Indices of one half of the hull of ``points`` (sorted, distinct): strict left turns only.

    A middle point that does not turn strictly left between its two neighbours
    lies on or beyond the segment joining two points of the set, so it is no
    vertex: every such point is dropped at once, round after round, until the
    chain turns left everywhere, which makes it the half hull. A mask's
    outline needs a handful of rounds; past :data:`_PRUNING_ROUNDS` the rest is
    done point by point, as Andrew's algorithm does.
    """
    index = np.arange(len(points))
    for _ in range(_PRUNING_ROUNDS):
        if len(index) <= 2:
            return index
        chain = points[index]
        a, b, c = chain[:-2], chain[1:-1], chain[2:]
        cross = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1])
        cross -= (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])
        drop = cross <= 0
        if not drop.any():
            return index
        keep = np.ones(len(index), dtype=np.bool_)
        keep[1:-1] = ~drop
        index = index[keep]
    kept: list[int] = []
    for i in index.tolist():
        while len(kept) >= 2:
            (ax, ay), (bx, by), (px, py) = points[kept[-2]], points[kept[-1]], points[i]
            if (bx - ax) * (py - ay) - (by - ay) * (px - ax) > 0:
                break
            kept.pop()
        kept.append(i)
    return np.asarray(kept, dtype=np.intp)


def max_feret_diameter(points: np.ndarray, row_mm: float, column_mm: float) -> float:
    """Longest distance between two of ``points`` (row, column), scaled to mm.

    Scaling the axes maps the convex hull onto the hull of the scaled points,
    so the hull is found once in pixel units and measured in mm.
    """
    return _hull_diameter(convex_hull(points), row_mm, column_mm)


def _hull_diameter(hull: np.ndarray, row_mm: float, column_mm: float) -> float:
    """Longest distance between two vertices of ``hull`` (row, column), scaled to mm."""
    return _hull_extremes(hull, row_mm, column_mm)[0]


def _hull_extremes(
    hull: np.ndarray, row_mm: float, column_mm: float
) -> tuple[float, tuple[tuple[float, float], tuple[float, float]]]:
    """:func:`_hull_diameter` and the two vertices (row, column, unscaled) at its ends."""
    if len(hull) < 2:
        point = (float(hull[0][0]), float(hull[0][1])) if len(hull) else (0.0, 0.0)
        return 0.0, (point, point)
    scaled = hull * np.array([row_mm, column_mm])
    longest, ends = -1.0, (0, 0)
    # Chunks keep memory flat for the (rare) hull with thousands of vertices.
    for start in range(0, len(scaled), 512):
        block = scaled[start : start + 512]
        deltas = block[:, None, :] - scaled[None, :, :]
        squared = (deltas**2).sum(axis=2)
        i, j = np.unravel_index(int(np.argmax(squared)), squared.shape)
        if float(squared[i, j]) > longest:
            longest, ends = float(squared[i, j]), (start + int(i), int(j))
    first, second = hull[ends[0]], hull[ends[1]]
    return math.sqrt(longest), (
        (float(first[0]), float(first[1])),
        (float(second[0]), float(second[1])),
    )
