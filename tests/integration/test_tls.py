"""DICOM TLS (PS3.15 B.1) with a self-signed CA made by the test."""

from __future__ import annotations

import shutil
import ssl
import subprocess
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import DigitalMammographyXRayImageStorageForPresentation, Verification

from dicom_node.scp import ScpConfig, StorageSCP, TlsConfig
from dicom_node.status import Status
from tests.conftest import free_port
from tests.integration.test_scp import Sink, small_image
from tests.pki import needs_openssl, new_ca, new_cert

pytestmark = needs_openssl


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a server certificate for 127.0.0.1 and a client certificate (tests/pki.py)."""
    d = tmp_path_factory.mktemp("pki")
    new_ca(d)
    for name in ("server", "client"):
        new_cert(d, name, cn=name)
    return d


def start_scp(tmp_path: Path, pki: Path, *, require_client_cert: bool) -> StorageSCP:
    tls = TlsConfig(
        cert_file=pki / "server.crt",
        key_file=pki / "server.key",
        ca_file=pki / "ca.crt",
        require_client_cert=require_client_cert,
    )
    scp = StorageSCP(
        ScpConfig(
            ae_title="MAMMOSEG",
            host="127.0.0.1",
            port=free_port(),
            spool_dir=tmp_path / "spool",
            tls=tls,
        ),
        Sink(),
    )
    scp.start()
    return scp


def client_context(pki: Path, *, with_cert: bool) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki / "ca.crt"))
    if with_cert:
        ctx.load_cert_chain(str(pki / "client.crt"), str(pki / "client.key"))
    return ctx


def tls_associate(port: int, ctx: ssl.SSLContext):  # type: ignore[no-untyped-def]
    ae = AE(ae_title="PACS")
    ae.add_requested_context(Verification)
    ae.add_requested_context(DigitalMammographyXRayImageStorageForPresentation)
    return ae.associate("127.0.0.1", port, ae_title="MAMMOSEG", tls_args=(ctx, "127.0.0.1"))


def test_tls_store_with_client_certificate(tmp_path: Path, pki: Path) -> None:
    scp = start_scp(tmp_path, pki, require_client_cert=True)
    try:
        assoc = tls_associate(scp.config.port, client_context(pki, with_cert=True))
        assert assoc.is_established
        assert assoc.send_c_store(small_image()).Status == Status.SUCCESS
        assoc.release()
        assert len(scp.sink.received) == 1  # type: ignore[attr-defined]
    finally:
        scp.stop()


def test_client_without_certificate_is_refused_when_required(tmp_path: Path, pki: Path) -> None:
    scp = start_scp(tmp_path, pki, require_client_cert=True)
    try:
        assoc = tls_associate(scp.config.port, client_context(pki, with_cert=False))
        assert not assoc.is_established
    finally:
        scp.stop()


def test_plain_tcp_to_a_tls_port_gets_nothing(tmp_path: Path, pki: Path) -> None:
    scp = start_scp(tmp_path, pki, require_client_cert=False)
    try:
        ae = AE(ae_title="PACS")
        ae.add_requested_context(Verification)
        ae.acse_timeout = ae.network_timeout = 5
        assoc = ae.associate("127.0.0.1", scp.config.port, ae_title="MAMMOSEG")
        assert not assoc.is_established
    finally:
        scp.stop()


def test_dcmtk_storescu_over_tls(tmp_path: Path, pki: Path) -> None:
    if shutil.which("storescu") is None:
        pytest.skip("storescu is not installed (Debian package dcmtk)")
    from service.testkit.synthetic import synthetic_file

    scp = start_scp(tmp_path, pki, require_client_cert=True)
    try:
        path = synthetic_file(tmp_path, rows=128, columns=96)
        done = subprocess.run(
            [
                "storescu",
                "-aet",
                "PACS",
                "-aec",
                "MAMMOSEG",
                "+tls",
                str(pki / "client.key"),
                str(pki / "client.crt"),
                "+cf",
                str(pki / "ca.crt"),
                "127.0.0.1",
                str(scp.config.port),
                str(path),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert len(scp.sink.received) == 1  # type: ignore[attr-defined]
    finally:
        scp.stop()
