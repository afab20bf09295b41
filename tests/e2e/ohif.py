"""The OHIF Viewer (npm package ``@ohif/app``, its prebuilt ``dist/``) served on loopback.

:func:`ohif_dist` fetches the pinned version once with ``npm pack`` (the tarball alone, no
dependency tree), checks it against the pinned sha512 and unpacks it under
``.cache/ohif/<version>/`` in the repository (git-ignored), so a fresh CI machine with npm
registry access gets it by itself. :func:`viewer_server` serves ``dist/`` on 127.0.0.1 with an
``app-config.js`` of ours and forwards ``/dicom-web/`` to Orthanc's DICOMweb plugin: one
origin, so the browser needs no CORS (Orthanc 1.10 sends none).
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
import tarfile
import tempfile
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OHIF_PACKAGE = "@ohif/app"
#: Pinned: the newest stable 3.x on npm when this test was written (latest tag).
OHIF_VERSION = "3.13.2"
#: ``npm view @ohif/app@3.13.2 dist.integrity``
OHIF_INTEGRITY = "sha512-WZdxmpmG7rqFgW9ZJLcbgr3XCtLi1KDNPoMaeY5PPe6j4G4fjEjjkycZM6C6Zk2F87BKxFfpq+jd5xXZB9E8EA=="  # noqa: E501
CACHE = ROOT / ".cache" / "ohif"
DICOMWEB_PREFIX = "/dicom-web"


def _integrity_of(path: Path) -> str:
    digest = hashlib.sha512(path.read_bytes()).digest()
    return "sha512-" + base64.b64encode(digest).decode()


def ohif_dist(version: str = OHIF_VERSION, integrity: str = OHIF_INTEGRITY) -> Path:
    """The viewer's ``dist/`` folder, fetched with npm on first use; skips if npm is missing."""
    target = CACHE / version
    dist = target / "package" / "dist"
    if (dist / "index.html").is_file():
        return dist
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip(f"npm is not installed: it fetches {OHIF_PACKAGE}@{version} (Node.js 20+)")
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as work:
        packed = subprocess.run(
            [npm, "pack", f"{OHIF_PACKAGE}@{version}", "--pack-destination", work, "--json"],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
            cwd=work,
        )
        if packed.returncode != 0:
            tail = packed.stderr[-2000:]
            raise AssertionError(f"npm pack {OHIF_PACKAGE}@{version} failed: {tail}")
        tarball = Path(work) / json.loads(packed.stdout)[0]["filename"]
        if _integrity_of(tarball) != integrity:
            raise AssertionError(f"{tarball.name} does not match the pinned integrity {integrity}")
        unpacked = Path(work) / "unpacked"
        with tarfile.open(tarball) as tar:
            tar.extractall(unpacked, filter="data")
        if not (unpacked / "package" / "dist" / "index.html").is_file():
            raise AssertionError(f"{OHIF_PACKAGE}@{version} has no dist/index.html")
        try:
            unpacked.rename(target)
        except OSError:  # another run unpacked it first
            if not (dist / "index.html").is_file():
                raise
    return dist


def app_config(origin: str) -> str:
    """``window.config`` for one DICOMweb data source: Orthanc's plugin behind our proxy.

    Options as OHIF's own ``config/local_orthanc.js`` sets them for Orthanc.
    """
    root = origin + DICOMWEB_PREFIX
    source = {
        "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
        "sourceName": "orthanc",
        "configuration": {
            "friendlyName": "Orthanc (test PACS)",
            "name": "orthanc",
            "wadoUriRoot": root,
            "qidoRoot": root,
            "wadoRoot": root,
            "qidoSupportsIncludeField": False,
            "imageRendering": "wadors",
            "thumbnailRendering": "wadors",
            "enableStudyLazyLoad": True,
            "supportsFuzzyMatching": False,
            "supportsWildcard": True,
            "staticWado": False,
            "omitQuotationForMultipartRequest": True,
            "bulkDataURI": {"enabled": True},
        },
    }
    config = {
        "routerBasename": "/",
        "extensions": [],
        "modes": [],
        "customizationService": {},
        "showStudyList": True,
        "maxNumberOfWebWorkers": 2,
        "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": False,
        "showLoadingIndicator": True,
        "strictZSpacingForVolumeViewport": True,
        "investigationalUseDialog": {"option": "never"},
        # Load a SEG or SR into the viewport without asking first (a test has no one to click)
        "disableConfirmationPrompts": True,
        # ... and hydrate an SR into measurements without asking (only "standard" asks)
        "measurementTrackingMode": "simplified",
        "defaultDataSourceName": "orthanc",
        "dataSources": [source],
    }
    return f"window.config = {json.dumps(config, indent=1)};\n"


@dataclass
class ViewerServer:
    url: str
    #: Paths the browser asked the proxy for that Orthanc answered with an error.
    proxy_errors: list[str]


@contextmanager
def viewer_server(dist: Path, dicomweb_url: str) -> Iterator[ViewerServer]:
    """Serve ``dist`` on 127.0.0.1 (SPA: unknown paths get index.html) and proxy
    ``/dicom-web/`` to ``dicomweb_url`` (Orthanc's plugin root, no trailing slash)."""
    errors: list[str] = []
    state: dict[str, str] = {}

    class Handler(SimpleHTTPRequestHandler):
        def __init__(self, *args, **kw):  # type: ignore[no-untyped-def]
            super().__init__(*args, directory=str(dist), **kw)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            return  # the test reports what matters; no access log on stderr

        def do_GET(self) -> None:  # noqa: N802
            path = self.path.split("?", 1)[0]
            if path.startswith(DICOMWEB_PREFIX + "/"):
                self._proxy()
            elif path == "/app-config.js":
                self._send(200, "application/javascript", state["config"].encode())
            elif path != "/" and (dist / path.lstrip("/")).is_file():
                super().do_GET()
            else:
                self._send(200, "text/html", (dist / "index.html").read_bytes())

        def _send(self, status: int, content_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def _proxy(self) -> None:
            upstream = dicomweb_url + self.path[len(DICOMWEB_PREFIX) :]
            request = urllib.request.Request(upstream)  # noqa: S310
            for header in ("Accept",):
                if self.headers.get(header):
                    request.add_header(header, self.headers[header])
            try:
                with urllib.request.urlopen(request, timeout=60) as resp:  # noqa: S310
                    body, status = resp.read(), resp.status
                    content_type = resp.headers.get("Content-Type", "application/octet-stream")
            except urllib.error.HTTPError as exc:
                body, status = exc.read(), exc.code
                content_type = exc.headers.get("Content-Type", "text/plain")
                errors.append(f"{status} {self.path}")
            self._send(status, content_type, body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    url = f"http://127.0.0.1:{server.server_address[1]}"
    state["config"] = app_config(url)
    thread = threading.Thread(target=server.serve_forever, name="ohif-static", daemon=True)
    thread.start()
    try:
        yield ViewerServer(url, errors)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
