"""POST /api/v1/segment: formats, negotiation, limits and clear errors (TestClient)."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.app import create_app
from tests.http_node import VIEWER, app_state, mammogram, mammogram_png, settings_for

AUTH = {"Authorization": f"Bearer {VIEWER}"}
URL = "/api/v1/segment"


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> TestClient:
    tmp = tmp_path_factory.mktemp("segment")
    return TestClient(create_app(app_state(settings_for(tmp, max_upload_mb=1))))


@pytest.fixture(scope="module")
def png() -> bytes:
    return mammogram_png()


def picture(png: bytes, fmt: str, **save: Any) -> bytes:
    out = io.BytesIO()
    Image.open(io.BytesIO(png)).save(out, format=fmt, **save)
    return out.getvalue()


def decoded(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def problem(response: Any, status: int) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    return str(response.json()["detail"])


def test_png_upload_gives_lesions_mask_and_overlay(client: TestClient, png: bytes) -> None:
    response = client.post(URL, files={"file": ("m.png", png, "image/png")}, headers=AUTH)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["image"] == {
        "format": "PNG",
        "width": 416,
        "height": 512,
        "pixel_spacing_mm": None,
        "spacing_source": None,
    }
    assert len(body["lesions"]) == 1
    lesion = body["lesions"][0]
    # The synthetic mass is centred at row 256, column 170.
    assert lesion["bbox"]["top"] < 256 < lesion["bbox"]["bottom"]
    assert lesion["bbox"]["left"] < 170 < lesion["bbox"]["right"]
    assert lesion["area_mm2"] is None and lesion["area_px"] == body["mask_area_px"] > 100
    assert 0.5 <= lesion["mean_probability"] <= lesion["max_probability"] <= 1
    mask = np.asarray(decoded(body["mask_png"]))
    assert mask.shape == (512, 416) and int((mask == 255).sum()) == body["mask_area_px"]
    overlay = decoded(body["overlay_png"]).convert("RGB")
    red = np.asarray(overlay)[256, 170]
    assert red[0] > red[1] + 50  # red at alpha 0.4 over the mass
    assert body["warning"].startswith("AI segmentation")


def test_the_answer_follows_format_then_accept(client: TestClient, png: bytes) -> None:
    files = {"file": ("m.png", png, "image/png")}
    as_png = client.post(URL, files=files, headers={**AUTH, "Accept": "image/png"})
    assert as_png.headers["content-type"] == "image/png"
    assert as_png.headers["x-lesion-count"] == "1"
    assert Image.open(io.BytesIO(as_png.content)).mode == "RGB"
    by_param = client.post(URL, params={"format": "png"}, files=files, headers=AUTH)
    assert by_param.headers["content-type"] == "image/png"
    json_wins = client.post(
        URL, params={"format": "json"}, files=files, headers={**AUTH, "Accept": "image/png"}
    )
    assert json_wins.headers["content-type"] == "application/json"
    weighted = client.post(
        URL, files=files, headers={**AUTH, "Accept": "image/png;q=0.5, application/json"}
    )
    assert weighted.headers["content-type"] == "application/json"
    small = client.post(URL, params={"format": "png", "max_size": 128}, files=files, headers=AUTH)
    assert max(Image.open(io.BytesIO(small.content)).size) == 128


def test_raw_jpeg_and_16_bit_tiff(client: TestClient, png: bytes) -> None:
    jpeg = picture(png, "JPEG", quality=92)
    response = client.post(URL, content=jpeg, headers={**AUTH, "Content-Type": "image/jpeg"})
    assert response.status_code == 200 and response.json()["image"]["format"] == "JPEG"
    assert len(response.json()["lesions"]) == 1
    gray = np.asarray(Image.open(io.BytesIO(png)), dtype=np.uint16) * 16  # 12-bit range
    out = io.BytesIO()
    Image.fromarray(gray).save(out, format="TIFF")
    tiff = client.post(URL, files={"file": ("m.tif", out.getvalue(), "image/tiff")}, headers=AUTH)
    assert tiff.status_code == 200, tiff.text
    assert len(tiff.json()["lesions"]) == 1


def test_dicom_upload_measures_in_mm2(client: TestClient) -> None:
    ds = mammogram(seed=3)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    response = client.post(
        URL, files={"file": ("m.dcm", out.getvalue(), "application/dicom")}, headers=AUTH
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["image"]["pixel_spacing_mm"] == [0.1, 0.1]
    assert body["image"]["spacing_source"] == "PixelSpacing"
    lesion = body["lesions"][0]
    assert lesion["area_mm2"] == pytest.approx(lesion["area_px"] * 0.01)
    assert str(ds.PatientName) not in response.text and ds.PatientID not in response.text


def test_pixel_spacing_parameter_for_pictures(client: TestClient, png: bytes) -> None:
    response = client.post(
        URL,
        params={"pixel_spacing_mm": 0.2},
        files={"file": ("m.png", png, "application/octet-stream")},
        headers=AUTH,
    )
    lesion = response.json()["lesions"][0]
    assert lesion["area_mm2"] == pytest.approx(lesion["area_px"] * 0.04)
    assert response.json()["image"]["spacing_source"] == "parameter"


def test_refusals_say_why(client: TestClient, png: bytes) -> None:
    jpeg = picture(png, "JPEG")
    assert "declared image/png but the file is JPEG" in problem(
        client.post(URL, files={"file": ("m.png", jpeg, "image/png")}, headers=AUTH), 415
    )
    gif = picture(png, "GIF")
    assert "image/gif is not accepted" in problem(
        client.post(URL, content=gif, headers={**AUTH, "Content-Type": "image/gif"}), 415
    )
    assert "iPhone" in problem(
        client.post(URL, content=b"....ftypheic", headers={**AUTH, "Content-Type": "image/heic"}),
        415,
    )
    assert "not a PNG, JPEG, TIFF or DICOM" in problem(
        client.post(
            URL, files={"file": ("x.bin", b"hello", "application/octet-stream")}, headers=AUTH
        ),
        415,
    )
    assert "cannot be decoded" in problem(
        client.post(URL, files={"file": ("m.png", png[:200], "image/png")}, headers=AUTH), 422
    )
    big = np.random.default_rng(0).integers(0, 255, (1200, 1200), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(big).save(out, format="PNG", compress_level=0)
    assert "larger than 1 MB" in problem(
        client.post(URL, files={"file": ("big.png", out.getvalue(), "image/png")}, headers=AUTH),
        413,
    )

    def chunks() -> Iterator[bytes]:
        yield png

    assert "Content-Length" in problem(
        client.post(URL, content=chunks(), headers={**AUTH, "Content-Type": "image/png"}), 411
    )
    problem(client.post(URL, files={"file": ("m.png", png, "image/png")}), 401)


def test_a_form_without_a_file_is_refused(client: TestClient) -> None:
    response = client.post(
        URL,
        content=b'--b\r\nContent-Disposition: form-data; name="x"\r\n\r\n1\r\n--b--\r\n',
        headers={**AUTH, "Content-Type": "multipart/form-data; boundary=b"},
    )
    assert "no file" in problem(response, 422)


def test_upload_page_shows_the_overlay_and_areas(tmp_path: Path, png: bytes) -> None:
    page = TestClient(
        create_app(app_state(settings_for(tmp_path, read_access="loopback"))),
        client=("127.0.0.1", 50000),
    )
    form = page.get("/upload").text
    assert 'capture="environment"' in form and 'type="file"' in form
    result = page.post("/upload", files={"file": ("m.png", png, "image/png")})
    assert result.status_code == 200
    assert 'src="data:image/png;base64,' in result.text and "1 region found" in result.text
    assert " px</td>" in result.text
    error = page.post("/upload", files={"file": ("m.gif", picture(png, "GIF"), "image/gif")})
    assert error.status_code == 415 and "not accepted" in error.text
