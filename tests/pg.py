"""A throwaway PostgreSQL server on loopback for tests (Debian package postgresql).

initdb refuses to run as root, so as root the cluster belongs to the
``postgres`` system user that the Debian package creates.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import free_port


def pg_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        pytest.skip(
            "PostgreSQL server is not installed (Debian package postgresql; "
            "scripts/test installs it as root)"
        )
    return Path(found[-1]).parent


def _as_owner(command: list[str]) -> list[str]:
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *command]
    return command


@contextmanager
def postgres() -> Iterator[str]:
    """Start a cluster in a fresh temp folder; yield its URL; stop and remove it afterwards.

    The folder is outside pytest's (root-only) tmp tree, so that the postgres
    user can reach it.
    """
    bindir = pg_bin()
    tmp = Path(tempfile.mkdtemp(prefix="mammoseg-pg-"))
    data = tmp / "pgdata"
    sockets = tmp / "pgsock"
    for folder in (data, sockets):
        folder.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(folder, "postgres", "postgres")
    if os.geteuid() == 0:
        shutil.chown(tmp, "postgres", "postgres")
    port = free_port()
    subprocess.run(
        _as_owner(
            [str(bindir / "initdb"), "-D", str(data), "-U", "mammoseg", "-A", "trust", "--no-sync"]
        ),
        check=True,
        capture_output=True,
    )
    log = tmp / "postgres.log"
    subprocess.run(
        _as_owner(
            [
                str(bindir / "pg_ctl"),
                "-D",
                str(data),
                "-l",
                str(log),
                "-w",
                "-t",
                "60",
                "-o",
                f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1 -c fsync=off "
                "-c max_connections=100",
                "start",
            ]
        ),
        check=True,
        capture_output=True,
    )
    try:
        subprocess.run(
            _as_owner(
                [
                    str(bindir / "createdb"),
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(port),
                    "-U",
                    "mammoseg",
                    "mammoseg",
                ]
            ),
            check=True,
            capture_output=True,
        )
        yield f"postgresql://mammoseg@127.0.0.1:{port}/mammoseg"
    finally:
        subprocess.run(
            _as_owner([str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]),
            check=False,
            capture_output=True,
        )
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    with postgres() as url:
        yield url
