"""STOW-RS out: a DICOMweb destination that receives results (PS3.18 10.5).

The string form is ``stow+https://HOST[:PORT]/PATH`` or ``stow+http://...``, where
``PATH`` is the DICOMweb base (``/dicom-web``); the instances are POSTed to
``PATH/studies`` as one ``multipart/related; type="application/dicom"`` body.
Options after ``?`` (values literal, no %-decoding):

- ``token_file=FILE``: a bearer token, the file's first line;
- ``basic_file=FILE``: basic auth, the file's first line ``USER:PASSWORD``;
- ``ca_file=FILE``: the CA that signs an https server's certificate (default:
  the system's trust store). Certificates and host names are always verified.

Credentials are read from their file at each send and never logged, nor put in
the destination's name. The URL itself may not carry ``user:password@``.
"""

from __future__ import annotations

import base64
import json
import logging
import ssl
import urllib.error
import urllib.request
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from dicom_node.errors import DicomNodeError

log = logging.getLogger(__name__)

STOW_PREFIXES = ("stow+http://", "stow+https://")
STOW_OPTIONS = ("token_file", "basic_file", "ca_file")
STOW_FORM = "stow+https://HOST[:PORT]/PATH[?token_file=FILE|basic_file=FILE][&ca_file=FILE]"


class StowError(DicomNodeError):
    """The DICOMweb destination could not be reached or did not store every instance.

    The message does not name the destination: the caller does (``f"{destination}: {exc}"``).
    """


@dataclass(frozen=True)
class WebTarget:
    """Where and how STOW-RS sends: the base URL (no credentials) and the auth files."""

    base_url: str
    token_file: Path | None = None
    basic_file: Path | None = None
    ca_file: Path | None = None

    @classmethod
    def parse(cls, text: str) -> WebTarget:
        body = text.strip()
        if not body.lower().startswith(STOW_PREFIXES):
            raise ValueError(f"destination {text!r} is not {STOW_FORM}")
        url, sep, query = body[len("stow+") :].partition("?")
        parts = urlsplit(url)
        if parts.username is not None or parts.password is not None or "@" in parts.netloc:
            raise ValueError(
                f"destination {parts.scheme}://{parts.hostname}: credentials go in "
                "token_file=FILE or basic_file=FILE, never in the URL"
            )
        if not parts.hostname or parts.fragment or parts.query:
            raise ValueError(f"destination {text!r} is not {STOW_FORM}")
        try:
            port = parts.port
        except ValueError as exc:
            raise ValueError(f"destination {text!r}: {exc}") from exc
        if port is not None and not 0 < port < 65536:
            raise ValueError(f"destination {text!r}: port out of range")
        values: dict[str, str] = {}
        for option in query.split("&") if sep else ():
            key, eq, value = option.partition("=")
            if not eq or key not in STOW_OPTIONS or not value:
                raise ValueError(
                    f"destination {text!r}: {option!r} is not one of "
                    f"{', '.join(o + '=FILE' for o in STOW_OPTIONS)}"
                )
            if key in values:
                raise ValueError(f"destination {text!r}: {key} is given twice")
            values[key] = value
        if "token_file" in values and "basic_file" in values:
            raise ValueError(f"destination {text!r}: token_file or basic_file, not both")
        if "ca_file" in values and parts.scheme != "https":
            raise ValueError(f"destination {text!r}: ca_file needs stow+https://")
        return cls(
            base_url=url.rstrip("/"),
            token_file=Path(values["token_file"]) if "token_file" in values else None,
            basic_file=Path(values["basic_file"]) if "basic_file" in values else None,
            ca_file=Path(values["ca_file"]) if "ca_file" in values else None,
        )

    @property
    def name(self) -> str:
        """``stow+URL``: what deliveries are recorded under (no options, no secrets)."""
        return "stow+" + self.base_url

    @property
    def spec(self) -> str:
        options = [
            f"{key}={value}" for key in STOW_OPTIONS if (value := getattr(self, key)) is not None
        ]
        return self.name + ("?" + "&".join(options) if options else "")

    @property
    def host(self) -> str:
        return urlsplit(self.base_url).hostname or ""

    @property
    def port(self) -> int:
        parts = urlsplit(self.base_url)
        return parts.port or (443 if parts.scheme == "https" else 80)

    def authorization(self) -> str | None:
        """The Authorization header's value, read from the file now (None: no auth)."""
        for path, scheme in ((self.token_file, "Bearer"), (self.basic_file, "Basic")):
            if path is None:
                continue
            try:
                lines = path.read_text(encoding="utf-8").splitlines()
            except OSError as exc:
                raise StowError(f"cannot read {path.name}: {exc.strerror}") from exc
            secret = lines[0].strip() if lines else ""
            if not secret or (scheme == "Basic" and ":" not in secret):
                raise StowError(f"{path.name} holds no usable credentials")
            if scheme == "Basic":
                secret = base64.b64encode(secret.encode()).decode("ascii")
            return f"{scheme} {secret}"
        return None

    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.base_url.startswith("https://"):
            return None
        try:
            # Verification on: CERT_REQUIRED and host names checked (the defaults).
            return ssl.create_default_context(
                cafile=str(self.ca_file) if self.ca_file is not None else None
            )
        except (OSError, ssl.SSLError) as exc:
            raise StowError(f"TLS cannot be set up: {exc}") from exc


def multipart_body(files: Sequence[bytes]) -> tuple[bytes, str]:
    """``multipart/related; type="application/dicom"`` (PS3.18 8.6.1.2): body and type."""
    boundary = f"mammoseg-{uuid.uuid4().hex}"
    chunks: list[bytes] = []
    for data in files:
        chunks.append(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode())
        chunks.append(data)
        chunks.append(b"\r\n")
    chunks.append(f"--{boundary}--\r\n".encode())
    content_type = f'multipart/related; type="application/dicom"; boundary={boundary}'
    return b"".join(chunks), content_type


def _failures(body: bytes) -> int:
    """How many instances the response's FailedSOPSequence names (0 if unreadable)."""
    try:
        answer = json.loads(body)
        return len(answer.get("00081198", {}).get("Value", []) or [])
    except (ValueError, AttributeError):
        return 0


def send_stow(target: WebTarget, paths: Sequence[Path], *, timeout_s: float = 30.0) -> None:
    """POST every file in one STOW-RS request; raise :class:`StowError` unless all are stored.

    Stored means 200 with no FailedSOPSequence; 202 (some failed), 409 (none
    stored), any other status or no answer is an error, retried by the caller.
    """
    body, content_type = multipart_body([Path(p).read_bytes() for p in paths])
    headers = {"Content-Type": content_type, "Accept": "application/dicom+json"}
    auth = target.authorization()
    if auth is not None:
        headers["Authorization"] = auth
    request = urllib.request.Request(  # noqa: S310 - the scheme is http(s) by parse()
        target.base_url + "/studies", data=body, headers=headers, method="POST"
    )
    try:
        with urllib.request.urlopen(  # noqa: S310
            request, timeout=timeout_s, context=target.ssl_context()
        ) as response:
            status, answer = response.status, response.read(1 << 20)
    except urllib.error.HTTPError as exc:
        failed = _failures(exc.read(1 << 20))
        detail = f", {failed} instances failed" if failed else ""
        raise StowError(f"STOW-RS answered HTTP {exc.code}{detail}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise StowError(f"STOW-RS: not reached ({reason})") from None
    failed = _failures(answer)
    if status != 200 or failed:
        raise StowError(f"STOW-RS answered HTTP {status}, {failed} instances failed")
    log.info(
        "sent %d instances to %s by STOW-RS",
        len(paths),
        target.name,
        extra={"event": "result_sent"},
    )
