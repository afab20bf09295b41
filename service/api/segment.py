"""``POST /api/v1/segment``: one picture in, the overlay PNG or JSON with measurements out.

The reference work's Flask ``/predict``, done properly: the size is checked
from Content-Length before any byte is read (411 without it, 413 beyond
``max_upload_mb``), the media type must be PNG, JPEG, TIFF or DICOM and agree
with the file (415), an image that cannot be decoded says why (422). The
answer is chosen by ``format`` or else the Accept header; JSON by default.
Nothing is stored.
"""

from __future__ import annotations

import asyncio
import base64
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from starlette.datastructures import UploadFile

from service.api.deps import NodeDep, NodeState, ReaderDep
from service.api.problems import problem_responses
from service.api.schemas import ImageInfo, LesionOut, SegmentOut
from service.segmentation import LesionRules, lesion_view
from service.upload import (
    DEFAULT_OVERLAY_SIZE,
    MEDIA_TYPES,
    WARNING,
    UploadError,
    UploadResult,
    mask_png,
    overlay_png,
    segment_upload,
)

router = APIRouter(tags=["segment"])

#: Room for the multipart framing around the file itself.
MULTIPART_OVERHEAD = 64 * 1024
#: Uploads segmented at once; more wait (the workers need the CPU too).
CONCURRENT_UPLOADS = 2

_BINARY = {"schema": {"type": "string", "format": "binary"}}
_REQUEST_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {"file": {"type": "string", "format": "binary"}},
                "required": ["file"],
            }
        },
        **{media_type: _BINARY for media_type in MEDIA_TYPES},
    },
}


def upload_limit(node: NodeState) -> int:
    return node.settings.max_upload_mb << 20


async def read_upload(request: Request, limit: int) -> tuple[bytes, str | None]:
    """The uploaded file and its declared type, from a multipart form or a raw body."""
    length = request.headers.get("content-length")
    if length is None:
        raise HTTPException(411, "send the upload with a Content-Length")
    try:
        size = int(length)
    except ValueError as exc:
        raise HTTPException(400, "Content-Length is not a number") from exc
    content_type = request.headers.get("content-type", "")
    multipart = content_type.lower().startswith("multipart/form-data")
    if size > limit + (MULTIPART_OVERHEAD if multipart else 0):
        raise HTTPException(413, f"the upload is larger than {limit >> 20} MB (max_upload_mb)")
    if not multipart:
        return await request.body(), content_type or None
    # Two file fields at most: the upload page has a camera and a gallery picker.
    form = await request.form(max_files=2, max_fields=8)
    try:
        uploads = [
            value
            for _, value in form.multi_items()
            if isinstance(value, UploadFile) and (value.size or value.filename)
        ]
        if not uploads:
            raise HTTPException(422, "the form has no file (field 'file')")
        data = await uploads[0].read()
        declared = uploads[0].content_type
    finally:
        await form.close()
    if len(data) > limit:
        raise HTTPException(413, f"the upload is larger than {limit >> 20} MB (max_upload_mb)")
    return data, declared


async def run_segmentation(
    request: Request,
    node: NodeState,
    data: bytes,
    declared: str | None,
    pixel_spacing_mm: float | None,
) -> UploadResult:
    """Segment off the event loop, at most CONCURRENT_UPLOADS at a time."""
    segmenter = node.segmenter
    if segmenter is None:
        raise HTTPException(503, "no model is loaded")
    slots: asyncio.Semaphore = request.app.state.upload_slots
    async with slots:
        try:
            return await run_in_threadpool(
                segment_upload,
                data,
                declared,
                segmenter,
                LesionRules.of(node.settings, segmenter.contract),
                pixel_spacing_mm=pixel_spacing_mm,
            )
        except UploadError as exc:
            raise HTTPException(exc.status, str(exc)) from exc


def result_out(node: NodeState, result: UploadResult, *, max_size: int) -> SegmentOut:
    image = result.image
    rows, columns = image.pixels.shape
    mask_area = int(result.mask.sum())
    spacing = image.spacing_mm
    segmenter = node.segmenter
    return SegmentOut(
        model=segmenter.contract.model_name if segmenter else "",
        model_version=segmenter.contract.model_version if segmenter else "",
        threshold=result.threshold,
        image=ImageInfo(
            format=image.format,
            width=columns,
            height=rows,
            pixel_spacing_mm=list(spacing) if spacing else None,
            spacing_source=image.spacing_source,
        ),
        lesions=[LesionOut.model_validate(lesion_view(x)) for x in result.lesions],
        mask_area_px=mask_area,
        mask_area_mm2=mask_area * spacing[0] * spacing[1] if spacing else None,
        max_probability=result.max_probability,
        seconds={"decode": result.seconds_decode, "inference": result.seconds_inference},
        mask_png=base64.b64encode(mask_png(result.mask)).decode("ascii"),
        overlay_png=base64.b64encode(overlay_png(result, max_size=max_size)).decode("ascii"),
        warning=WARNING,
    )


def wants_png(accept: str | None) -> bool:
    """Whether the Accept header prefers image/png to application/json (q-values honoured)."""
    best: dict[str, float] = {}
    for part in (accept or "").split(","):
        media, *params = (p.strip() for p in part.split(";"))
        q = 1.0
        for param in params:
            if param.startswith("q="):
                try:
                    q = float(param[2:])
                except ValueError:
                    q = 0.0
        for candidate in ("image/png", "application/json"):
            if media.lower() in (candidate, candidate.split("/")[0] + "/*"):
                best[candidate] = max(best.get(candidate, 0.0), q)
    return best.get("image/png", 0.0) > best.get("application/json", 0.0)


@router.post(
    "/api/v1/segment",
    response_model=SegmentOut,
    openapi_extra={"requestBody": _REQUEST_BODY},
    responses={
        200: {"content": {"image/png": {}}, "description": "JSON, or the overlay PNG"},
        **problem_responses(
            {
                400: "Content-Length is not a number",
                401: "Missing or wrong token",
                411: "No Content-Length",
                413: "Larger than max_upload_mb or too many pixels",
                415: "Not PNG, JPEG, TIFF or DICOM, or not what it claims",
                422: "The image cannot be decoded, or a query parameter is invalid",
                503: "No model is loaded",
            }
        ),
    },
)
async def segment(
    request: Request,
    node: NodeDep,
    _: ReaderDep,
    format: Annotated[
        Literal["json", "png"] | None,
        Query(description="Answer with JSON or the overlay PNG; else the Accept header decides"),
    ] = None,
    max_size: Annotated[
        int, Query(ge=64, le=4096, description="Longer side of the overlay")
    ] = DEFAULT_OVERLAY_SIZE,
    pixel_spacing_mm: Annotated[
        float | None, Query(gt=0, lt=100, description="Square pixel size, for areas in mm²")
    ] = None,
) -> Response | SegmentOut:
    """Segment one PNG, JPEG, TIFF or DICOM image (multipart field ``file``, or the raw body).

    Not for diagnostic use. The upload is not stored.
    """
    data, declared = await read_upload(request, upload_limit(node))
    result = await run_segmentation(request, node, data, declared, pixel_spacing_mm)
    as_png = format == "png" if format else wants_png(request.headers.get("accept"))
    if as_png:
        png = await run_in_threadpool(overlay_png, result, max_size=max_size)
        return Response(
            png,
            media_type="image/png",
            headers={
                "X-Lesion-Count": str(len(result.lesions)),
                "X-Mask-Area-Px": str(int(result.mask.sum())),
                "Cache-Control": "no-store",
            },
        )
    return await run_in_threadpool(result_out, node, result, max_size=max_size)
