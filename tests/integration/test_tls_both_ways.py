"""DICOM TLS both ways, in process: the SCP's profile and caller binding, the SCU's checks.

The SCP side uses pynetdicom as the TLS client; the SCU side sends to in-process TLS
peers (the node's own SCP, or a bare TLS 1.1 socket). Each test prints what was
negotiated or why it was refused. DCMTK ``storescp +tls`` as the destination is in
tests/e2e/test_tls_storescp.py. Everything listens on 127.0.0.1.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import DigitalMammographyXRayImageStorageForPresentation, Verification

from dicom_node.scp import AssociationEvents, ScpConfig, StorageSCP, TlsConfig
from dicom_node.scu import Destination, DestinationTls, SendError, echo
from dicom_node.status import Status
from dicom_node.tls import DEFAULT_TLS_CIPHERS
from tests.conftest import free_port
from tests.integration.test_scp import Sink, small_image
from tests.pki import needs_openssl, new_ca, new_cert

pytestmark = needs_openssl

CALLER_NAMES = {"PACSA": ["pacs-a.example.org"], "MODB": ["modality-b"]}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """CA; the node (127.0.0.1); a PACS certificate named by its DNS subjectAltName and a
    modality certificate named by its CN only; a server known only as pacs.test; a CA
    that signed none of them."""
    d = tmp_path_factory.mktemp("pki")
    new_ca(d)
    new_cert(d, "server", cn="mammoseg node")
    new_cert(d, "pacs-a", cn="PACS A device", san="DNS:pacs-a.example.org")
    new_cert(d, "modality-b", cn="modality-b", san=None)
    new_cert(d, "named", cn="named server", san="DNS:pacs.test")
    new_ca(d, "other-ca", cn="some other CA")
    return d


@contextmanager
def tls_scp(
    tmp_path: Path, pki: Path, *, server: str = "server", **tls: object
) -> Iterator[tuple[StorageSCP, list[tuple[str, str, str]]]]:
    rejected: list[tuple[str, str, str]] = []
    scp = StorageSCP(
        ScpConfig(
            ae_title="MAMMOSEG",
            host="127.0.0.1",
            port=free_port(),
            spool_dir=tmp_path / "spool",
            tls=TlsConfig(
                cert_file=pki / f"{server}.crt",
                key_file=pki / f"{server}.key",
                ca_file=pki / "ca.crt",
                **tls,  # type: ignore[arg-type]
            ),
        ),
        Sink(),
        AssociationEvents(on_rejected=lambda *row: rejected.append(row)),
    )
    scp.start()
    try:
        yield scp, rejected
    finally:
        scp.stop()


def client(
    pki: Path,
    cert: str | None = None,
    *,
    version: ssl.TLSVersion | None = None,
    ciphers: str | None = None,
) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki / "ca.crt"))
    if cert:
        ctx.load_cert_chain(str(pki / f"{cert}.crt"), str(pki / f"{cert}.key"))
    if version is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # TLSv1_1 is, on purpose
            ctx.minimum_version = ctx.maximum_version = version
    if ciphers:
        ctx.set_ciphers(ciphers)
    return ctx


def associate(port: int, ctx: ssl.SSLContext, calling: str = "PACS"):  # type: ignore[no-untyped-def]
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.network_timeout = ae.connection_timeout = 10
    ae.add_requested_context(Verification)
    ae.add_requested_context(DigitalMammographyXRayImageStorageForPresentation)
    return ae.associate("127.0.0.1", port, ae_title="MAMMOSEG", tls_args=(ctx, "127.0.0.1"))


def negotiated(assoc) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    sock = assoc.dul.socket.socket
    return sock.version(), sock.cipher()[0]


def release(assoc) -> None:  # type: ignore[no-untyped-def]
    if assoc.is_established:
        assoc.release()


# -- the SCP: versions and ciphers --------------------------------------------
def test_scp_prefers_tls13(tmp_path: Path, pki: Path) -> None:
    with tls_scp(tmp_path, pki) as (scp, _):
        assoc = associate(scp.config.port, client(pki))
        try:
            assert assoc.is_established
            version, cipher = negotiated(assoc)
            print(f"\ndefault client -> SCP: {version} {cipher}")
            assert version == "TLSv1.3"
            assert assoc.send_c_echo().Status == Status.SUCCESS
        finally:
            release(assoc)


def test_scp_refuses_a_tls11_only_client(
    tmp_path: Path, pki: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with tls_scp(tmp_path, pki) as (scp, _):
        ctx = client(pki, version=ssl.TLSVersion.TLSv1_1, ciphers="DEFAULT:@SECLEVEL=0")
        with caplog.at_level(logging.WARNING, logger="dicom_node.transport"):
            assoc = associate(scp.config.port, ctx)
        assert not assoc.is_established
        guard = scp.guard
        assert guard is not None
        (line,) = [r.getMessage() for r in caplog.records if "TLS handshake" in r.getMessage()]
        print(f"\nTLS 1.1-only client: {line}; tls_failed={guard.counts.tls_failed}")
        assert guard.counts.tls_failed == 1
        assert "no TLS version in common" in line


def test_scp_tls12_client_gets_a_profile_cipher_and_nothing_else(tmp_path: Path, pki: Path) -> None:
    with tls_scp(tmp_path, pki) as (scp, _):
        assoc = associate(scp.config.port, client(pki, version=ssl.TLSVersion.TLSv1_2))
        try:
            version, cipher = negotiated(assoc)
            print(f"\nTLS 1.2 client -> SCP: {version} {cipher}")
            assert (version, cipher in DEFAULT_TLS_CIPHERS.split(":")) == ("TLSv1.2", True)
        finally:
            release(assoc)
        # RSA key exchange, and ECDHE with CBC: both outside the profile.
        for offered in ("AES128-GCM-SHA256", "ECDHE-RSA-AES128-SHA256"):
            tls12 = client(pki, version=ssl.TLSVersion.TLSv1_2, ciphers=offered)
            refused = associate(scp.config.port, tls12)
            print(f"TLS 1.2 client offering only {offered}: established={refused.is_established}")
            assert not refused.is_established


def test_the_cipher_setting_reaches_the_scp(tmp_path: Path, pki: Path) -> None:
    only = "ECDHE-RSA-AES256-GCM-SHA384"
    with tls_scp(tmp_path, pki, ciphers=only) as (scp, _):
        offered = "ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-AES256-GCM-SHA384"
        assoc = associate(
            scp.config.port, client(pki, version=ssl.TLSVersion.TLSv1_2, ciphers=offered)
        )
        try:
            print(f"\nSCP tls_ciphers={only}, client offers {offered}: {negotiated(assoc)}")
            assert negotiated(assoc) == ("TLSv1.2", only)
        finally:
            release(assoc)
        other = client(pki, version=ssl.TLSVersion.TLSv1_2, ciphers="ECDHE-RSA-AES128-GCM-SHA256")
        assert not associate(scp.config.port, other).is_established


# -- the SCP: client certificates tied to calling AE titles --------------------
@pytest.mark.parametrize(
    ("calling", "cert", "accepted"),
    [
        ("PACSA", "pacs-a", True),  # DNS subjectAltName pacs-a.example.org
        ("MODB", "modality-b", True),  # subject CN modality-b
        ("OTHER", None, True),  # not in the map: not bound to a certificate
        ("OTHER", "modality-b", True),
        ("PACSA", "modality-b", False),  # a valid certificate, but not PACSA's
        ("MODB", "pacs-a", False),
        ("PACSA", None, False),  # no certificate at all
    ],
)
def test_caller_names_tie_ae_titles_to_certificates(
    tmp_path: Path,
    pki: Path,
    caplog: pytest.LogCaptureFixture,
    calling: str,
    cert: str | None,
    accepted: bool,
) -> None:
    names = {ae: frozenset(values) for ae, values in CALLER_NAMES.items()}
    with tls_scp(tmp_path, pki, caller_names=names) as (scp, rejected):
        with caplog.at_level(logging.INFO, logger="dicom_node.scp"):
            assoc = associate(scp.config.port, client(pki, cert), calling=calling)
            established = assoc.is_established
            try:
                if established:
                    assert assoc.send_c_store(small_image()).Status == Status.SUCCESS
            finally:
                release(assoc)
        lines = [r.getMessage() for r in caplog.records if "certificate" in r.getMessage()]
        rj = assoc.acceptor.primitive if assoc.is_rejected else None
        answer = (
            f"A-ASSOCIATE-RJ {int(rj.result)}/{int(rj.result_source)}/{int(rj.diagnostic)}"
            if rj is not None
            else ("accepted" if established else "no answer")
        )
        print(f"\n{calling} with {cert or 'no'} certificate: {answer}; {lines}")
        assert established is accepted
        if accepted:
            assert not rejected and not lines
            assert len(scp.sink.received) == 1  # type: ignore[attr-defined]
            return
        assert rj is not None
        # rejected-permanent, service user, calling AE title not recognised (PS3.8 9.3.4)
        assert (int(rj.result), int(rj.result_source), int(rj.diagnostic)) == (1, 1, 3)
        assert [row[1:] for row in rejected] == [(calling, "127.0.0.1")]  # the audit
        (line,) = lines
        assert calling in line and ("sha256:" in line or "no certificate" in line)
        # What the certificate says is not logged: AE titles, addresses, a digest.
        assert "modality-b" not in line and "pacs-a.example.org" not in line
        assert not scp.sink.received  # type: ignore[attr-defined]


def test_caller_names_match_case_insensitively(tmp_path: Path, pki: Path) -> None:
    names = {"PACSA": frozenset({"PACS-A.Example.ORG"})}
    with tls_scp(tmp_path, pki, caller_names=names) as (scp, _):
        assoc = associate(scp.config.port, client(pki, "pacs-a"), calling="PACSA")
        try:
            assert assoc.is_established
        finally:
            release(assoc)


def test_caller_names_without_a_ca_file_are_refused(pki: Path) -> None:
    with pytest.raises(ValueError, match="need ca_file"):
        TlsConfig(
            cert_file=pki / "server.crt",
            key_file=pki / "server.key",
            caller_names={"PACSA": frozenset({"x"})},
        )


# -- the SCU: server verification, names, versions -------------------------------
def tls_destination(port: int, pki: Path, *, host: str = "127.0.0.1", **kw: object) -> Destination:
    options: dict[str, object] = {"ca_file": pki / "ca.crt", **kw}
    return Destination("MAMMOSEG", host, port, DestinationTls(**options))  # type: ignore[arg-type]


def test_scu_checks_the_server_name(tmp_path: Path, pki: Path) -> None:
    """A certificate for pacs.test only: refused at 127.0.0.1, accepted with server_name."""
    with tls_scp(tmp_path, pki, server="named") as (scp, _):
        port = scp.config.port
        with pytest.raises(SendError) as refused:
            echo(tls_destination(port, pki), calling_ae="NODE", timeout_s=10)
        print(f"\nserver certificate for pacs.test, destination 127.0.0.1: {refused.value}")
        assert "certificate was not accepted" in str(refused.value)
        assert "mismatch" in str(refused.value)
        named = tls_destination(port, pki, server_name="pacs.test")
        assert echo(named, calling_ae="NODE", timeout_s=10) is Status.SUCCESS


def test_scu_with_the_wrong_ca_fails_with_the_reason(tmp_path: Path, pki: Path) -> None:
    with tls_scp(tmp_path, pki) as (scp, _):
        wrong = tls_destination(scp.config.port, pki, ca_file=pki / "other-ca.crt")
        with pytest.raises(SendError) as refused:
            echo(wrong, calling_ae="NODE", timeout_s=10)
    print(f"\nwrong CA: {refused.value}")
    assert "certificate was not accepted" in str(refused.value)
    assert "issuer" in str(refused.value) or "self-signed" in str(refused.value)


def test_scu_presents_its_client_certificate(tmp_path: Path, pki: Path) -> None:
    with tls_scp(tmp_path, pki, require_client_cert=True) as (scp, _):
        port = scp.config.port
        with_cert = tls_destination(
            port, pki, cert_file=pki / "pacs-a.crt", key_file=pki / "pacs-a.key"
        )
        assert echo(with_cert, calling_ae="NODE", timeout_s=10) is Status.SUCCESS
        with pytest.raises(SendError) as refused:
            echo(tls_destination(port, pki), calling_ae="NODE", timeout_s=10)
    print(f"\nno client certificate for an SCP that requires one: {refused.value}")
    assert "client certificate" in str(refused.value)


def test_scu_refuses_a_tls11_only_destination(tmp_path: Path, pki: Path) -> None:
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        server.minimum_version = server.maximum_version = ssl.TLSVersion.TLSv1_1
    server.set_ciphers("DEFAULT:@SECLEVEL=0")
    server.load_cert_chain(str(pki / "server.crt"), str(pki / "server.key"))
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    seen: list[str] = []

    def serve_one() -> None:
        conn, _ = listener.accept()
        conn.settimeout(10)
        try:
            server.wrap_socket(conn, server_side=True).close()
        except (ssl.SSLError, OSError) as exc:
            seen.append(type(exc).__name__)
        finally:
            conn.close()

    thread = threading.Thread(target=serve_one, daemon=True)
    thread.start()
    try:
        with pytest.raises(SendError) as refused:
            echo(tls_destination(port, pki), calling_ae="NODE", timeout_s=10)
    finally:
        thread.join(10)
        listener.close()
    print(f"\nTLS 1.1-only destination: {refused.value} (peer saw {seen})")
    assert "no TLS version in common" in str(refused.value)


def test_scu_names_a_bad_ca_file(tmp_path: Path, pki: Path) -> None:
    missing = tls_destination(free_port(), pki, ca_file=tmp_path / "nope.crt")
    with pytest.raises(SendError, match=r"cannot be set up: CA file .*nope.crt does not exist"):
        echo(missing, calling_ae="NODE", timeout_s=5)
