"""TLS settings: the destination forms, the shared profile, the cipher setting, check-config.

The contexts are built from real certificate files (tests/pki.py) but nothing connects;
the handshakes are in tests/integration/test_tls_both_ways.py and tests/e2e/test_tls_storescp.py.
"""

from __future__ import annotations

import json
import shutil
import ssl
from pathlib import Path

import pytest

from dicom_node.scu import Destination
from dicom_node.tls import DEFAULT_TLS_CIPHERS, check_ciphers, outside_profile, tls_context
from service.cli import main
from service.node import tls_config
from service.settings import SettingsError, load_settings
from tests.conftest import free_port
from tests.pki import new_ca, new_cert


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.upper().startswith("MAMMOSEG_"):
            monkeypatch.delenv(name)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI not found")
    d = tmp_path_factory.mktemp("pki")
    new_ca(d)
    new_cert(d, "node", cn="mammoseg node")
    return d


def tls12_suites(context: ssl.SSLContext) -> list[str]:
    return [c["name"] for c in context.get_ciphers() if c["protocol"] != "TLSv1.3"]


# -- the profile -----------------------------------------------------------------
def test_default_ciphers_are_the_bcp195_non_downgrading_profile() -> None:
    suites = check_ciphers(DEFAULT_TLS_CIPHERS)
    print(f"\ndefault TLS 1.2 suites: {suites}")
    assert suites and all(s.startswith("ECDHE-") for s in suites)
    assert all("-GCM-" in s or s.endswith("CHACHA20-POLY1305") for s in suites)
    assert outside_profile(DEFAULT_TLS_CIPHERS) == []
    assert outside_profile("AES128-SHA:ECDHE-RSA-AES128-SHA256:" + DEFAULT_TLS_CIPHERS) == [
        "AES128-SHA",
        "ECDHE-RSA-AES128-SHA256",
    ]


def test_both_sides_come_from_one_builder_with_tls12_minimum(pki: Path) -> None:
    server = tls_context(server=True, cert_file=pki / "node.crt", key_file=pki / "node.key")
    client = tls_context(server=False, ca_file=pki / "ca.crt")
    for ctx in (server, client):
        assert ctx.minimum_version is ssl.TLSVersion.TLSv1_2
        assert ctx.maximum_version is ssl.TLSVersion.MAXIMUM_SUPPORTED  # TLS 1.3 on
        assert ctx.options & ssl.OP_NO_COMPRESSION and ctx.options & ssl.OP_NO_RENEGOTIATION
        assert tls12_suites(ctx) == check_ciphers(DEFAULT_TLS_CIPHERS)
    assert server.options & ssl.OP_CIPHER_SERVER_PREFERENCE
    assert (client.verify_mode, client.check_hostname) == (ssl.CERT_REQUIRED, True)
    assert client.cert_store_stats()["x509_ca"] == 1  # the CA file only, no system store
    print(f"\nTLS 1.3 suites (OpenSSL's): {[c['name'] for c in client.get_ciphers()][:3]}")


def test_the_cipher_setting_reaches_both_contexts(pki: Path) -> None:
    only = "ECDHE-RSA-AES256-GCM-SHA384"
    settings = load_settings(
        tls_cert_file=pki / "node.crt",
        tls_key_file=pki / "node.key",
        tls_ca_file=pki / "ca.crt",
        tls_ciphers=only,
        destinations=[f"tls://PACS@127.0.0.1:2762?ca_file={pki / 'ca.crt'}"],
    )
    tls = tls_config(settings)
    assert tls is not None
    (destination,) = settings.destination_list
    assert destination.tls is not None
    server, client = tls.server_context(), destination.tls.client_context()
    print(f"\ntls_ciphers={only}: SCP {tls12_suites(server)}, SCU {tls12_suites(client)}")
    assert tls12_suites(server) == tls12_suites(client) == [only]


@pytest.mark.parametrize("ciphers", ["NOT-A-CIPHER", "aNULL:!aNULL"])
def test_a_cipher_list_openssl_cannot_use_stops_start_up(ciphers: str) -> None:
    with pytest.raises(SettingsError, match="tls_ciphers.*selects no"):
        load_settings(tls_ciphers=ciphers)


# -- the destination forms --------------------------------------------------------
def test_destination_forms_string_table_and_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "node.toml"
    config.write_text(
        "destinations = [\n"
        '  "ORTHANC@127.0.0.1:4242",\n'
        '  { ae_title = "PACS", host = "pacs.example.org", port = 2762, tls = true,'
        ' ca_file = "/etc/ca.crt", cert_file = "/etc/n.crt", key_file = "/etc/n.key" },\n'
        '  { ae_title = "PLAIN", host = "10.0.0.9", port = 104 },\n'
        "]\n"
    )
    settings = load_settings(config)
    print(f"\nfrom the file: {settings.destinations}")
    assert settings.destinations == [
        "ORTHANC@127.0.0.1:4242",
        "tls://PACS@pacs.example.org:2762?ca_file=/etc/ca.crt&cert_file=/etc/n.crt"
        "&key_file=/etc/n.key",
        "PLAIN@10.0.0.9:104",
    ]
    plain, pacs, _ = settings.destination_list
    assert plain.tls is None
    assert pacs.name == "PACS@pacs.example.org:2762"  # deliveries are recorded by this name
    assert pacs.tls is not None and pacs.tls.ca_file == Path("/etc/ca.crt")
    assert Destination.parse(pacs.spec) == pacs

    table = {"ae_title": "PACS", "host": "10.1.1.1", "port": 11112, "tls": True}
    table |= {"ca_file": "/etc/ca.crt", "server_name": "pacs.example.org"}
    monkeypatch.setenv("MAMMOSEG_DESTINATIONS", json.dumps([table]))
    (from_env,) = load_settings().destination_list
    assert from_env.tls is not None and from_env.tls.server_name == "pacs.example.org"
    monkeypatch.setenv("MAMMOSEG_DESTINATIONS", "A@h:1,tls://B@h:2?ca_file=/ca.crt")
    assert [d.tls is not None for d in load_settings().destination_list] == [False, True]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("PACS@h:104?ca_file=/ca.crt", "need the tls:// form"),
        ("tls://PACS@h:104", "needs ?ca_file=FILE"),
        ("tls://PACS@h:104?cafile=/ca.crt", "'cafile=/ca.crt' is not one of"),
        ("tls://PACS@h:104?ca_file=/ca.crt&cert_file=/n.crt", "cert_file and key_file go together"),
        ({"ae_title": "P", "host": "h", "port": 1, "tls": True}, "tls = true needs ca_file"),
        ({"ae_title": "P", "host": "h", "port": 1, "ca_file": "/ca"}, "without tls = true"),
        ({"ae_title": "P", "host": "h", "port": 1, "tls": "yes"}, "tls must be true or false"),
        ({"ae_title": "P", "host": "h", "port": 1, "cafile": "/ca"}, "unknown key"),
        ({"ae_title": "P", "port": 1}, "host missing"),
        ("PACS@h:104?commit=yes", "the commitment option is written commit=1"),
        ("PACS@h:104?commit=1&commit=1", "the commitment option is written commit=1"),
        ("PACS@h:104?", "nothing after '?'"),
        ({"ae_title": "P", "host": "h", "port": 1, "commit": 1}, "commit must be true or false"),
    ],
)
def test_bad_destinations_are_named(value: object, message: str) -> None:
    with pytest.raises(SettingsError) as exc:
        load_settings(destinations=[value])
    print(f"\n{value!r}: {exc.value}")
    assert message in str(exc.value)


def test_commitment_is_opted_in_per_destination_in_every_form(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    forms: list[object] = [
        "A@h:1",
        "B@h:2?commit=1",
        "tls://C@h:3?ca_file=/ca.crt&commit=1",
        {"ae_title": "D", "host": "h", "port": 4, "commit": True},
    ]
    destinations = load_settings(destinations=forms).destination_list
    assert [d.commit for d in destinations] == [False, True, True, True]
    assert [d.name for d in destinations] == ["A@h:1", "B@h:2", "C@h:3", "D@h:4"]
    assert [Destination.parse(d.spec) for d in destinations] == destinations
    monkeypatch.setenv("MAMMOSEG_DESTINATIONS", "A@h:1?commit=1")
    assert [d.commit for d in load_settings().destination_list] == [True]


# -- certificate-to-AE binding ------------------------------------------------------
def test_caller_names_need_tls_with_client_certificates(pki: Path) -> None:
    names = {"PACS": ["pacs.example.org"]}
    with pytest.raises(SettingsError, match="tls_caller_names needs TLS with client"):
        load_settings(tls_caller_names=names)
    with pytest.raises(SettingsError, match="tls_caller_names needs TLS"):
        load_settings(
            tls_cert_file=pki / "node.crt", tls_key_file=pki / "node.key", tls_caller_names=names
        )  # no tls_ca_file: nothing to verify with
    settings = load_settings(
        tls_cert_file=pki / "node.crt",
        tls_key_file=pki / "node.key",
        tls_ca_file=pki / "ca.crt",
        tls_caller_names={"PACS": "pacs.example.org,PACS.local"},
    )
    tls = tls_config(settings)
    assert tls is not None
    assert tls.caller_names == {"PACS": frozenset({"pacs.example.org", "pacs.local"})}


@pytest.mark.parametrize(
    "names", [{"": ["x"]}, {"WAY-TOO-LONG-AE-TITLE": ["x"]}, {"PACS": []}, {"PACS": [" "]}]
)
def test_bad_caller_names_are_refused(pki: Path, names: dict[str, list[str]]) -> None:
    with pytest.raises(SettingsError, match="tls_caller_names"):
        load_settings(
            tls_cert_file=pki / "node.crt",
            tls_key_file=pki / "node.key",
            tls_ca_file=pki / "ca.crt",
            tls_caller_names=names,
        )


# -- check-config -------------------------------------------------------------------
def check_config(tmp_path: Path, model: Path, *more: str) -> list[str]:
    return [
        "check-config",
        "--data-dir",
        str(tmp_path / "data"),
        "--model-path",
        str(model),
        "--dicom-port",
        str(free_port()),
        "--http-port",
        str(free_port()),
        *more,
    ]


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ("ca_file={tmp}/missing-ca.crt", "CA file {tmp}/missing-ca.crt does not exist"),
        ("ca_file={tmp}/not-a-ca.crt", "CA file {tmp}/not-a-ca.crt cannot be loaded"),
        (
            "ca_file={pki}/ca.crt&cert_file={pki}/node.crt&key_file={tmp}/missing.key",
            "key {tmp}/missing.key does not exist",
        ),
        (
            "ca_file={pki}/ca.crt&cert_file={pki}/node.crt&key_file={pki}/ca.key",
            "certificate {pki}/node.crt with key {pki}/ca.key cannot be loaded",
        ),
    ],
)
def test_check_config_names_a_bad_tls_destination(
    tmp_path: Path,
    tiny_model: Path,
    pki: Path,
    capsys: pytest.CaptureFixture[str],
    options: str,
    problem: str,
) -> None:
    (tmp_path / "not-a-ca.crt").write_text("not a certificate\n")
    spec = f"tls://PACS@127.0.0.1:2762?{options.format(tmp=tmp_path, pki=pki)}"
    code = main(check_config(tmp_path, tiny_model, "--destination", spec))
    out, err = capsys.readouterr()
    print(f"\nexit {code}; {err.strip().splitlines()[-1]}")
    assert code == 2
    assert "destination PACS@127.0.0.1:2762: TLS cannot be set up" in err
    assert problem.format(tmp=tmp_path, pki=pki) in err


def test_check_config_refuses_a_tls_destination_without_ca_file(
    tmp_path: Path, tiny_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "node.toml"
    config.write_text(
        'destinations = [{ ae_title = "PACS", host = "127.0.0.1", port = 2762, tls = true }]\n'
    )
    code = main(check_config(tmp_path, tiny_model, "--config", str(config)))
    err = capsys.readouterr().err
    print(f"\nexit {code}; {err.strip()}")
    assert code == 2 and "tls = true needs ca_file" in err


def test_check_config_passes_a_good_tls_destination_and_warns_about_cleartext(
    tmp_path: Path, tiny_model: Path, pki: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "node.toml"
    config.write_text(
        f'tls_cert_file = "{pki / "node.crt"}"\ntls_key_file = "{pki / "node.key"}"\n'
        'tls_ciphers = "ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-SHA256"\n'
        "destinations = [\n"
        f'  {{ ae_title = "PACS", host = "127.0.0.1", port = 2762, tls = true,'
        f' ca_file = "{pki / "ca.crt"}", cert_file = "{pki / "node.crt"}",'
        f' key_file = "{pki / "node.key"}" }},\n'
        '  "OLDPACS@10.0.0.7:104",\n'
        "]\n"
    )
    code = main(check_config(tmp_path, tiny_model, "--config", str(config)))
    out, err = capsys.readouterr()
    lines = [line for line in out.splitlines() if "destination" in line or "tls_ciphers" in line]
    print("\n" + "\n".join(lines))
    assert code == 0, err
    assert "ok    destination PACS@127.0.0.1:2762: TLS, CA" in out
    assert "tls_ciphers allows ECDHE-RSA-AES128-SHA256: outside the BCP 195" in out
    assert "results go to OLDPACS@10.0.0.7:104 in cleartext" in out
