"""DCMTK ``storescp +tls`` as a TLS destination (issue 12, "TLS both ways").

storescp runs with its default profile (BCP 195 non-downgrading) and requires a
client certificate (its ``-rc`` default). The SCU's results must arrive over TLS;
a wrong CA or a missing client certificate must fail the delivery with a reason a
person can act on. The last test runs ``mammoseg serve`` as a process with TLS on
both legs: DCMTK storescu +tls in, storescp +tls out. Each test prints what was
negotiated or refused; none asserts a time. storescp listens on every interface
(3.6.7 has no bind option); everything is addressed at 127.0.0.1.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pydicom
import pytest

from dicom_node.scu import Destination, DestinationTls, SendError, send_files
from service.testkit.launch import start_node
from service.testkit.synthetic import synthetic_file
from tests.e2e.peers import storescp, storescu, wait_until
from tests.e2e.reliability import all_jobs
from tests.pki import needs_openssl, new_ca, new_cert
from tests.tiny_model import write_tiny_model

pytestmark = [pytest.mark.e2e, needs_openssl]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """CA; storescp's and the node's certificates (127.0.0.1); a PACS client certificate;
    a CA that signed none of them."""
    d = tmp_path_factory.mktemp("pki")
    new_ca(d)
    new_cert(d, "storescp", cn="storescp")
    new_cert(d, "node", cn="mammoseg node")
    new_cert(d, "pacs", cn="pacs", san="DNS:pacs.example.org")
    new_ca(d, "other-ca", cn="some other CA")
    return d


def tls_args(pki: Path, name: str) -> list[str]:
    """DCMTK's TLS options: NAME's key and certificate, trust the test CA."""
    return ["+tls", str(pki / f"{name}.key"), str(pki / f"{name}.crt"), "+cf", str(pki / "ca.crt")]


@contextmanager
def tls_storescp(tmp: Path, pki: Path) -> Iterator[tuple[int, Path]]:
    with storescp(tmp, extra=tls_args(pki, "storescp")) as (port, folder):
        yield port, folder


def destination(port: int, pki: Path, *, ca: str = "ca", client_cert: bool = True) -> Destination:
    cert = {"cert_file": pki / "node.crt", "key_file": pki / "node.key"} if client_cert else {}
    return Destination("STORESCP", "127.0.0.1", port, DestinationTls(pki / f"{ca}.crt", **cert))


def test_results_arrive_at_storescp_over_tls(
    tmp_path: Path, pki: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sent = synthetic_file(tmp_path, rows=128, columns=96)
    with tls_storescp(tmp_path, pki) as (port, folder):
        with caplog.at_level(logging.INFO, logger="dicom_node.scu"):
            send_files(destination(port, pki), [sent], calling_ae="MAMMOSEG", timeout_s=20)
        received = [p for p in folder.iterdir() if p.is_file()]
    (line,) = [r.getMessage() for r in caplog.records if " over " in r.getMessage()]
    print(f"\nstorescp +tls: {line}; {len(received)} file(s) arrived")
    assert " over TLSv1." in line
    (got,) = received
    assert pydicom.dcmread(got).SOPInstanceUID == pydicom.dcmread(sent).SOPInstanceUID


def test_a_wrong_ca_fails_the_delivery_with_the_reason(tmp_path: Path, pki: Path) -> None:
    sent = synthetic_file(tmp_path, rows=64, columns=48)
    with tls_storescp(tmp_path, pki) as (port, folder):
        with pytest.raises(SendError) as refused:
            send_files(destination(port, pki, ca="other-ca"), [sent], calling_ae="MAMMOSEG")
        received = list(folder.iterdir())
    print(f"\nwrong CA: {refused.value}")
    assert "TLS: the peer's certificate was not accepted" in str(refused.value)
    assert not received


def test_storescp_refuses_a_node_without_client_certificate(tmp_path: Path, pki: Path) -> None:
    sent = synthetic_file(tmp_path, rows=64, columns=48)
    with tls_storescp(tmp_path, pki) as (port, folder):
        with pytest.raises(SendError) as refused:
            send_files(destination(port, pki, client_cert=False), [sent], calling_ae="MAMMOSEG")
        received = list(folder.iterdir())
    print(f"\nno client certificate: {refused.value}")
    assert "client certificate" in str(refused.value)
    assert not received


@pytest.mark.slow
def test_tls_both_ways_through_the_node(tmp_path: Path, pki: Path) -> None:
    """storescu +tls -> mammoseg serve (TLS SCP, PACS tied to its certificate) -> storescp +tls."""
    image = synthetic_file(tmp_path, rows=256, columns=208)
    with tls_storescp(tmp_path / "dest", pki) as (port, folder):
        spec = (
            f"tls://STORESCP@127.0.0.1:{port}?ca_file={pki / 'ca.crt'}"
            f"&cert_file={pki / 'node.crt'}&key_file={pki / 'node.key'}"
        )
        env = {
            "MAMMOSEG_MODEL_PATH": str(write_tiny_model(tmp_path / "tiny.onnx")),
            "MAMMOSEG_TLS_CERT_FILE": str(pki / "node.crt"),
            "MAMMOSEG_TLS_KEY_FILE": str(pki / "node.key"),
            "MAMMOSEG_TLS_CA_FILE": str(pki / "ca.crt"),
            "MAMMOSEG_TLS_REQUIRE_CLIENT_CERT": "true",
            "MAMMOSEG_TLS_CALLER_NAMES": '{"PACS": ["pacs.example.org"]}',
        }
        node = start_node(tmp_path / "node", env=env, args=["--destination", spec])
        try:
            wrong = storescu(
                node.dicom_port,
                [image],
                called=node.aet,
                calling="PACS",
                extra=tls_args(pki, "storescp"),
            )
            done = storescu(
                node.dicom_port,
                [image],
                called=node.aet,
                calling="PACS",
                extra=tls_args(pki, "pacs"),
            )
            assert done.returncode == 0, done.stderr
            jobs = wait_until(
                lambda: [j for j in all_jobs(node) if j["state"] in ("DONE", "FAILED")],
                120,
                "the job to finish",
            )
            results = set(jobs[0]["result_uids"].values())
            wait_until(lambda: len(list(folder.iterdir())) >= len(results), 30, "the results")
            received = {str(pydicom.dcmread(p).SOPInstanceUID) for p in folder.iterdir()}
            log = node.log_text()
        finally:
            node.stop()
    tls_out = [line for line in log.splitlines() if "over TLSv1." in line]
    rejected = [line for line in log.splitlines() if "rejected:" in line]
    print(
        f"\nPACS with another valid certificate: storescu exit {wrong.returncode}; node log: "
        f"{rejected}\nPACS with its own: job {jobs[0]['state']}; storescp received "
        f"{len(received)} of its {sorted(jobs[0]['result_uids'])} results; "
        f"{tls_out[-1] if tls_out else 'no TLS line'}"
    )
    assert wrong.returncode != 0 and len(rejected) == 1
    assert [j["state"] for j in jobs] == ["DONE"], jobs
    assert received == results and results
    assert tls_out
