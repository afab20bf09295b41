"""The upload API under the same 1,000 malformed datasets the SCP gets (tests/fuzz.py)."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from tests.fuzz import fuzz_cases
from tests.http_node import VIEWER, app_state, settings_for

pytestmark = pytest.mark.slow
AUTH = {"Authorization": f"Bearer {VIEWER}"}


def test_a_thousand_malformed_uploads_get_clear_answers(tmp_path: Path) -> None:
    client = TestClient(
        create_app(app_state(settings_for(tmp_path, max_upload_mb=4))),
        raise_server_exceptions=False,
    )
    cases = fuzz_cases(tmp_path / "fuzz", 1000, seed=99)
    rng = random.Random(7)
    statuses: Counter[int] = Counter()
    for case in cases:
        data = case.path.read_bytes()
        kind = rng.choice(["application/dicom", "image/png", "application/octet-stream"])
        response = client.post(
            "/api/v1/segment", files={"file": ("x.dcm", data, kind)}, headers=AUTH
        )
        statuses[response.status_code] += 1
        assert response.status_code < 500, (case.name, response.text[:300])
        if response.status_code >= 400:
            assert response.headers["content-type"] == "application/problem+json"
            assert response.json()["detail"]
    # Plain garbage, PNG headers on DICOM and truncated PNGs too.
    for size in (0, 1, 7, 100, 5000):
        junk = rng.randbytes(size)
        for kind in ("image/png", "image/jpeg", "image/tiff"):
            response = client.post(
                "/api/v1/segment", files={"file": ("j", junk, kind)}, headers=AUTH
            )
            statuses[response.status_code] += 1
            assert 400 <= response.status_code < 500, response.text[:300]
    assert client.get("/healthz").status_code == 200
    print(f"\nupload fuzz: HTTP statuses {dict(sorted(statuses.items()))}")
