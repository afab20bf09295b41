"""deploy/Containerfile builds here and the image it makes serves the shipped model.

``scripts/container-image`` builds it the way an administrator without a registry
would: a Debian bookworm base made by debootstrap, then buildah with chroot
isolation. The image is started the same way (``buildah run``, host network, the
image's numeric user), bound to 127.0.0.1 only, and must answer ``/readyz``, C-ECHO
and a C-STORE whose job the model then processes inside the container.

podman is not used to run it: on these machines its runtime (crun) fails with
"setrlimit RLIMIT_NOFILE: Operation not permitted" before the entrypoint starts,
whatever ``--ulimit`` says; buildah's chroot isolation needs no OCI runtime.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pynetdicom import AE
from pynetdicom.sop_class import DigitalMammographyXRayImageStorageForPresentation, Verification

from service.testkit.synthetic import synthetic_file
from tests.conftest import free_port
from tests.e2e.peers import stop_process, wait_until

ROOT = Path(__file__).resolve().parents[2]
TAG = "localhost/mammoseg:e2e"
pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def node_pid(http_port: int) -> int | None:
    """The container's `mammoseg serve`, found by its environment (chroot isolation shares PIDs)."""
    wanted = f"MAMMOSEG_HTTP_PORT={http_port}".encode()
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            if b"serve" in argv and wanted in (proc / "environ").read_bytes().split(b"\0"):
                return int(proc.name)
        except (OSError, ValueError):
            continue
    return None


def needs_builder() -> None:
    if os.geteuid() != 0:
        pytest.skip("buildah's chroot isolation needs root")
    missing = [tool for tool in ("buildah", "debootstrap") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)} (Debian packages)")


def buildah(*argv: str, timeout_s: float = 120) -> str:
    done = subprocess.run(
        ["buildah", *argv], capture_output=True, text=True, timeout=timeout_s, check=False
    )
    assert done.returncode == 0, (argv, done.stderr[-3000:])
    return done.stdout


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def ready(url: str) -> bool:
    try:
        return bool(get_json(url)["ready"])
    except (OSError, ValueError, KeyError):
        return False


@pytest.fixture(scope="module")
def image() -> dict[str, Any]:
    needs_builder()
    done = subprocess.run(
        [str(ROOT / "scripts" / "container-image"), TAG],
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    image_id = done.stdout.strip().splitlines()[-1]
    inspected = json.loads(buildah("inspect", "--type", "image", TAG))["Docker"]
    size = buildah("images", "--noheading", "--format", "{{.Size}}", TAG).strip()
    print(f"image {TAG} {image_id[:19]} built, {size}")
    return dict(inspected)


def test_image_config_is_what_the_manifests_expect(image: dict[str, Any]) -> None:
    config = image["config"]
    assert config["User"] == "10001:10001"
    assert config["Entrypoint"] == ["mammoseg", "serve"]
    assert (
        "/healthz" in config["Healthcheck"]["Test"][-1]
    )  # kept: the image is built in docker format
    assert set(config["ExposedPorts"]) == {"11112/tcp", "8080/tcp"}
    assert "/var/lib/mammoseg" in config["Volumes"]


def test_built_image_serves_the_shipped_model(image: dict[str, Any], tmp_path: Path) -> None:
    container = buildah("from", "--pull=never", TAG).strip()
    dicom_port, http_port = free_port(), free_port()
    env = {
        "MAMMOSEG_DICOM_HOST": "127.0.0.1",  # the image binds 0.0.0.0; the test stays on loopback
        "MAMMOSEG_HTTP_HOST": "127.0.0.1",
        "MAMMOSEG_DICOM_PORT": str(dicom_port),
        "MAMMOSEG_HTTP_PORT": str(http_port),
    }
    flags = [arg for name, value in env.items() for arg in ("--env", f"{name}={value}")]
    try:
        packages = buildah(
            "run",
            "--isolation",
            "chroot",
            container,
            "--",
            "python",
            "-c",
            "import importlib.util as u; "
            "print(u.find_spec('tensorflow'), u.find_spec('psycopg') is not None)",
        ).split()
        assert packages == ["None", "True"], (
            packages
        )  # runtime and the postgres extra, no TensorFlow
        proc = subprocess.Popen(
            [
                "buildah",
                "run",
                "--isolation",
                "chroot",
                "--network",
                "host",
                "--user",
                "10001:10001",
                *flags,
                container,
                "--",
                "mammoseg",
                "serve",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            wait_until(lambda: ready(f"http://127.0.0.1:{http_port}/readyz"), 180, "/readyz")
            model = get_json(f"http://127.0.0.1:{http_port}/api/v1/model")
            ae = AE(ae_title="STORESCU")
            ae.add_requested_context(Verification)
            ae.add_requested_context(DigitalMammographyXRayImageStorageForPresentation)
            assoc = ae.associate("127.0.0.1", dicom_port, ae_title="MAMMOSEG")
            assert assoc.is_established
            assert int(assoc.send_c_echo().Status) == 0
            dataset = dcmread(synthetic_file(tmp_path))
            assert int(assoc.send_c_store(dataset).Status) == 0
            assoc.release()
            uid = str(dataset.SOPInstanceUID)

            def finished() -> dict[str, Any] | None:
                jobs = get_json(f"http://127.0.0.1:{http_port}/api/v1/jobs")["items"]
                done = [
                    j
                    for j in jobs
                    if j["sop_instance_uid"] == uid and j["state"] in {"DONE", "FAILED"}
                ]
                return done[0] if done else None

            job = wait_until(finished, 120, "the job to finish")
            assert job["state"] == "DONE", job
            assert {"seg", "sr"} <= set(job["result_uids"]), job
            print(
                f"container: {model['name']} {model['version']} ready, C-ECHO and C-STORE 0x0000, "
                f"job {job['id']} DONE, results {sorted(job['result_uids'])}"
            )
        finally:
            # SIGTERM to the node itself, as a container engine's stop does: buildah run
            # answers its own SIGTERM by killing the process, which would not be a clean stop.
            pid = node_pid(http_port)
            if pid is not None:
                os.kill(pid, signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=30)
            code = stop_process(proc)  # type: ignore[arg-type]
            output = proc.stdout.read() if proc.stdout else ""
        assert code == 0, output[-3000:]
    finally:
        buildah("rm", container)
