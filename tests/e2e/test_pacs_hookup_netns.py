"""README "Hooking it to a PACS" end to end, with the node on a real second interface.

The test makes a network namespace of its own and a veth pair into it, on a random /30
from 198.18.0.0/15 that overlaps no address or route of the host (checked with
``ip -j addr`` and ``ip -j route``). ``mammoseg serve`` runs inside the namespace with the
README's ``ARGS`` as written (``--dicom-host 0.0.0.0``, the default ports 11112 and 8080)
and the PACS's address replaced by the host end of the veth, where a pynetdicom storage
SCP with AE title PACSAET plays the PACS. From the host, DCMTK's ``echoscu`` and
``storescu`` run the README's lines with ``mammoseg-host`` replaced by the namespace's
address; the node delivers its SEG, Secondary Capture and SR back across the veth. The
README's ``curl`` line runs inside the namespace (the HTTP server stays on its
127.0.0.1). The veth and the namespace are deleted afterwards, also when the test fails.

Traffic goes only to 127.0.0.1 (inside the namespace) and to the two veth addresses.
Skipped when not root, without ``ip``, or where ``ip netns add`` fails; the DCMTK steps
fall back to pynetdicom where DCMTK is not installed.
"""

from __future__ import annotations

import json
import os
import random
import re
import secrets
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, ip_network
from pathlib import Path
from typing import Any

import pytest
from pydicom import Dataset, dcmread
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import DigitalMammographyXRayImageStorageForPresentation, Verification

from dicom_node.status import Status
from service.testkit.processes import stop_process
from tests.tiny_model import write_tiny_model

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
#: Where the test's subnets come from (RFC 2544 benchmarking range, never routed).
POOL = IPv4Network("198.18.0.0/15")
DICOM_PORT = 11112  # the README's (the node's default); the namespace has nothing else
HTTP_PORT = 8080  # the node's default, as the README's curl line uses it


def readme_section() -> str:
    start = README.index("## Hooking it to a PACS")
    return README[start : README.index("\n## ", start + 1)]


def readme_console(command: str) -> tuple[str, list[str]]:
    """The README's ``$ command ...`` line and the output lines it shows under it."""
    lines = [ln.strip() for ln in readme_section().splitlines()]
    (at,) = [i for i, ln in enumerate(lines) if ln.startswith(f"$ {command} ")]
    shown: list[str] = []
    for ln in lines[at + 1 :]:
        if ln.startswith("$ ") or ln.startswith("```"):
            break
        shown.append(ln)
    return lines[at].removeprefix("$ "), shown


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=check)


def host_networks() -> list[IPv4Network]:
    """Every IPv4 network the host has an address in or a route to (default aside)."""
    nets: list[IPv4Network] = []
    for link in json.loads(ip("-j", "-4", "addr").stdout or "[]"):
        for info in link.get("addr_info", []):
            for key in ("local", "address"):
                if key in info:
                    nets.append(IPv4Network(f"{info[key]}/{info['prefixlen']}", strict=False))
    for route in json.loads(ip("-j", "-4", "route", "show", "table", "all").stdout or "[]"):
        dst = route.get("dst", "default")
        if dst == "default":
            continue  # a /30 of ours is more specific: the default route keeps working
        try:
            net = ip_network(dst, strict=False)
        except ValueError:
            continue
        if isinstance(net, IPv4Network):
            nets.append(net)
    return nets


def free_subnet() -> IPv4Network:
    used = host_networks()
    rng = random.SystemRandom()
    for _ in range(200):
        base = POOL.network_address + 4 * rng.randrange(POOL.num_addresses // 4)
        subnet = IPv4Network(f"{base}/30")
        if not any(subnet.overlaps(net) for net in used):
            return subnet
    raise AssertionError(f"no free /30 in {POOL}: the host uses {used}")


@dataclass
class Netns:
    """A network namespace joined to the host by a veth pair."""

    name: str
    host_link: str
    host_addr: IPv4Address
    ns_addr: IPv4Address

    def exec(self, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]


def leftovers(name: str, link: str) -> list[str]:
    left = []
    if name in ip("netns", "list", check=False).stdout.split():
        left.append(f"netns {name}")
    if ip("link", "show", "dev", link, check=False).returncode == 0:
        left.append(f"link {link}")
    return left


@pytest.fixture
def netns() -> Iterator[Netns]:
    if os.geteuid() != 0:
        pytest.skip("creating a network namespace needs root")
    if shutil.which("ip") is None:
        pytest.skip("ip (iproute2) is not installed")
    token = secrets.token_hex(3)
    name, host_link, ns_link = f"mseg-{token}", f"mseg{token}h", f"mseg{token}n"
    made = ip("netns", "add", name, check=False)
    if made.returncode != 0:
        pytest.skip(f"ip netns add failed here: {made.stderr.strip()}")
    try:
        subnet = free_subnet()
        host_addr, ns_addr = subnet.network_address + 1, subnet.network_address + 2
        ip("link", "add", host_link, "type", "veth", "peer", "name", ns_link)
        ip("link", "set", ns_link, "netns", name)
        ip("addr", "add", f"{host_addr}/30", "dev", host_link)
        ip("link", "set", host_link, "up")
        ip("netns", "exec", name, "ip", "addr", "add", f"{ns_addr}/30", "dev", ns_link)
        ip("netns", "exec", name, "ip", "link", "set", ns_link, "up")
        ip("netns", "exec", name, "ip", "link", "set", "lo", "up")
        yield Netns(name, host_link, host_addr, ns_addr)
    finally:
        ip("link", "del", host_link, check=False)  # takes its peer in the namespace along
        ip("netns", "del", name, check=False)
        left = leftovers(name, host_link)
        assert left == [], f"not cleaned up: {left}"


@dataclass
class Delivered:
    dataset: Dataset
    calling_aet: str
    address: str


@dataclass
class Pacs:
    """A storage SCP standing for the PACS (AE title PACSAET) on the host end of the veth."""

    host: str
    received: list[Delivered] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: Any = None

    def start(self) -> None:
        ae = AE(ae_title="PACSAET")
        ae.supported_contexts = AllStoragePresentationContexts
        ae.add_supported_context(Verification)
        self.server = ae.start_server(
            (self.host, 0), block=False, evt_handlers=[(evt.EVT_C_STORE, self.store)]
        )

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def store(self, event: evt.Event) -> int:
        requestor = event.assoc.requestor
        with self.lock:
            self.received.append(Delivered(event.dataset, requestor.ae_title, requestor.address))
        return int(Status.SUCCESS)


@pytest.fixture
def pacs(netns: Netns) -> Iterator[Pacs]:
    peer = Pacs(str(netns.host_addr))
    peer.start()
    yield peer
    peer.server.shutdown()


def readme_args(pacs: Pacs) -> list[str]:
    (line,) = re.findall(r'^\s*ARGS="([^"]+)"$', readme_section(), flags=re.MULTILINE)
    assert shlex.split(line)[:2] == ["--dicom-host", "0.0.0.0"]
    assert "pacs-host:104" in line
    return shlex.split(line.replace("pacs-host:104", f"{pacs.host}:{pacs.port}"))


def mammoseg() -> list[str]:
    """The venv's ``mammoseg`` (the README's ``.venv/bin/mammoseg``)."""
    script = Path(sys.executable).with_name("mammoseg")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "service"]


def ns_get(netns: Netns, path: str) -> tuple[int, Any]:
    """(HTTP status, JSON body) of ``GET http://127.0.0.1:8080{path}`` inside the namespace."""
    script = (
        "import sys, urllib.request, urllib.error\n"
        "try:\n"
        "    r = urllib.request.urlopen(sys.argv[1], timeout=10)\n"
        "    print(r.status); print(r.read().decode())\n"
        "except urllib.error.HTTPError as e:\n"
        "    print(e.code); print(e.read().decode())\n"
        "except OSError:\n"
        "    print(0); print('null')\n"
    )
    url = f"http://127.0.0.1:{HTTP_PORT}{path}"
    done = subprocess.run(
        netns.exec(sys.executable, "-c", script, url), capture_output=True, text=True, timeout=60
    )
    status, _, body = done.stdout.partition("\n")
    return int(status or 0), json.loads(body or "null")


def wait_until_ready(netns: Netns, node: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert node.poll() is None, f"the node exited ({node.returncode}):\n{tail(log)}"
        if ns_get(netns, "/readyz")[0] == 200:
            return
        time.sleep(0.2)
    raise AssertionError(f"the node did not become ready:\n{tail(log)}")


def wait_for_job(netns: Netns, log: Path) -> dict[str, Any]:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        _, body = ns_get(netns, "/api/v1/jobs?limit=1")
        items = (body or {}).get("items", [])
        if items and items[0]["state"] in ("DONE", "FAILED", "SKIPPED"):
            return dict(items[0])
        time.sleep(0.2)
    raise AssertionError(f"the job did not finish:\n{tail(log)}")


def tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:] if log.exists() else "(no log)"


def echo(host: str, calling: str) -> bool:
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    assoc = ae.associate(host, DICOM_PORT, ae_title="MAMMOSEG")
    if not assoc.is_established:
        return False
    status = assoc.send_c_echo()
    assoc.release()
    return int(status.Status) == Status.SUCCESS


def store(host: str, path: Path) -> int:
    ae = AE(ae_title="PACSAET")
    ae.add_requested_context(DigitalMammographyXRayImageStorageForPresentation)
    assoc = ae.associate(host, DICOM_PORT, ae_title="MAMMOSEG")
    assert assoc.is_established
    status = assoc.send_c_store(dcmread(path))
    assoc.release()
    return int(status.Status)


def run_dcmtk(command: str, netns: Netns, cwd: Path) -> tuple[list[str], str] | None:
    """Run the README's DCMTK line at the namespace's address: (lines shown, output)."""
    line, shown = readme_console(command)
    assert "mammoseg-host 11112" in line
    argv = shlex.split(line.replace("mammoseg-host", str(netns.ns_addr)))
    if shutil.which(argv[0]) is None:
        return None
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=cwd)
    return shown, done.stdout + done.stderr


def assert_shown(shown: list[str], output: str) -> None:
    """The output lines the README shows appear, in order; the ``XMIT:`` progress bar (on
    stdout, the rest on stderr, so not in order with them) only by its prefix."""
    got = [ln.strip() for ln in output.splitlines()]
    if any(want.startswith("XMIT:") for want in shown):
        assert any(ln.startswith("XMIT:") for ln in got), output
    at = 0
    for want in (ln for ln in shown if not ln.startswith("XMIT:")):
        assert want in got[at:], f"README line {want!r} not in the output (in order):\n{output}"
        at = got.index(want, at) + 1


def test_readme_steps_across_a_network_namespace(netns: Netns, pacs: Pacs, tmp_path: Path) -> None:
    node_host = str(netns.ns_addr)
    args = readme_args(pacs)
    test_args = [
        "--data-dir",
        str(tmp_path / "data"),
        "--model-path",
        # Level 0.35: under the synthetic image's brightest blurred region, so a region
        # is marked and the SEG is made (the test checks delivery, not detection).
        str(write_tiny_model(tmp_path / "tiny.onnx", level=0.35)),
    ]
    env = {**os.environ, "MAMMOSEG_MIN_FREE_MB": "0"}
    # Step 2: check, then start, inside the namespace.
    checked = subprocess.run(
        netns.exec(*mammoseg(), "check-config", *args, *test_args),
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=ROOT,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "configuration OK" in checked.stdout + checked.stderr
    log = tmp_path / "node.log"
    with log.open("wb") as out:
        node = subprocess.Popen(
            netns.exec(*mammoseg(), "serve", *args, *test_args),
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
        )
    try:
        wait_until_ready(netns, node, log)
        # Step 1: DICOM on every interface of the node's host, HTTP on its 127.0.0.1 only.
        with pytest.raises(OSError):
            socket.create_connection((node_host, HTTP_PORT), timeout=5).close()
        # Step 4: C-ECHO as the registered PACS; another calling AE title is rejected.
        ran = run_dcmtk("echoscu", netns, tmp_path)
        echo_status = "Success (pynetdicom)"
        if ran:
            assert_shown(*ran)
            echo_status = "Success (echoscu)"
            intruder = subprocess.run(
                ["echoscu", "-v", "-aet", "INTRUDER", "-aec", "MAMMOSEG", node_host, "11112"],
                capture_output=True,
                text=True,
                timeout=60,
            )
            said = intruder.stdout + intruder.stderr
            assert intruder.returncode != 0, said
            assert "F: Association Rejected:" in said, said
            assert "F: Reason: Calling AE Title Not Recognized" in said, said
        assert echo(node_host, "PACSAET")
        assert not echo(node_host, "INTRUDER")
        # One synthetic mammogram, written by the README's line with the node's venv.
        line, _ = readme_console(".venv/bin/python")
        writer = shlex.split(line)
        writer[0] = sys.executable
        subprocess.run(writer, check=True, cwd=tmp_path, timeout=300, capture_output=True)
        mammogram = tmp_path / "smoke" / "mg0000.dcm"
        ran = run_dcmtk("storescu", netns, tmp_path)
        if ran:
            assert_shown(*ran)
            store_status = "Success (storescu)"
        else:
            assert store(node_host, mammogram) == Status.SUCCESS
            store_status = "Success (pynetdicom)"
        job = wait_for_job(netns, log)
        assert job["state"] == "DONE", (job, tail(log))
        # The README's curl line, where the node's HTTP server is: inside the namespace.
        curl_line, curl_shown = readme_console("curl")
        if shutil.which("curl"):
            shown = subprocess.run(
                netns.exec("sh", "-c", curl_line), capture_output=True, text=True, timeout=60
            )
            assert [ln.strip() for ln in shown.stdout.splitlines()] == [
                ln.strip() for ln in curl_shown
            ], shown.stdout + shown.stderr
    finally:
        exit_status = stop_process(node)
    assert exit_status == 0, tail(log)
    source = dcmread(mammogram, stop_before_pixels=True)
    modalities = sorted(d.dataset.Modality for d in pacs.received)
    assert modalities == ["OT", "SEG", "SR"]
    assert {d.dataset.StudyInstanceUID for d in pacs.received} == {source.StudyInstanceUID}
    assert sorted(int(d.dataset.SeriesNumber) for d in pacs.received) == [9901, 9902, 9903]
    # Delivered across the veth, from the node's address, calling as MAMMOSEG.
    assert {(d.calling_aet, d.address) for d in pacs.received} == {("MAMMOSEG", node_host)}
    print(
        f"\nnetns {netns.name}: node {node_host}:{DICOM_PORT} (--dicom-host 0.0.0.0), "
        f"PACS {pacs.host}:{pacs.port}; echo {echo_status}, INTRUDER rejected; "
        f"store {store_status}; job {job['state']}; delivered {','.join(modalities)} "
        f"from MAMMOSEG@{node_host} into the source's study"
    )
