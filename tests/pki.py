"""Throwaway certificates for the TLS tests, made with the openssl CLI in a test's folder.

``new_ca(d, "ca")`` writes ``ca.crt``/``ca.key``; ``new_cert(d, "server", cn=..., san=...)``
writes ``server.crt``/``server.key`` signed by it. RSA 2048, valid for two days.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI not found")


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def new_ca(d: Path, name: str = "ca", *, cn: str = "mammoseg test CA") -> Path:
    """A self-signed CA: ``d/NAME.crt`` (returned) and ``d/NAME.key``."""
    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        f"{name}.key",
        "-out",
        f"{name}.crt",
        "-days",
        "2",
        "-subj",
        f"/CN={cn}",
        cwd=d,
    )
    return d / f"{name}.crt"


def new_cert(
    d: Path, name: str, *, cn: str, san: str | None = "IP:127.0.0.1", ca: str = "ca"
) -> Path:
    """``d/NAME.crt`` (returned) and ``d/NAME.key``, subject CN ``cn``, signed by ``ca``.

    ``san``: the subjectAltName extension as openssl writes it (``DNS:a,IP:127.0.0.1``);
    None for none.
    """
    openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        f"{name}.key",
        "-out",
        f"{name}.csr",
        "-subj",
        f"/CN={cn}",
        cwd=d,
    )
    (d / f"{name}.ext").write_text(f"subjectAltName={san}\n" if san else "")
    openssl(
        "x509",
        "-req",
        "-in",
        f"{name}.csr",
        "-CA",
        f"{ca}.crt",
        "-CAkey",
        f"{ca}.key",
        "-CAcreateserial",
        "-out",
        f"{name}.crt",
        "-days",
        "2",
        "-extfile",
        f"{name}.ext",
        cwd=d,
    )
    return d / f"{name}.crt"
