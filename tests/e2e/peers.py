"""Third-party peers for end-to-end tests, started as processes on loopback.

The node itself is started with :func:`service.testkit.launch.start_node` (the
launcher the bench uses too); ``NodeProcess`` and ``start_node`` are re-exported
here for older imports.

Orthanc 1.10 binds to all interfaces and cannot be told otherwise, so it runs
with its own config and storage folder, remote access off, and the tests only
ever address 127.0.0.1.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from service.testkit.launch import NodeProcess, start_node  # noqa: F401  (re-exported)
from service.testkit.processes import free_port, stop_process

ROUTE_LUA = """
-- Forward mammograms (not the node's own results) to the mammoseg node.
function OnStoredInstance(instanceId, tags, metadata, origin)
  if origin['RemoteAet'] == '{node_aet}' then
    return
  end
  if tags['Modality'] == 'MG' then
    SendToModality(instanceId, 'mammoseg')
  end
end
"""


def need(command: str, package: str) -> str:
    path = shutil.which(command)
    if path is None:
        pytest.skip(
            f"{command} is not installed (Debian package {package}; scripts/test installs it)"
        )
    return path


def wait_until(predicate, timeout_s: float, what: str, interval_s: float = 0.2) -> Any:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


#: Orthanc's DICOMweb plugin (Debian package orthanc-dicomweb).
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


def need_dicomweb_plugin() -> Path:
    if not DICOMWEB_PLUGIN.is_file():
        pytest.skip("Orthanc's DICOMweb plugin is not installed (Debian package orthanc-dicomweb)")
    return DICOMWEB_PLUGIN


@dataclass
class Orthanc:
    http_port: int
    dicom_port: int
    aet: str
    proc: subprocess.Popen  # type: ignore[type-arg]
    #: ``(user, password)`` when Orthanc's HTTP authentication is on.
    user: tuple[str, str] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def _open(self, req: urllib.request.Request | str, timeout: float) -> Any:
        if isinstance(req, str):
            req = urllib.request.Request(req)  # noqa: S310
        if self.user is not None:
            token = base64.b64encode(":".join(self.user).encode()).decode()
            req.add_header("Authorization", f"Basic {token}")
        return urllib.request.urlopen(req, timeout=timeout)  # noqa: S310

    def get(self, path: str) -> Any:
        with self._open(self.url + path, 10) as resp:
            return json.loads(resp.read())

    def post(self, path: str, body: Any) -> Any:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method="POST")  # noqa: S310
        with self._open(req, 60) as resp:
            return json.loads(resp.read())

    def download(self, instance_id: str, target: Path) -> Path:
        with self._open(f"{self.url}/instances/{instance_id}/file", 30) as resp:
            target.write_bytes(resp.read())
        return target

    def study_instances(self, study_uid: str) -> list[dict[str, Any]]:
        found = self.post(
            "/tools/find",
            {"Level": "Instance", "Expand": True, "Query": {"StudyInstanceUID": study_uid}},
        )
        return list(found)


@contextmanager
def orthanc(
    tmp: Path,
    *,
    node_aet: str,
    node_port: int,
    extra_modalities: dict[str, list[Any]] | None = None,
    route: bool = True,
    dicomweb_servers: dict[str, Any] | None = None,
    user: tuple[str, str] | None = None,
) -> Iterator[Orthanc]:
    """Orthanc on loopback; ``route``: its Lua rule forwards MG images to the node.

    ``dicomweb_servers`` loads the DICOMweb plugin (``/dicom-web/``) with these
    servers to send to (``DicomWeb.Servers``); ``user`` turns HTTP basic auth on.
    """
    binary = need("Orthanc", "orthanc")
    plugins = [str(need_dicomweb_plugin())] if dicomweb_servers is not None else []
    tmp.mkdir(parents=True, exist_ok=True)
    http_port, dicom_port = free_port(), free_port()
    lua = tmp / "route.lua"
    lua.write_text(ROUTE_LUA.replace("{node_aet}", node_aet))
    config = {
        "Name": "mammoseg-test-pacs",
        "StorageDirectory": str(tmp / "storage"),
        "IndexDirectory": str(tmp / "storage"),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": "ORTHANC",
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomCheckCalledAet": True,
        "DicomModalities": {
            "mammoseg": [node_aet, "127.0.0.1", node_port],
            "storescu": ["STORESCU", "127.0.0.1", 104],
            **(extra_modalities or {}),
        },
        "LuaScripts": [str(lua)] if route else [],
        "Plugins": plugins,
        "StableAge": 1,
        "HttpTimeout": 30,
    }
    if dicomweb_servers is not None:
        config["DicomWeb"] = {"Enable": True, "Root": "/dicom-web/", "Servers": dicomweb_servers}
    if user is not None:
        config["AuthenticationEnabled"] = True
        config["RegisteredUsers"] = {user[0]: user[1]}
    config_path = tmp / "orthanc.json"
    config_path.write_text(json.dumps(config, indent=1))
    log = (tmp / "orthanc.log").open("wb")
    proc = subprocess.Popen(
        [binary, str(config_path)], stdout=log, stderr=subprocess.STDOUT, cwd=tmp
    )
    pacs = Orthanc(http_port, dicom_port, "ORTHANC", proc, user)

    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"Orthanc exited: {(tmp / 'orthanc.log').read_text()[-2000:]}")
        try:
            pacs.get("/system")
        except (urllib.error.URLError, ConnectionError, OSError):
            return False
        return True

    try:
        wait_until(up, 30, "Orthanc to answer HTTP")
        yield pacs
    finally:
        stop_process(proc)
        log.close()


def storescu(
    port: int,
    files: Sequence[Path],
    *,
    called: str,
    calling: str = "STORESCU",
    extra: Sequence[str] = (),
) -> subprocess.CompletedProcess:  # type: ignore[type-arg]
    binary = need("storescu", "dcmtk")
    # Compressed files go as they are only with -xv/-xw/-xr/-xt/-xs (pass them in extra).
    return subprocess.run(
        [binary, "-aet", calling, "-aec", called, *extra, "127.0.0.1", str(port), *map(str, files)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@contextmanager
def storescp(
    tmp: Path,
    *,
    aet: str = "STORESCP",
    port: int | None = None,
    unique_names: bool = True,
    sleep_after_s: int = 0,
    extra: Sequence[str] = (),
) -> Iterator[tuple[int, Path]]:
    """DCMTK storescp as a destination; yields (port, folder it writes to).

    With ``unique_names`` every received object gets its own file, so an
    object delivered twice shows up twice. ``extra``: more options (``+tls ...``).
    storescp 3.6.7 listens on every interface (it has no bind option); the tests
    address it at 127.0.0.1 only.
    """
    binary = need("storescp", "dcmtk")
    port = port or free_port()
    out = tmp / "storescp"
    out.mkdir(parents=True, exist_ok=True)
    log = (tmp / "storescp.log").open("wb")
    proc = subprocess.Popen(
        [
            binary,
            "-aet",
            aet,
            "-od",
            str(out),
            "+xa",
            "+uf" if unique_names else "-uf",
            *(["--sleep-after", str(sleep_after_s)] if sleep_after_s else []),
            *extra,
            str(port),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        time.sleep(0.5)
        if proc.poll() is not None:
            raise AssertionError((tmp / "storescp.log").read_text())
        yield port, out
    finally:
        stop_process(proc)
        log.close()
