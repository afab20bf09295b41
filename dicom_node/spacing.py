"""Which pixel spacing applies to an image (PS3.3 10.7.1.3, C.8.11.7)."""

from __future__ import annotations

from dataclasses import dataclass

from pydicom import Dataset


@dataclass(frozen=True)
class PixelSpacing:
    row_mm: float
    column_mm: float
    source: str  # the attribute keyword it came from

    @property
    def pixel_area_mm2(self) -> float:
        return self.row_mm * self.column_mm


def pixel_spacing(ds: Dataset) -> PixelSpacing | None:
    """PixelSpacing if present, else ImagerPixelSpacing (at the detector), else None.

    For mammography ImagerPixelSpacing is at the detector plane; without a
    calibrated PixelSpacing, measurements are "in the detector plane"
    (PS3.3 10.7.1.3). Values that are not two positive numbers count as absent.
    """
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = ds.get(keyword)
        try:
            row, col = (float(v) for v in value)  # type: ignore[union-attr]
        except (TypeError, ValueError):
            continue
        if row > 0 and col > 0:
            return PixelSpacing(row_mm=row, column_mm=col, source=keyword)
    return None
