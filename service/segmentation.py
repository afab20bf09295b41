"""The one segmentation step every door uses: display image in, mask and lesions out.

The DICOM pipeline (:func:`service.pipeline.process_instance`), the upload API
(:mod:`service.api.segment` via :mod:`service.upload`) and ``mammoseg segment``
all call :func:`segment_image`; the SR, the upload JSON and the CLI JSON are
views of its :class:`Segmentation`. Its steps:

1. :meth:`Segmenter.predict`: the contract's preprocessing and ONNX Runtime;
   the probability map stays at model resolution, with the source box it covers;
2. :func:`service.imaging.lesions.find_lesions_in_map`: the map on the source
   matrix, thresholded, labelled once, specks under
   :func:`~service.imaging.lesions.minimum_area_px` dropped, measured; padding
   (PS3.3 C.7.5.1.1.2) is never tissue: probability 0 there (the display
   pipeline has already set those pixels to black before the model). Only the
   boxes around the model's candidates are upsampled to the source matrix, with
   the values a whole upsampling would give.

The lesion rules (threshold and minimum area) come from :class:`LesionRules`,
built in one place from the settings and the model contract.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from service.contract import ModelContract
from service.imaging.lesions import Lesion, find_lesions_in_map, minimum_area_px
from service.inference import Prediction, Segmenter

if TYPE_CHECKING:
    from service.settings import Settings


@dataclass(frozen=True)
class LesionRules:
    """What counts as a lesion: probability at least ``threshold``, area at least the minimum."""

    threshold: float
    min_lesion_area_mm2: float

    @classmethod
    def of(cls, settings: Settings, contract: ModelContract) -> LesionRules:
        """The settings' threshold if set, else the model's own; the settings' minimum area."""
        threshold = settings.threshold if settings.threshold is not None else contract.threshold
        return cls(threshold=threshold, min_lesion_area_mm2=settings.min_lesion_area_mm2)


@dataclass(frozen=True)
class Segmentation:
    """The result of one image: every door's output is a view of this."""

    mask: np.ndarray  # bool, the source matrix, specks dropped
    lesions: tuple[Lesion, ...]
    spacing_mm: tuple[float, float] | None  # (row, column) the measurements used
    threshold: float
    min_area_px: int
    max_probability: float  # over the whole image
    seconds_preprocess: float
    seconds_infer: float
    seconds_lesions: float

    @property
    def lesion_pixels(self) -> int:
        return sum(lesion.pixel_count for lesion in self.lesions)


def segment_image(
    pixels: np.ndarray,
    segmenter: Segmenter,
    rules: LesionRules,
    *,
    padding: np.ndarray | None = None,
    spacing_mm: tuple[float, float] | None = None,
) -> Segmentation:
    """Segment one display-ready [0, 1] grayscale image (rows x columns).

    ``padding`` (bool, same shape) marks Pixel Padding Value pixels; ``spacing_mm``
    is (row, column) in mm, or None for measurements in pixels.
    """
    return segment_prediction(
        segmenter.predict(pixels), rules, padding=padding, spacing_mm=spacing_mm
    )


def segment_prediction(
    prediction: Prediction,
    rules: LesionRules,
    *,
    padding: np.ndarray | None = None,
    spacing_mm: tuple[float, float] | None = None,
) -> Segmentation:
    """The second half of :func:`segment_image`: lesions from the model's prediction.

    For a caller that lets the image go between the two halves (the DICOM
    pipeline drops the full-size display image once the model has seen it).
    """
    start = time.perf_counter()
    prob_map = prediction.probability_map
    min_area_px = minimum_area_px(rules.min_lesion_area_mm2, spacing_mm, prob_map.shape)
    found = find_lesions_in_map(
        prob_map,
        rules.threshold,
        min_area_px=min_area_px,
        spacing_mm=spacing_mm,
        padding=padding,
    )
    return Segmentation(
        mask=found.mask,
        lesions=found.lesions,
        spacing_mm=spacing_mm,
        threshold=rules.threshold,
        min_area_px=min_area_px,
        max_probability=found.max_probability,
        seconds_preprocess=prediction.seconds_preprocess,
        seconds_infer=prediction.seconds_infer,
        seconds_lesions=time.perf_counter() - start,
    )


def lesion_view(lesion: Lesion) -> dict[str, object]:
    """One lesion as the upload API and ``mammoseg segment`` JSON give it."""
    box = lesion.bbox
    return {
        "number": lesion.number,
        "area_px": lesion.pixel_count,
        "area_mm2": lesion.area_mm2,
        "bbox": {"top": box.top, "left": box.left, "bottom": box.bottom, "right": box.right},
        "width_mm": lesion.width_mm,
        "height_mm": lesion.height_mm,
        "diameter_px": lesion.diameter_px,
        "diameter_mm": lesion.diameter_mm,
        "centroid_row": lesion.centroid_row,
        "centroid_col": lesion.centroid_col,
        "mean_probability": lesion.mean_probability,
        "max_probability": lesion.max_probability,
    }
