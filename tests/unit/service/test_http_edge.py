"""The HTTP edge (service.http_edge): forwarded clients, Host names, the HTTP settings."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from service.access import PROXIED
from service.cli import main
from service.http_edge import (
    PROXY_PEER,
    UNKNOWN_CLIENT,
    ForwardedMiddleware,
    HeadTimeoutH11,
    forwarded_client,
    host_allowed,
    host_name,
    networks,
    server_config,
)
from service.settings import SettingsError, load_settings
from tests.conftest import free_port

LOCAL_PROXY = networks(["127.0.0.1", "::1"])


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.upper().startswith("MAMMOSEG_"):
            monkeypatch.delenv(name)


@pytest.mark.parametrize(
    ("header", "client"),
    [
        (["198.51.100.9"], "198.51.100.9"),
        # A client that writes its own X-Forwarded-For gets it prepended, not believed.
        (["127.0.0.1, 198.51.100.9"], "198.51.100.9"),
        (["10.9.9.9", "127.0.0.1, 198.51.100.9, 127.0.0.1"], "198.51.100.9"),
        (["198.51.100.9:4711"], "198.51.100.9"),
        (["[2001:db8::7]:443"], "2001:db8::7"),
        (["::ffff:198.51.100.9"], "198.51.100.9"),
        (["unknown"], UNKNOWN_CLIENT),
        (["198.51.100.9, <script>"], UNKNOWN_CLIENT),
        (["127.0.0.1"], "127.0.0.1"),  # every hop trusted: the left-most is the client
        ([], None),
        ([" , "], None),
    ],
)
def test_the_client_is_the_right_most_untrusted_address(
    header: list[str], client: str | None
) -> None:
    assert forwarded_client(header, LOCAL_PROXY) == client


def _run(middleware: ForwardedMiddleware, scope: dict[str, Any]) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.update(scope)

    middleware.app = app
    # In a thread of its own: asyncio.run refuses a thread where an earlier test in the same
    # process left an event loop marked running (seen in the full suite, never alone).
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, middleware(scope, None, None)).result(timeout=10)  # type: ignore[arg-type]
    return seen


def _scope(peer: str, *headers: tuple[bytes, bytes]) -> dict[str, Any]:
    return {"type": "http", "client": (peer, 50000), "scheme": "http", "headers": list(headers)}


def test_forwarded_headers_from_an_untrusted_peer_are_ignored() -> None:
    middleware = ForwardedMiddleware(lambda *a: None, trusted=LOCAL_PROXY)  # type: ignore[arg-type]
    seen = _run(
        middleware,
        _scope("203.0.113.5", (b"x-forwarded-for", b"127.0.0.1"), (b"x-forwarded-proto", b"https")),
    )
    assert seen["client"] == ("203.0.113.5", 50000) and seen["scheme"] == "http"
    assert seen[PROXIED] is True and PROXY_PEER not in seen  # a forwarding header: not local
    plain = _run(middleware, _scope("203.0.113.5"))
    assert plain["client"] == ("203.0.113.5", 50000) and plain[PROXIED] is False


def test_forwarded_headers_from_a_trusted_proxy_are_honoured() -> None:
    middleware = ForwardedMiddleware(lambda *a: None, trusted=LOCAL_PROXY)  # type: ignore[arg-type]
    seen = _run(
        middleware,
        _scope(
            "127.0.0.1",
            (b"x-forwarded-for", b"127.0.0.1, 198.51.100.9"),
            (b"x-forwarded-proto", b"https"),
        ),
    )
    assert seen["client"] == ("198.51.100.9", 0) and seen["scheme"] == "https"
    assert seen[PROXIED] is True and seen[PROXY_PEER] == "127.0.0.1"
    # From the proxy's address but without a header: still proxied, the peer stays.
    bare = _run(middleware, _scope("127.0.0.1"))
    assert bare["client"] == ("127.0.0.1", 50000) and bare[PROXIED] is True
    # A loopback peer that is not a trusted proxy and sends no forwarding header: local.
    nobody = ForwardedMiddleware(lambda *a: None, trusted=())  # type: ignore[arg-type]
    assert _run(nobody, _scope("127.0.0.1"))[PROXIED] is False
    assert _run(nobody, _scope("127.0.0.1", (b"forwarded", b"for=1.2.3.4")))[PROXIED] is True


@pytest.mark.parametrize(
    ("value", "name"),
    [
        ("Localhost:8080", "localhost"),
        ("[::1]:8080", "::1"),
        ("127.0.0.1", "127.0.0.1"),
        ("node.example.org.", "node.example.org"),
    ],
)
def test_host_names(value: str, name: str) -> None:
    assert host_name(value) == name


def test_host_allow_list_matching() -> None:
    allowed = ["localhost", "127.0.0.1", "*.example.org"]
    assert host_allowed("localhost", allowed)
    assert host_allowed("a.example.org", allowed) and host_allowed("a.b.example.org", allowed)
    assert not host_allowed("example.org", allowed)
    assert not host_allowed("example.org.evil.test", allowed)
    assert not host_allowed("evilexample.org", allowed)
    assert host_allowed("anything", ["*"])


def test_allowed_hosts_default_and_http_host() -> None:
    assert load_settings().host_allow_list == ["localhost", "127.0.0.1", "::1"]
    assert load_settings(http_host="192.0.2.10").host_allow_list[-1] == "192.0.2.10"
    assert load_settings(http_host="0.0.0.0").host_allow_list == ["localhost", "127.0.0.1", "::1"]
    explicit = load_settings(allowed_hosts=["Node.Example.org", "[::1]"], http_host="::")
    assert explicit.host_allow_list == ["node.example.org", "::1"]


def test_the_http_settings_from_file_and_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "node.toml"
    config.write_text(
        'trusted_proxies = ["10.0.0.0/8"]\nallowed_hosts = ["mammoseg.example.org"]\n'
        "http_header_timeout_s = 4\nhttp_limit_concurrency = 0\n"
    )
    monkeypatch.setenv("MAMMOSEG_TRUSTED_PROXIES", "127.0.0.1,::1")
    monkeypatch.setenv("MAMMOSEG_HTTP_BODY_IDLE_TIMEOUT_S", "7.5")
    settings = load_settings(config)
    assert settings.trusted_proxies == ["127.0.0.1", "::1"]  # the environment wins
    assert settings.allowed_hosts == ["mammoseg.example.org"]
    assert settings.http_header_timeout_s == 4 and settings.http_body_idle_timeout_s == 7.5
    uv = server_config(object(), settings)
    assert uv.limit_concurrency is None and uv.proxy_headers is False
    assert isinstance(uv.http, type) and issubclass(uv.http, HeadTimeoutH11)
    assert uv.http.head_timeout_s == 4
    defaults = server_config(object(), load_settings())
    assert (defaults.timeout_keep_alive, defaults.h11_max_incomplete_event_size) == (5, 16384)
    assert (defaults.limit_concurrency, defaults.backlog) == (1000, 2048)
    assert defaults.timeout_graceful_shutdown == 10


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("trusted_proxies", ["10.0.0.0/33"], "not an IP address or CIDR"),
        ("trusted_proxies", ["*"], "not an IP address or CIDR"),
        ("allowed_hosts", ["mammoseg.example.org:443"], "leave out scheme and port"),
        ("allowed_hosts", ["https://mammoseg.example.org"], "leave out scheme and port"),
        ("http_header_timeout_s", 0, "greater than 0"),
        ("http_body_idle_timeout_s", -1, "greater than 0"),
        ("http_max_header_bytes", 100, "greater than or equal to 1024"),
        ("http_limit_concurrency", -1, "greater than or equal to 0"),
        ("http_keep_alive_timeout_s", 0, "greater than or equal to 1"),
    ],
)
def test_bad_http_settings_are_refused(setting: str, value: Any, message: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(**{setting: value})
    assert setting in str(caught.value) and message in str(caught.value)


def test_settings_that_contradict_each_other_are_refused() -> None:
    with pytest.raises(SettingsError, match="at least http_body_idle_timeout_s"):
        load_settings(http_body_idle_timeout_s=60, http_body_total_timeout_s=30)
    with pytest.raises(SettingsError, match="every request would be refused"):
        load_settings(allowed_hosts=[], http_host="0.0.0.0")


def test_check_config_shows_the_http_settings_and_exits_2_on_a_bad_one(
    tmp_path: Path,
    tiny_model: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = [
        "check-config",
        "--data-dir",
        str(tmp_path / "data"),
        "--model-path",
        str(tiny_model),
        "--dicom-port",
        str(free_port()),
        "--http-port",
        str(free_port()),
    ]
    monkeypatch.setenv("MAMMOSEG_TRUSTED_PROXIES", "10.1.2.3")
    assert main(args) == 0
    out, _ = capsys.readouterr()
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.strip()}
    assert rows["trusted_proxies"] == ["env", "10.1.2.3"]
    assert rows["allowed_hosts"] == ["default", "localhost,", "127.0.0.1,", "::1"]
    for name in ("http_header_timeout_s", "http_body_idle_timeout_s", "http_limit_concurrency"):
        assert rows[name][0] == "default", name
    assert "trusted_proxies" not in out.partition("warnings:")[2]

    monkeypatch.setenv("MAMMOSEG_TRUSTED_PROXIES", "::1,127.0.0.1")
    monkeypatch.setenv("MAMMOSEG_ALLOWED_HOSTS", "*")
    assert main(args) == 0  # warnings only
    warnings = capsys.readouterr().out.partition("warnings:")[2]
    assert "trusted_proxies ::1, 127.0.0.1 with read_access 'loopback'" in warnings
    assert "allowed_hosts '*'" in warnings

    monkeypatch.setenv("MAMMOSEG_TRUSTED_PROXIES", "proxy.example.org")
    monkeypatch.setenv("MAMMOSEG_ALLOWED_HOSTS", "a.example.org:8443")
    assert main(args) == 2
    _, err = capsys.readouterr()
    assert "trusted_proxies" in err and "allowed_hosts" in err
