"""The wheel builds, installs into a fresh venv with constraints.txt, and serves the shipped model.

What an administrator does without the repository's scripts: build the wheel,
``pip install -c constraints.txt mammoseg-*.whl`` into a new virtual
environment, run ``check-config`` and ``serve``. The test checks that the
wheel carries the shipped model and the templates, that the runtime install
has no TensorFlow, and that the node answers ``/readyz`` and C-ECHO. It needs
the package registry (PyPI) or a pip cache, like ``scripts/test`` itself.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
import zipfile
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from tests.conftest import free_port
from tests.e2e.peers import stop_process, wait_until

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def run(*argv: str | Path, timeout_s: float = 900) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [str(a) for a in argv], capture_output=True, text=True, timeout=timeout_s, check=False
    )
    assert done.returncode == 0, (argv, done.stdout[-2000:], done.stderr[-3000:])
    return done


def ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def test_wheel_installs_with_constraints_and_serves_the_shipped_model(tmp_path: Path) -> None:
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", tmp_path / "dist", ROOT)
    (wheel,) = (tmp_path / "dist").glob("mammoseg-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "service/models/mammoseg-mnv2-resunet.onnx" in names
    assert any(n.startswith("service/templates/") for n in names)
    assert not any(n.startswith("model_export/data/") for n in names)
    print(f"wheel {wheel.name}: {wheel.stat().st_size / 1e6:.1f} MB, {len(names)} files")

    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv)
    python = venv / "bin" / "python"
    run(python, "-m", "pip", "install", "-q", "-c", ROOT / "constraints.txt", wheel)
    freeze = run(python, "-m", "pip", "freeze").stdout.lower()
    assert "tensorflow" not in freeze and "keras" not in freeze
    assert "psycopg" not in freeze  # an extra, not a dependency

    dicom_port, http_port = free_port(), free_port()
    args = [
        "--data-dir",
        str(tmp_path / "data"),
        "--dicom-port",
        str(dicom_port),
        "--http-port",
        str(http_port),
    ]
    mammoseg = venv / "bin" / "mammoseg"
    checked = run(mammoseg, "check-config", *args)
    assert "configuration OK" in checked.stdout + checked.stderr
    proc = subprocess.Popen(
        [str(mammoseg), "serve", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,  # not the repository: the installed package must stand alone
    )
    try:
        wait_until(lambda: ready(f"http://127.0.0.1:{http_port}/readyz"), 120, "/readyz")
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/api/v1/model") as response:
            model = json.loads(response.read())
        installed = venv / "lib" / "python3.11" / "site-packages" / "service" / "models"
        assert str(model["file_name"]).endswith("mammoseg-mnv2-resunet.onnx")
        assert model["version"] == model["contract"]["model_version"]
        assert (installed / "mammoseg-mnv2-resunet.onnx").is_file()
        ae = AE(ae_title="ECHOSCU")
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", dicom_port, ae_title="MAMMOSEG")
        assert assoc.is_established
        assert int(assoc.send_c_echo().Status) == 0
        assoc.release()
        print(f"installed node serves {model['name']} {model['version']} and answers C-ECHO")
    finally:
        code = stop_process(proc)
        output = proc.stdout.read() if proc.stdout else ""
    assert code == 0, output[-3000:]
