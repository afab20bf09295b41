"""The display pipeline: stored pixel values to a display-ready grayscale image.

A mammogram is decoded once, in whatever transfer syntax it arrived, then put
through the grayscale standard display pipeline of PS3.4 N.2.1:

1. Modality LUT (PS3.3 C.11.1): Rescale Slope/Intercept or Modality LUT Sequence;
2. VOI LUT (PS3.3 C.11.2): VOI LUT Sequence, else Window Center/Width with the
   VOI LUT Function (LINEAR, LINEAR_EXACT, SIGMOID; C.11.2.1.2), else min-max
   over the non-padding pixels;
3. MONOCHROME1 inverted (PS3.3 C.7.6.3.1.2), as is an image whose Presentation
   LUT Shape is INVERSE (C.11.6.1.2; the DX/MG pairing MONOCHROME1 + INVERSE,
   C.8.11.1.1.1, inverts once), so that high always means bright;
4. pixel padding (PS3.3 C.7.5.1.1.2) set to black.

The result is float32 in [0, 1], what the model and the overlay capture take.
Full-size images (3328 x 4096) go through in float32 without float64 copies.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.encaps import get_frame
from pydicom.pixels import get_decoder
from pydicom.uid import UID, RLELossless

from dicom_node.codestream import CodestreamError, check_frame, check_rle
from dicom_node.errors import DicomNodeError

#: Largest image accepted by default (rows x columns), checked before decoding.
MAX_PIXELS = 100_000_000
#: Bits Allocated this pipeline decodes (PS3.3 C.7.6.3.1; grayscale 8 or 16).
SUPPORTED_BITS_ALLOCATED = (8, 16)
MAX_BITS_STORED = 16
GRAYSCALE_PHOTOMETRICS = ("MONOCHROME1", "MONOCHROME2")
#: VOI LUT Functions of PS3.3 C.11.2.1.3; LINEAR is the default when absent.
VOI_LUT_FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")
DEFAULT_VOI_LUT_FUNCTION = "LINEAR"
#: Presentation LUT Shape that inverts the VOI output (PS3.3 C.11.6.1.2).
PRESENTATION_LUT_INVERSE = "INVERSE"
#: exp() argument bound for SIGMOID, beyond which float32 saturates anyway.
_SIGMOID_EXPONENT_LIMIT = 80.0
_UNSIGNED_16_LIMIT = 1 << 16
_SIGNED_16_LIMIT = 1 << 15


class PixelDataError(DicomNodeError):
    """Pixel data that this pipeline cannot turn into a display image.

    The message says why in words a person can act on and carries no patient
    data, e.g. ``cannot decode transfer syntax JPEG 2000 ...: <reason>``.
    """


@dataclass(frozen=True)
class DisplayImage:
    """A display-ready grayscale image (PS3.4 N.2.1 output, as P-values in [0, 1]).

    ``pixels`` is float32, rows x columns, high = bright (MONOCHROME1 already
    inverted).  ``padding`` is True where Pixel Padding Value (and Range Limit)
    matched the stored values, None when the image declares no padding.
    ``window`` says which VOI transform was applied, without patient data.
    """

    pixels: np.ndarray
    padding: np.ndarray | None
    window: str

    def __post_init__(self) -> None:
        if not isinstance(self.pixels, np.ndarray) or self.pixels.dtype != np.float32:
            raise ValueError("DisplayImage.pixels must be a float32 numpy array")
        if self.pixels.ndim != 2:
            raise ValueError(f"DisplayImage.pixels must be 2-D, got shape {self.pixels.shape}")
        if self.padding is not None and (
            self.padding.dtype != np.bool_ or self.padding.shape != self.pixels.shape
        ):
            raise ValueError("DisplayImage.padding must be a bool array shaped like pixels")
        if not self.window:
            raise ValueError("DisplayImage.window must say which VOI transform was applied")


@dataclass(frozen=True)
class _Geometry:
    rows: int
    columns: int
    bits_allocated: int
    bits_stored: int
    signed: bool
    photometric: str
    transfer_syntax: UID


def display_image(ds: Dataset, *, voi_index: int = 0, max_pixels: int = MAX_PIXELS) -> DisplayImage:
    """Decode ``ds`` once and run the grayscale display pipeline (PS3.4 N.2.1).

    ``voi_index`` picks the VOI LUT Sequence item, or else the Window
    Center/Width pair (PS3.3 C.11.2.1.2: multiple values are alternative
    views); when the image has no such item the next step down is used
    (window, then min-max), and ``window`` of the result says which.
    ``max_pixels`` bounds rows x columns before anything is decoded.

    Raises PixelDataError for anything undecodable: unsupported layout
    (multi-frame, colour, float, > 16 bits), missing attributes, absurd sizes,
    truncated or corrupt pixel data.
    """
    if voi_index < 0:
        raise ValueError(f"voi_index must be >= 0, got {voi_index}")
    if max_pixels < 1:
        raise ValueError(f"max_pixels must be >= 1, got {max_pixels}")
    geometry = _check_geometry(ds, max_pixels)
    stored = _decode(ds, geometry)
    padding = _padding_mask(ds, stored, geometry)
    try:
        values = _apply_modality_lut(ds, stored, geometry)
        pixels, window = _apply_voi(ds, values, voi_index, padding, geometry)
    except PixelDataError:
        raise
    except (ValueError, TypeError, IndexError, KeyError, AttributeError) as exc:
        raise PixelDataError(f"cannot apply the Modality/VOI LUT: {exc}") from exc
    if _inverted(ds, geometry):
        np.subtract(np.float32(1.0), pixels, out=pixels)
    if padding is not None:
        pixels[padding] = 0.0
    return DisplayImage(pixels=pixels, padding=padding, window=window)


def _inverted(ds: Dataset, geometry: _Geometry) -> bool:
    """MONOCHROME1, or Presentation LUT Shape INVERSE: one inversion (PS3.3 C.11.6.1.2)."""
    shape = str(ds.get("PresentationLUTShape") or "").strip().upper()
    return geometry.photometric == "MONOCHROME1" or shape == PRESENTATION_LUT_INVERSE


def _required_int(ds: Dataset, keyword: str) -> int:
    value = ds.get(keyword)
    if value is None or value == "":
        raise PixelDataError(f"missing {keyword}: cannot interpret the pixel data")
    try:
        return int(value)
    except (TypeError, ValueError) as exc:
        raise PixelDataError(f"{keyword} is not an integer") from exc


def _check_geometry(ds: Dataset, max_pixels: int) -> _Geometry:
    """Refuse what the pipeline does not handle, before decoding anything."""
    if "PixelData" not in ds:
        if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
            raise PixelDataError("float pixel data is not supported (mammograms are integer)")
        raise PixelDataError("the dataset has no Pixel Data")
    file_meta = getattr(ds, "file_meta", None)
    transfer_syntax = file_meta.get("TransferSyntaxUID") if file_meta is not None else None
    if not transfer_syntax:
        raise PixelDataError("missing Transfer Syntax UID: cannot tell how pixel data is encoded")
    transfer_syntax = UID(transfer_syntax)
    frames = ds.get("NumberOfFrames")
    try:
        frames = int(frames) if frames not in (None, "") else 1
    except (TypeError, ValueError) as exc:
        raise PixelDataError("NumberOfFrames is not an integer") from exc
    if frames != 1:
        raise PixelDataError(f"only single-frame images are supported, got {frames} frames")
    samples = _required_int(ds, "SamplesPerPixel")
    if samples != 1:
        raise PixelDataError(f"only grayscale images are supported, got {samples} samples/pixel")
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if photometric not in GRAYSCALE_PHOTOMETRICS:
        raise PixelDataError(
            f"Photometric Interpretation {photometric or '(missing)'} is not supported: "
            "expected MONOCHROME1 or MONOCHROME2"
        )
    rows = _required_int(ds, "Rows")
    columns = _required_int(ds, "Columns")
    if rows < 1 or columns < 1:
        raise PixelDataError(f"image size {rows}x{columns} is empty")
    if rows * columns > max_pixels:
        raise PixelDataError(
            f"image size {rows}x{columns} exceeds the limit of {max_pixels} pixels"
        )
    bits_allocated = _required_int(ds, "BitsAllocated")
    if bits_allocated not in SUPPORTED_BITS_ALLOCATED:
        raise PixelDataError(f"Bits Allocated {bits_allocated} is not supported: expected 8 or 16")
    bits_stored = _required_int(ds, "BitsStored")
    if not 1 <= bits_stored <= min(bits_allocated, MAX_BITS_STORED):
        raise PixelDataError(
            f"Bits Stored {bits_stored} is inconsistent with Bits Allocated {bits_allocated}"
        )
    pixel_representation = _required_int(ds, "PixelRepresentation")
    if pixel_representation not in (0, 1):
        raise PixelDataError(f"Pixel Representation must be 0 or 1, got {pixel_representation}")
    return _Geometry(
        rows=rows,
        columns=columns,
        bits_allocated=bits_allocated,
        bits_stored=bits_stored,
        signed=pixel_representation == 1,
        photometric=photometric,
        transfer_syntax=transfer_syntax,
    )


def _check_codestream(ds: Dataset, geometry: _Geometry, name: str) -> dict[str, str]:
    """Refuse a compressed frame that declares another image than the dataset, before decoding.

    Returns the decoder options: RLE goes to pylibjpeg-rle only, whose output
    is one frame, never to pydicom's own RLE decoder, which grows as it goes.
    """
    ts = geometry.transfer_syntax
    try:
        compressed = ts.is_compressed
    except ValueError:  # not a transfer syntax: the decoder lookup says so
        return {}
    if not compressed:
        return {}
    try:
        frame = get_frame(ds.PixelData, 0, number_of_frames=1)
    except Exception as exc:  # noqa: BLE001 - whatever the fragment parser raises
        raise PixelDataError(f"cannot decode transfer syntax {name}: {exc}") from exc
    sizes = {
        "rows": geometry.rows,
        "columns": geometry.columns,
        "samples": 1,
        "bits_allocated": geometry.bits_allocated,
    }
    try:
        if ts == RLELossless:
            check_rle(frame, **sizes)
            return {"decoding_plugin": "pylibjpeg"}
        check_frame(frame, **sizes)
    except CodestreamError as exc:
        raise PixelDataError(
            f"cannot decode transfer syntax {name}: {exc} (refused before decoding)"
        ) from exc
    return {}


def _native_view(ds: Dataset, geometry: _Geometry) -> np.ndarray | None:
    """Native little-endian pixel data as a read-only view of its bytes (no copy), if it is.

    The common case (an uncompressed 16-bit mammogram) then costs no decoded
    copy: 27 MB less at full size. Signed data with bits above High Bit are
    left to pydicom, which sign-extends them; so is anything unusual.
    """
    ts = geometry.transfer_syntax
    try:
        native = not ts.is_compressed and ts.is_little_endian
    except ValueError:  # not a transfer syntax: the decoder lookup says so
        return None
    data = ds.get("PixelData")
    if not native or not isinstance(data, bytes | bytearray):
        return None
    if geometry.signed and geometry.bits_stored != geometry.bits_allocated:
        return None
    kind = "i" if geometry.signed else "u"
    dtype = np.dtype(f"<{kind}{geometry.bits_allocated // 8}")
    count = geometry.rows * geometry.columns
    if len(data) < count * dtype.itemsize:
        return None  # truncated: pydicom's decoder gives the reason
    view = np.frombuffer(data, dtype=dtype, count=count).reshape(geometry.rows, geometry.columns)
    return view


def _decode(ds: Dataset, geometry: _Geometry) -> np.ndarray:
    """Stored values as an integer array, decoded once with pydicom's handlers (PS3.5 8, A.4).

    Native little-endian data are viewed in place (:func:`_native_view`), not copied.
    """
    ts = geometry.transfer_syntax
    name = f"{ts.name} ({ts})" if ts.name != ts else str(ts)
    options = _check_codestream(ds, geometry, name)
    arr = _native_view(ds, geometry)
    if arr is None:
        try:
            decoder = get_decoder(ts)
            arr, _ = decoder.as_array(ds, index=0, **options)  # type: ignore[arg-type]
        except Exception as exc:  # noqa: BLE001 - third-party plugins raise anything
            raise PixelDataError(f"cannot decode transfer syntax {name}: {exc}") from exc
    if arr.shape != (geometry.rows, geometry.columns):
        raise PixelDataError(
            f"decoded transfer syntax {name} to shape {arr.shape}, "
            f"expected {geometry.rows}x{geometry.columns}"
        )
    if not np.issubdtype(arr.dtype, np.integer):
        raise PixelDataError(f"decoded transfer syntax {name} to non-integer {arr.dtype}")
    if not geometry.signed and geometry.bits_stored < arr.dtype.itemsize * 8:
        # Bits above High Bit are not pixel data (PS3.5 8.1.1); some writers leave junk.
        limit = (1 << geometry.bits_stored) - 1
        if int(arr.max()) > limit:
            arr = np.bitwise_and(arr, arr.dtype.type(limit))
    return arr


def _as_stored_value(value: Any, signed: bool) -> int:
    """A US-or-SS value (PS3.5 6.2 ambiguous VR) as the stored value it stands for."""
    number = int(value)
    if signed and number >= _SIGNED_16_LIMIT:
        number -= _UNSIGNED_16_LIMIT
    return number


def _padding_mask(ds: Dataset, stored: np.ndarray, geometry: _Geometry) -> np.ndarray | None:
    """True where Pixel Padding Value / Range Limit match stored values (PS3.3 C.7.5.1.1.2)."""
    value = ds.get("PixelPaddingValue")
    if value is None or value == "":
        return None
    try:
        padding_value = _as_stored_value(value, geometry.signed)
        limit = ds.get("PixelPaddingRangeLimit")
        if limit is None or limit == "":
            return np.equal(stored, padding_value)
        range_limit = _as_stored_value(limit, geometry.signed)
    except (TypeError, ValueError) as exc:
        raise PixelDataError("Pixel Padding Value or Range Limit is not an integer") from exc
    low, high = sorted((padding_value, range_limit))
    padding = np.greater_equal(stored, low)
    padding &= np.less_equal(stored, high)
    return padding


def _rescale_value(ds: Dataset, keyword: str, default: float) -> float:
    value = ds.get(keyword)
    if value is None or value == "":
        return default
    try:
        number = float(value)
    except (TypeError, ValueError) as exc:
        raise PixelDataError(f"{keyword} is not a number") from exc
    if not np.isfinite(number):
        raise PixelDataError(f"{keyword} is not finite")
    return number


def _apply_modality_lut(ds: Dataset, stored: np.ndarray, geometry: _Geometry) -> np.ndarray:
    """Modality LUT (PS3.3 C.11.1) to a fresh float32 array."""
    sequence = ds.get("ModalityLUTSequence")
    if sequence:
        table, first = _lut_table(ds, sequence[0], geometry)
        return _lookup(stored, table, first)
    slope = _rescale_value(ds, "RescaleSlope", 1.0)
    intercept = _rescale_value(ds, "RescaleIntercept", 0.0)
    if slope == 0.0:
        raise PixelDataError("Rescale Slope is 0: every pixel would be the same")
    values = stored.astype(np.float32)
    if slope != 1.0:
        values *= np.float32(slope)
    if intercept != 0.0:
        values += np.float32(intercept)
    return values


def _lut_table(ds: Dataset, item: Dataset, geometry: _Geometry) -> tuple[np.ndarray, int]:
    """LUT Data of a Modality or VOI LUT item and its first mapped value (PS3.3 C.11.1.1)."""
    descriptor = item.get("LUTDescriptor")
    if descriptor is None or len(descriptor) != 3 or "LUTData" not in item:
        raise PixelDataError("LUT item lacks a 3-valued LUT Descriptor or LUT Data")
    entries = int(descriptor[0]) or _UNSIGNED_16_LIMIT
    first = _as_stored_value(descriptor[1], geometry.signed)
    element = item["LUTData"]
    raw = element.value
    if isinstance(raw, bytes | bytearray):
        little = _is_little_endian(ds)
        if len(raw) >= 2 * entries or int(descriptor[2]) > 8:
            data = np.frombuffer(raw, dtype="<u2" if little else ">u2", count=len(raw) // 2)
        else:
            data = np.frombuffer(raw, dtype=np.uint8)
    elif isinstance(raw, Iterable):
        data = np.asarray(list(raw), dtype=np.int64)
    else:
        data = np.asarray([raw], dtype=np.int64)
    data = data[:entries]
    if data.size == 0:
        raise PixelDataError("LUT Data is empty")
    return data.astype(np.float32), first


def _is_little_endian(ds: Dataset) -> bool:
    file_meta = getattr(ds, "file_meta", None)
    ts = file_meta.get("TransferSyntaxUID") if file_meta is not None else None
    return UID(ts).is_little_endian if ts else True


def _lookup(values: np.ndarray, table: np.ndarray, first: int) -> np.ndarray:
    """table[values - first], clamped to the first and last entries (PS3.3 C.11.1.1)."""
    if np.issubdtype(values.dtype, np.integer):
        index = np.subtract(values, first, dtype=np.int64)
    else:
        index = np.rint(values - np.float32(first)).astype(np.int64)
    np.clip(index, 0, table.size - 1, out=index)
    return table[index]


def _voi_lut_range(table: np.ndarray, bits: int) -> float:
    """Largest VOI LUT output: 2^bits - 1 (PS3.3 C.11.2.1.1), widened if the data exceed it."""
    nominal = float((1 << bits) - 1)
    largest = float(table.max())
    if largest <= nominal:
        return nominal
    return float((1 << int(np.ceil(np.log2(largest + 1)))) - 1)


def _multi_float(value: Any) -> list[float]:
    if value is None or value == "":
        return []
    items = list(value) if isinstance(value, Iterable) and not isinstance(value, str) else [value]
    return [float(v) for v in items]


def _apply_voi(
    ds: Dataset,
    values: np.ndarray,
    voi_index: int,
    padding: np.ndarray | None,
    geometry: _Geometry,
) -> tuple[np.ndarray, str]:
    """VOI LUT Sequence, else window, else min-max (PS3.3 C.11.2, PS3.4 N.2.1.1)."""
    sequence = ds.get("VOILUTSequence")
    if sequence and voi_index < len(sequence):
        item = sequence[voi_index]
        table, first = _lut_table(ds, item, geometry)
        table /= np.float32(_voi_lut_range(table, int(item.LUTDescriptor[2])))
        np.clip(table, 0.0, 1.0, out=table)
        return _lookup(values, table, first), f"VOI LUT Sequence item {voi_index + 1}"
    try:
        centers = _multi_float(ds.get("WindowCenter"))
        widths = _multi_float(ds.get("WindowWidth"))
    except (TypeError, ValueError) as exc:
        raise PixelDataError("Window Center or Width is not a number") from exc
    if voi_index < min(len(centers), len(widths)):
        center, width = centers[voi_index], widths[voi_index]
        function = str(ds.get("VOILUTFunction") or DEFAULT_VOI_LUT_FUNCTION).strip().upper()
        note = ""
        if function not in VOI_LUT_FUNCTIONS:
            note = f" (unknown VOI LUT Function {function[:16]})"
            function = DEFAULT_VOI_LUT_FUNCTION
        # LINEAR needs w >= 1, the others w > 0 (PS3.3 C.11.2.1.2.1, C.11.2.1.3).
        valid_width = width >= 1.0 if function == "LINEAR" else width > 0.0
        if np.isfinite(center) and np.isfinite(width) and valid_width:
            _window_in_place(values, center, width, function)
            return values, f"window {center:g}/{width:g} {function}{note}"
        note = f" (invalid window width {width:g})"
        return _min_max_in_place(values, padding), f"min-max{note}"
    return _min_max_in_place(values, padding), "min-max"


def _window_in_place(values: np.ndarray, center: float, width: float, function: str) -> None:
    """Window Center/Width with the VOI LUT Function, output in [0, 1] (PS3.3 C.11.2.1.2)."""
    if function == "SIGMOID":
        # y = 1 / (1 + exp(-4 (x - c) / w))                    (C.11.2.1.3.1)
        values -= np.float32(center)
        values *= np.float32(-4.0 / width)
        np.clip(values, -_SIGMOID_EXPONENT_LIMIT, _SIGMOID_EXPONENT_LIMIT, out=values)
        np.exp(values, out=values)
        values += np.float32(1.0)
        np.reciprocal(values, out=values)
        return
    if function == "LINEAR_EXACT":
        # y = (x - c) / w + 0.5, clamped                        (C.11.2.1.3.2)
        values -= np.float32(center)
        values /= np.float32(width)
    elif width == 1.0:
        # LINEAR, w = 1: a step at c - 0.5                        (C.11.2.1.2.1)
        np.greater(values, np.float32(center - 0.5), out=values, casting="unsafe")
        return
    else:
        # y = ((x - (c - 0.5)) / (w - 1) + 0.5), clamped          (C.11.2.1.2.1)
        values -= np.float32(center - 0.5)
        values /= np.float32(width - 1.0)
    values += np.float32(0.5)
    np.clip(values, 0.0, 1.0, out=values)


def _min_max_in_place(values: np.ndarray, padding: np.ndarray | None) -> np.ndarray:
    """Stretch the non-padding range to [0, 1]; a constant image becomes black."""
    valid = None if padding is None else ~padding
    if valid is not None and not valid.any():
        values.fill(0.0)
        return values
    if valid is None:
        low, high = float(values.min()), float(values.max())
    else:
        low = float(np.min(values, where=valid, initial=np.inf))
        high = float(np.max(values, where=valid, initial=-np.inf))
    if not high > low:
        values.fill(0.0)
        return values
    values -= np.float32(low)
    values *= np.float32(1.0 / (high - low))
    np.clip(values, 0.0, 1.0, out=values)
    return values
