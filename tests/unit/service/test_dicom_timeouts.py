"""The DICOM timeouts are settings and reach the socket guard and pynetdicom's AE."""

from __future__ import annotations

from pathlib import Path

import pytest

from dicom_node.scp import StorageSCP
from service.node import scp_config
from service.settings import SettingsError, load_settings


def test_timeouts_from_the_environment_reach_the_guard_and_the_ae(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAMMOSEG_DICOM_REQUEST_TIMEOUT_S", "2.5")
    monkeypatch.setenv("MAMMOSEG_DICOM_ACSE_TIMEOUT_S", "7")
    monkeypatch.setenv("MAMMOSEG_DICOM_DIMSE_TIMEOUT_S", "45")
    monkeypatch.setenv("MAMMOSEG_DICOM_NETWORK_TIMEOUT_S", "90")
    monkeypatch.setenv("MAMMOSEG_DICOM_TLS_HANDSHAKE_TIMEOUT_S", "3")
    settings = load_settings(None, data_dir=tmp_path, min_free_mb=0)
    scp = StorageSCP(scp_config(settings), lambda instance: None)
    limits = scp.connection_limits()
    assert (limits.request_timeout_s, limits.request_complete_timeout_s) == (2.5, 7.0)
    assert (limits.network_timeout_s, limits.tls_handshake_timeout_s) == (90.0, 3.0)
    ae = scp._make_ae()
    assert (ae.acse_timeout, ae.dimse_timeout, ae.network_timeout) == (7.0, 45.0, 90.0)


def test_defaults_are_those_docs_security_lists(tmp_path: Path) -> None:
    cfg = scp_config(load_settings(None, data_dir=tmp_path, min_free_mb=0))
    assert (cfg.request_timeout_s, cfg.acse_timeout_s, cfg.tls_handshake_timeout_s) == (5, 10, 5)
    assert (cfg.dimse_timeout_s, cfg.network_timeout_s) == (60, 60)


@pytest.mark.parametrize("value", [0, -1, 100000])
def test_a_timeout_out_of_range_is_refused(tmp_path: Path, value: float) -> None:
    with pytest.raises(SettingsError, match="dicom_acse_timeout_s"):
        load_settings(None, data_dir=tmp_path, dicom_acse_timeout_s=value)
