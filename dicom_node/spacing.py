"""Which pixel spacing applies to a projection image (PS3.3 10.7.1.3, C.8.11.4, C.8.11.7).

A mammogram states up to two spacings.  Imager Pixel Spacing (0018,1164) is
at the detector plane (Type 1 in the DX Detector module); Pixel Spacing
(0028,0030), when present, has been calibrated to the patient (or to the
detector) as Pixel Spacing Calibration Type says.  Measurements use Pixel
Spacing when present, else Imager Pixel Spacing, and say which (the SR names
the attribute); a digitised film often has neither.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from pydicom import Dataset

SpacingKeyword = Literal["PixelSpacing", "ImagerPixelSpacing"]
#: Preference order: calibrated Pixel Spacing first, then the detector plane.
SPACING_KEYWORDS: Final[tuple[SpacingKeyword, ...]] = ("PixelSpacing", "ImagerPixelSpacing")


@dataclass(frozen=True)
class PixelSpacing:
    """Physical distance between pixel centres: rows (vertical) and columns, in mm.

    ``source`` is the attribute keyword it came from (PixelSpacing or
    ImagerPixelSpacing), so that results can say how their mm were obtained.
    """

    row_mm: float
    column_mm: float
    source: SpacingKeyword

    def __post_init__(self) -> None:
        if not (self.row_mm > 0 and self.column_mm > 0):
            raise ValueError(f"pixel spacing must be positive, got {self.row_mm}, {self.column_mm}")
        if self.source not in SPACING_KEYWORDS:
            raise ValueError(f"pixel spacing source must be one of {SPACING_KEYWORDS}")

    @property
    def pixel_area_mm2(self) -> float:
        return self.row_mm * self.column_mm


def pixel_spacing(ds: Dataset) -> PixelSpacing | None:
    """PixelSpacing if present, else ImagerPixelSpacing (at the detector), else None.

    For mammography ImagerPixelSpacing is at the detector plane; without a
    calibrated PixelSpacing, measurements are "in the detector plane"
    (PS3.3 10.7.1.3).  Values are row spacing then column spacing (PS3.3
    10.7.1.3); values that are not two positive finite numbers count as absent.
    """
    for keyword in SPACING_KEYWORDS:
        value = ds.get(keyword)
        try:
            row, col = (float(v) for v in value)  # type: ignore[union-attr]
        except (TypeError, ValueError):
            continue
        if 0 < row < float("inf") and 0 < col < float("inf"):
            return PixelSpacing(row_mm=row, column_mm=col, source=keyword)
    return None
