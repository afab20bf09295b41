"""``mammoseg check-config``: the settings ``serve`` would run with, and whether they can work.

In the manner of ``nginx -t``: it reads the config file, the ``MAMMOSEG_*``
environment and the flags exactly as ``serve`` does (``service.settings``),
prints every effective setting with where it came from (default, file, env,
flag) and secrets masked, then tries what start-up needs: the model (loaded
and checked against its contract), the job store, the data directory and the
two ports. Nothing is changed: the store is opened read-only (SQLite) or with
``SELECT 1`` (PostgreSQL), no file is left in the data directory and each port
is bound and released at once.

Exit status: 0 when nothing stops ``serve``; 2 with the list of problems.
Warnings (a loopback-only DICOM address, no admin token...) do not change it.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import shutil
import socket
import sqlite3
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from pydantic import SecretStr

from dicom_node.tls import TlsSetupError, outside_profile, tls_context
from service.settings import (
    DEFAULT_UID_ROOT,
    SECRET_SETTINGS,
    Settings,
    SettingsError,
    config_file_from,
    load_settings,
    read_config_file,
    setting_sources,
)

EXIT_OK = 0
EXIT_PROBLEMS = 2
MASK = "********"
# MAMMOSEG_* variables that are not settings but are read on purpose.
NOT_SETTINGS = frozenset({"MAMMOSEG_CONFIG", "MAMMOSEG_TEST_ABORT_ON_UID"})


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    detail: str


@dataclass
class Report:
    """What check-config found: the effective settings, the checks, problems and warnings."""

    config_file: Path | None = None
    config_source: str = "none"
    settings: Settings | None = None
    sources: dict[str, str] = field(default_factory=dict)
    checks: list[CheckResult] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def add(self, name: str, ok: bool, detail: str) -> None:
        self.checks.append(CheckResult(name, ok, detail))
        if not ok:
            self.problems.append(f"{name}: {detail}")

    @property
    def exit_code(self) -> int:
        return EXIT_OK if not self.problems else EXIT_PROBLEMS


def shown_value(name: str, value: Any) -> str:
    """A setting's value as printed: secrets masked, a database URL without its password."""
    if value is None:
        return "(none)"
    if isinstance(value, SecretStr):
        return MASK
    if name == "database_url":
        from service.db import Database

        return Database(str(value)).display
    if name in SECRET_SETTINGS:
        return MASK
    if isinstance(value, list):
        return ", ".join(str(v) for v in value) or "(none)"
    if isinstance(value, dict):
        shown = "; ".join(f"{k}: {shown_value(k, v)}" for k, v in value.items())
        return shown or "(none)"
    return str(value)


def check_model(settings: Settings, report: Report) -> None:
    from service.contract import ContractError
    from service.inference import load_segmenter

    try:
        segmenter = load_segmenter(settings.model_path, threads=settings.inference_threads)
    except (ContractError, OSError) as exc:
        report.add("model", False, str(exc))
        return
    contract = segmenter.contract
    report.add(
        "model",
        True,
        f"{contract.model_name} {contract.model_version} ({settings.model_path}, "
        f"sha256 {segmenter.sha256[:12]})",
    )


def _nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_data_dir(settings: Settings, report: Report) -> None:
    """Writable now (a temporary file is made and removed), or creatable by this user."""
    data_dir = settings.data_dir
    if data_dir.exists() and not data_dir.is_dir():
        report.add("data_dir", False, f"{data_dir} exists and is not a directory")
        return
    if not data_dir.exists():
        parent = _nearest_existing(data_dir)
        if parent.is_dir() and os.access(parent, os.W_OK | os.X_OK):
            report.add("data_dir", True, f"{data_dir} does not exist; serve will create it")
        else:
            report.add("data_dir", False, f"{data_dir} does not exist and {parent} is not writable")
        return
    try:
        with tempfile.NamedTemporaryFile(dir=data_dir, prefix=".check-config-"):
            pass
    except OSError as exc:
        report.add("data_dir", False, f"{data_dir} is not writable: {exc.strerror or exc}")
        return
    free_mb = shutil.disk_usage(data_dir).free >> 20
    report.add("data_dir", True, f"{data_dir} writable, {free_mb} MB free")
    if free_mb < settings.min_free_mb:
        report.warnings.append(
            f"data_dir has {free_mb} MB free, below min_free_mb = {settings.min_free_mb}: "
            "C-STORE will answer 0xA700 (out of resources) and /readyz will say not ready"
        )


def _check_sqlite(path: Path, report: Report) -> None:
    if not path.exists():
        report.add("store", True, f"SQLite {path} does not exist yet; serve will create it")
        return
    try:
        conn = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True, timeout=5.0)
        try:
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        report.add("store", False, f"SQLite {path} cannot be read: {exc}")
        return
    if not os.access(path, os.W_OK):
        report.add("store", False, f"SQLite {path} is not writable by this user")
        return
    report.add("store", True, f"SQLite {path} readable and writable")


def _check_postgres(url: str, report: Report) -> None:
    from service.db import Database, DatabaseError, Pool

    database = Database(url)
    try:
        pool = Pool(database, size=1, overflow=0)
        with pool.read() as conn:
            conn.execute("SELECT 1")
    except DatabaseError as exc:
        report.add("store", False, str(exc))
        return
    try:
        with pool.read() as conn:
            row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
        schema = f"schema at revision {row[0]}" if row else "no schema revision yet"
    except DatabaseError:  # an empty database has no alembic_version table yet
        schema = "empty database; serve will create the schema"
    finally:
        pool.dispose()
    report.add("store", True, f"PostgreSQL {database.display} answers; {schema}")


def check_store(settings: Settings, report: Report) -> None:
    url = settings.database_url
    if url is None:
        _check_sqlite(settings.database_path, report)
    elif url.startswith("sqlite:"):
        _check_sqlite(Path(url.removeprefix("sqlite:///")), report)
    else:
        _check_postgres(url, report)


def check_port(name: str, host: str, port: int, report: Report) -> None:
    """Bind and release at once, with SO_REUSEADDR as both servers set it."""
    if port == 0:
        report.add(name, True, f"{host}:0 (a free port is picked at start-up)")
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        report.add(name, False, f"{host} does not resolve: {exc}")
        return
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            hint = {
                errno.EADDRINUSE: " (in use: is mammoseg or another server already running?)",
                errno.EACCES: " (ports below 1024 need root or CAP_NET_BIND_SERVICE)",
                errno.EADDRNOTAVAIL: " (no interface of this host has that address)",
            }.get(exc.errno or 0, "")
            report.add(name, False, f"cannot bind {host}:{port}: {exc.strerror or exc}{hint}")
            return
    report.add(name, True, f"{host}:{port} can be bound")


def check_tls(settings: Settings, report: Report) -> None:
    """The SCP's TLS context, built as serve builds it (dicom_node.tls)."""
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return
    try:
        tls_context(
            server=True,
            cert_file=settings.tls_cert_file,
            key_file=settings.tls_key_file,
            ca_file=settings.tls_ca_file,
            ciphers=settings.tls_ciphers,
            require_peer_cert=settings.tls_require_client_cert,
        )
    except TlsSetupError as exc:
        report.add("tls", False, f"the SCP's TLS cannot be set up: {exc}")
        return
    report.add("tls", True, f"certificate {settings.tls_cert_file} and its key load")


def check_destinations(settings: Settings, report: Report) -> None:
    """Each TLS destination's CA file, client certificate and key load (nothing is sent)."""
    for destination in settings.destination_list:
        tls = destination.tls
        if tls is None:
            continue
        name = f"destination {destination}"
        try:
            tls.client_context()
        except TlsSetupError as exc:
            report.add(name, False, f"TLS cannot be set up: {exc}")
            continue
        client = f", client certificate {tls.cert_file}" if tls.cert_file else ""
        checked = tls.server_name or destination.host
        report.add(name, True, f"TLS, CA {tls.ca_file}{client}, server name {checked} checked")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def advise(settings: Settings, report: Report, *, worker: bool) -> None:
    """Settings that start but are probably not what a production site wants."""
    if not worker and _is_loopback(settings.dicom_host):
        report.warnings.append(
            f"dicom_host {settings.dicom_host} is loopback: a PACS on another host cannot "
            "reach the node (--dicom-host 0.0.0.0 or the address of one interface)"
        )
    if not settings.destinations:
        report.warnings.append("no destinations: results stay in the outbox (data_dir/outbox)")
    if settings.test_fault_injection:
        report.warnings.append(
            "test_fault_injection is on: MAMMOSEG_TEST_ABORT_ON_UID crashes the workers "
            "(tests only, never in production)"
        )
    if not worker and settings.worker_processes == 0:
        report.warnings.append(
            "worker_processes 0: images are decoded in the serve process, so a decoder "
            "crash takes down the SCP and HTTP too"
        )
    if settings.admin_token is None:
        report.warnings.append("no admin_token: retry, reprocess and C-ECHO are refused (403)")
    outside = outside_profile(settings.tls_ciphers)
    if outside:
        report.warnings.append(
            f"tls_ciphers allows {', '.join(outside)}: outside the BCP 195 non-downgrading "
            "profile (ECDHE with AES-GCM or ChaCha20-Poly1305)"
        )
    if settings.tls_cert_file is not None:
        plain = [
            str(d)
            for d in settings.destination_list
            if d.tls is None
            and not (d.web and d.web.base_url.startswith("https://"))
            and not _is_loopback(d.host)
        ]
        if plain:
            report.warnings.append(
                f"the SCP requires TLS but results go to {', '.join(plain)} in cleartext "
                "(tls://AET@HOST:PORT?ca_file=FILE, deploy/README.md)"
            )
    shut_out = [
        d.ae_title
        for d in settings.destination_list
        if d.commit and settings.allowed_callers and d.ae_title not in settings.allowed_callers
    ]
    if shut_out:
        report.warnings.append(
            f"storage commitment from {', '.join(shut_out)}: not in allowed_callers, so a "
            "report on a new association is rejected and the job times out (add the AE title)"
        )
    if settings.uid_root == DEFAULT_UID_ROOT:
        report.warnings.append("uid_root is the example root: set your organisation's")
    if not worker and not settings.retention_days:
        report.warnings.append(
            "retention_days = 0: received images and results are kept forever; the disk "
            "fills up and then C-STORE answers 0xA700"
        )
    if not worker and not _is_loopback(settings.http_host) and settings.read_access == "open":
        report.warnings.append(
            f"http_host {settings.http_host} with read_access 'open': anyone on the network "
            "can read the job list"
        )
    if not worker:
        advise_http(settings, report)


def _covers_loopback(value: str) -> bool:
    network = ipaddress.ip_network(value, strict=False)
    if isinstance(network, ipaddress.IPv4Network):
        return network.overlaps(ipaddress.IPv4Network("127.0.0.0/8"))
    return ipaddress.IPv6Address("::1") in network


def advise_http(settings: Settings, report: Report) -> None:
    """The HTTP edge (service/http_edge.py): proxies, Host names, the open-file limit."""
    import resource

    local_proxies = [value for value in settings.trusted_proxies if _covers_loopback(value)]
    if local_proxies and settings.read_access == "loopback":
        report.warnings.append(
            f"trusted_proxies {', '.join(local_proxies)} with read_access 'loopback': requests "
            "from a trusted proxy are never loopback reads, so on this host too every read "
            "needs a token (read_access 'token' says so)"
        )
    if "*" in settings.allowed_hosts:
        report.warnings.append(
            "allowed_hosts '*': any Host header is served, so a page re-bound to this "
            "address by DNS can read the node through a browser"
        )
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = settings.http_limit_concurrency
    if soft != resource.RLIM_INFINITY and (wanted == 0 or wanted + 64 > soft):
        report.warnings.append(
            f"the open-file limit ({soft}) is below http_limit_concurrency "
            f"({wanted or 'none'}) plus room for files and DICOM: connections past it fail at "
            "accept (raise LimitNOFILE or ulimit -n, or lower http_limit_concurrency)"
        )


def unknown_environment(environ: Mapping[str, str]) -> list[str]:
    """MAMMOSEG_* variables that name no setting: serve ignores them silently (a typo?)."""
    known = {f"MAMMOSEG_{name.upper()}" for name in Settings.model_fields} | NOT_SETTINGS
    return sorted(
        name
        for name in environ
        if name.upper().startswith("MAMMOSEG_") and name.upper() not in known
    )


def check(
    config_flag: Path | None,
    overrides: Mapping[str, Any],
    environ: Mapping[str, str],
    *,
    worker: bool = False,
) -> Report:
    """Everything check-config prints, without printing it."""
    report = Report()
    report.config_file = config_file_from(config_flag, environ)
    if report.config_file is not None:
        report.config_source = "flag" if config_flag is not None else "env"
    for name in unknown_environment(environ):
        report.warnings.append(f"{name} is not a setting; serve ignores it")
    explicit = {k: v for k, v in overrides.items() if v is not None}
    try:
        file_values = read_config_file(report.config_file) if report.config_file else {}
        report.settings = load_settings(report.config_file, **explicit)
    except SettingsError as exc:
        report.problems.extend(exc.problems)
        return report
    settings = report.settings
    report.sources = setting_sources(file_values, explicit, environ)
    check_model(settings, report)
    check_store(settings, report)
    check_data_dir(settings, report)
    check_tls(settings, report)
    check_destinations(settings, report)
    if not worker:
        check_port("dicom_port", settings.dicom_host, settings.dicom_port, report)
        check_port("http_port", settings.http_host, settings.http_port, report)
        if (settings.dicom_host, settings.dicom_port) == (settings.http_host, settings.http_port):
            report.add("ports", False, "dicom_port and http_port are the same address and port")
    advise(settings, report, worker=worker)
    return report


def print_report(report: Report, out: TextIO, err: TextIO) -> None:
    """The settings table and checks on ``out``; the problems (if any) also on ``err``."""
    if report.config_file is None:
        out.write("config file: none (--config or MAMMOSEG_CONFIG)\n")
    else:
        out.write(f"config file: {report.config_file} (from {report.config_source})\n")
    if report.settings is not None:
        width = max(len(name) for name in Settings.model_fields)
        out.write(f"\n{'setting':<{width}}  {'source':<7}  value\n")
        for name in Settings.model_fields:
            value = shown_value(name, getattr(report.settings, name))
            out.write(f"{name:<{width}}  {report.sources[name]:<7}  {value}\n")
        out.write("\nchecks:\n")
        for result in report.checks:
            out.write(f"  {'ok' if result.ok else 'FAIL':<4}  {result.name}: {result.detail}\n")
    if report.warnings:
        out.write("\nwarnings:\n")
        out.writelines(f"  - {warning}\n" for warning in report.warnings)
    if report.problems:
        err.write(f"\nmammoseg check-config: {len(report.problems)} problem(s):\n")
        err.writelines(f"  - {problem}\n" for problem in report.problems)
    else:
        out.write("\nconfiguration OK: serve can start with these settings\n")
