"""The storage SCU: sends result files to a destination with C-STORE (PS3.4 B, PS3.7 9.1.1)."""

from __future__ import annotations

import logging
import re
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

from pydicom import Dataset, dcmread
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification

from dicom_node.errors import DicomNodeError
from dicom_node.status import Status, describe
from dicom_node.stow import STOW_FORM, STOW_PREFIXES, StowError, WebTarget, send_stow
from dicom_node.tls import (
    DEFAULT_TLS_CIPHERS,
    ClientContext,
    TlsSetupError,
    describe_tls_error,
    tls_context,
)
from dicom_node.transport import low_latency_on_open

log = logging.getLogger(__name__)

_DESTINATION = re.compile(r"^(?P<ae>[^@\\]{1,16})@(?P<host>[^:@?]+):(?P<port>\d{1,5})$")
TLS_PREFIX = "tls://"
#: The options of a TLS destination, in the string form's order.
TLS_OPTIONS = ("ca_file", "cert_file", "key_file", "server_name")
#: The option that asks a DIMSE destination for Storage Commitment (dicom_node/commitment.py).
COMMIT_OPTION = "commit=1"
DESTINATION_FORMS = (
    "AET@HOST:PORT[?commit=1], or for TLS tls://AET@HOST:PORT?ca_file=FILE"
    "[&cert_file=FILE&key_file=FILE][&server_name=NAME][&commit=1], or for DICOMweb "
    f"{STOW_FORM}"
)


class SendError(DicomNodeError):
    """A destination could not be reached or refused an instance.

    The message says what went wrong, not which destination: the caller adds it.
    """


@dataclass(frozen=True)
class DestinationTls:
    """How the SCU speaks TLS to one destination (PS3.15 B.1, the profile of dicom_node.tls).

    The server's certificate must chain to ``ca_file`` (the only trust anchor) and
    name ``server_name``, or the destination's host (a DNS or IP subjectAltName)
    when that is not set. ``cert_file``/``key_file``: the node's client certificate.
    """

    ca_file: Path
    cert_file: Path | None = None
    key_file: Path | None = None
    server_name: str | None = None
    ciphers: str = DEFAULT_TLS_CIPHERS

    def __post_init__(self) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        if self.server_name is not None and not self.server_name.strip():
            raise ValueError("server_name is empty")

    def client_context(self) -> ClientContext:
        """The client context; raises :class:`~dicom_node.tls.TlsSetupError` on bad files."""
        return cast(
            ClientContext,
            tls_context(
                server=False,
                cert_file=self.cert_file,
                key_file=self.key_file,
                ca_file=self.ca_file,
                ciphers=self.ciphers,
            ),
        )


def _commit_option(query: str, text: str) -> tuple[str, bool]:
    """The query without ``commit=1`` (and whether it was there); ``commit=`` else refused."""
    parts = query.split("&") if query else []
    commits = [p for p in parts if p.partition("=")[0] == "commit"]
    if any(p != COMMIT_OPTION for p in commits) or len(commits) > 1:
        raise ValueError(f"destination {text!r}: the commitment option is written {COMMIT_OPTION}")
    return "&".join(p for p in parts if p not in commits), bool(commits)


def _tls_options(query: str, text: str) -> DestinationTls:
    """``ca_file=...&cert_file=...``: values are taken literally (no %-decoding)."""
    values: dict[str, str] = {}
    for part in query.split("&"):
        key, sep, value = part.partition("=")
        if not sep or key not in TLS_OPTIONS or not value:
            raise ValueError(
                f"destination {text!r}: {part!r} is not one of "
                f"{', '.join(o + '=VALUE' for o in TLS_OPTIONS)}"
            )
        if key in values:
            raise ValueError(f"destination {text!r}: {key} is given twice")
        values[key] = value
    if "ca_file" not in values:
        raise ValueError(f"destination {text!r}: a TLS destination needs ca_file=FILE")
    try:
        return DestinationTls(
            ca_file=Path(values["ca_file"]),
            cert_file=Path(values["cert_file"]) if "cert_file" in values else None,
            key_file=Path(values["key_file"]) if "key_file" in values else None,
            server_name=values.get("server_name"),
        )
    except ValueError as exc:
        raise ValueError(f"destination {text!r}: {exc}") from exc


@dataclass(frozen=True)
class Destination:
    """A peer that receives results: ``AET@HOST:PORT``, optionally over TLS, or DICOMweb.

    A DICOMweb destination (``web``, dicom_node/stow.py) has no AE title; its host
    and port are the URL's. ``commit``: after the results are stored, ask the
    destination to commit them (Storage Commitment Push Model, PS3.4 J); a DIMSE
    destination only.
    """

    ae_title: str
    host: str
    port: int
    tls: DestinationTls | None = None
    web: WebTarget | None = None
    commit: bool = False

    @classmethod
    def parse(cls, text: str, *, ciphers: str | None = None) -> Destination:
        """``AET@HOST:PORT`` or ``tls://AET@HOST:PORT?ca_file=...`` (:data:`DESTINATION_FORMS`).

        ``ciphers``: the TLS 1.2 cipher list of a TLS destination (the ``tls_ciphers``
        setting); default the profile's.
        """
        body = text.strip()
        if body.lower().startswith(STOW_PREFIXES):
            web = WebTarget.parse(body)
            return cls(ae_title="", host=web.host, port=web.port, web=web)
        tls: DestinationTls | None = None
        is_tls = body[: len(TLS_PREFIX)].lower() == TLS_PREFIX
        if is_tls:
            body = body[len(TLS_PREFIX) :]
        body, sep, query = body.partition("?")
        query, commit = _commit_option(query, text)
        if sep and not query and not commit:
            raise ValueError(f"destination {text!r}: nothing after '?'")
        if sep and not is_tls and query:
            raise ValueError(
                f"destination {text!r}: options after '?' other than {COMMIT_OPTION} "
                "need the tls:// form"
            )
        if is_tls:
            tls = _tls_options(query, text) if query else None
            if tls is None:
                raise ValueError(f"destination {text!r}: a TLS destination needs ?ca_file=FILE")
            if ciphers is not None:
                tls = replace(tls, ciphers=ciphers)
        match = _DESTINATION.fullmatch(body)
        if not match or not 0 < int(match["port"]) < 65536 or not match["ae"].strip():
            raise ValueError(f"destination {text!r} is not {DESTINATION_FORMS}")
        return cls(
            ae_title=match["ae"].strip(),
            host=match["host"],
            port=int(match["port"]),
            tls=tls,
            commit=commit,
        )

    @classmethod
    def from_table(cls, table: Mapping[str, Any]) -> Destination:
        """The config file's table form: ``{ae_title, host, port, tls, ca_file, ..., commit}``."""
        known = {"ae_title", "host", "port", "tls", "commit", *TLS_OPTIONS}
        unknown = sorted(set(table) - known)
        if unknown:
            raise ValueError(
                f"destination table: unknown key(s) {', '.join(unknown)} "
                f"(known: {', '.join(sorted(known))})"
            )
        missing = [key for key in ("ae_title", "host", "port") if key not in table]
        if missing:
            raise ValueError(f"destination table: {', '.join(missing)} missing")
        tls = table.get("tls", False)
        if not isinstance(tls, bool):
            raise ValueError("destination table: tls must be true or false")
        options = {key: table[key] for key in TLS_OPTIONS if key in table}
        if options and not tls:
            raise ValueError(f"destination table: {', '.join(options)} given without tls = true")
        for key, value in options.items():
            if not isinstance(value, str) or not value or "&" in value or "?" in value:
                raise ValueError(
                    f"destination table: {key} must be a non-empty path or name without '&' or '?'"
                )
        commit = table.get("commit", False)
        if not isinstance(commit, bool):
            raise ValueError("destination table: commit must be true or false")
        port = table["port"]
        if isinstance(port, bool) or not isinstance(port, int | str):
            raise ValueError("destination table: port must be a number")
        base = f"{table['ae_title']}@{table['host']}:{port}"
        query = [f"{k}={v}" for k, v in options.items()] + ([COMMIT_OPTION] if commit else [])
        if not tls:
            return cls.parse(base + ("?" + "&".join(query) if query else ""))
        if "ca_file" not in options:
            raise ValueError(f"destination {base}: tls = true needs ca_file")
        return cls.parse(TLS_PREFIX + base + "?" + "&".join(query))

    @property
    def name(self) -> str:
        """``AET@HOST:PORT``: what deliveries are recorded under, TLS or not (DICOMweb: the URL)."""
        if self.web is not None:
            return self.web.name
        return f"{self.ae_title}@{self.host}:{self.port}"

    @property
    def spec(self) -> str:
        """The string form :meth:`parse` reads back (with the TLS or DICOMweb options)."""
        if self.web is not None:
            return self.web.spec
        commit = [COMMIT_OPTION] if self.commit else []
        if self.tls is None:
            return self.name + ("?" + COMMIT_OPTION if self.commit else "")
        options = [
            f"{key}={value}" for key in TLS_OPTIONS if (value := getattr(self.tls, key)) is not None
        ]
        return f"{TLS_PREFIX}{self.name}?{'&'.join(options + commit)}"

    def __str__(self) -> str:
        return self.name


def _connect_failure(destination: Destination, assoc: Any, context: ClientContext | None) -> str:
    if assoc.is_rejected:
        return "rejected"
    failure = context.failure if context is not None else None
    if failure is not None:
        return f"TLS: {describe_tls_error(failure)}"
    return "no answer"


def association(
    destination: Destination,
    calling_ae: str,
    contexts: set[tuple[str, str]],
    timeout_s: float,
    *,
    handlers: list[tuple[Any, Any]] | None = None,
):  # type: ignore[no-untyped-def]
    """An established association to ``destination`` offering ``contexts``; else SendError.

    ``handlers``: pynetdicom event handlers bound to it (dicom_node/commitment.py
    listens for an N-EVENT-REPORT on it).
    """
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    ae.connection_timeout = min(timeout_s, 10.0)
    uncompressed = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
    # A compressed syntax gets a context of its own (an SCP picks one syntax per
    # context, and would pick the uncompressed one if offered together), plus one
    # uncompressed context per SOP class as the fallback (PS3.5 10.1).
    for sop_class, syntax in sorted(contexts):
        if syntax not in uncompressed:
            ae.add_requested_context(sop_class, [syntax])
    for sop_class in sorted({sop_class for sop_class, _ in contexts}):
        ae.add_requested_context(sop_class, uncompressed)
    context: ClientContext | None = None
    tls_args = None
    if destination.tls is not None:
        try:
            context = destination.tls.client_context()
        except TlsSetupError as exc:
            raise SendError(f"TLS cannot be set up: {exc}") from exc
        tls_args = (context, destination.tls.server_name or destination.host)
    assoc = ae.associate(
        destination.host,
        destination.port,
        ae_title=destination.ae_title,
        tls_args=tls_args,
        evt_handlers=[(evt.EVT_CONN_OPEN, low_latency_on_open), *(handlers or [])],
    )
    if not assoc.is_established:
        raise SendError(
            f"association not established ({_connect_failure(destination, assoc, context)})"
        )
    if context is not None:
        sock = getattr(assoc.dul.socket, "socket", None)
        if isinstance(sock, ssl.SSLSocket):
            cipher = sock.cipher()
            log.info(
                "association with %s over %s (%s)",
                destination,
                sock.version(),
                cipher[0] if cipher else "?",
                extra={"event": "tls_established"},
            )
    return assoc


def _fit_to_context(assoc: Any, ds: Dataset) -> None:
    """Decompress ``ds`` when the peer accepted its SOP class only uncompressed."""
    syntax = ds.file_meta.TransferSyntaxUID
    accepted = {
        cx.transfer_syntax[0]
        for cx in assoc.accepted_contexts
        if cx.abstract_syntax == ds.SOPClassUID
    }
    if syntax in accepted or not syntax.is_compressed or not accepted:
        return
    try:
        # Same instance, other encoding: keep the SOP Instance UID (PS3.5 10.1).
        ds.decompress(generate_instance_uid=False)
    except Exception as exc:  # decoder errors of any kind: the send fails with the reason
        raise SendError(
            f"cannot decompress {ds.SOPInstanceUID} for a peer that accepts "
            f"only uncompressed data: {exc}"
        ) from exc


def send_files(
    destination: Destination, paths: Sequence[Path], *, calling_ae: str, timeout_s: float = 30.0
) -> None:
    """Send every file over one association; raise :class:`SendError` unless all are stored.

    A warning status counts as stored (PS3.7 C.1.2). The files are sent as
    they are when the peer accepts their transfer syntax, else decompressed
    (PS3.5 10: every SCP accepts a little endian syntax). A DICOMweb destination
    gets them by STOW-RS, as they are (dicom_node/stow.py).
    """
    if destination.web is not None:
        try:
            send_stow(destination.web, paths, timeout_s=timeout_s)
        except StowError as exc:
            raise SendError(str(exc)) from None
        return
    datasets = [dcmread(path) for path in paths]
    contexts = {(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)) for ds in datasets}
    assoc = association(destination, calling_ae, contexts, timeout_s)
    try:
        for ds in datasets:
            _fit_to_context(assoc, ds)
            status = assoc.send_c_store(ds)
            code = int(getattr(status, "Status", -1)) if status else -1
            if not Status.is_acknowledged(code):
                # The caller names the destination (``f"{destination}: {exc}"``).
                raise SendError(
                    f"C-STORE of {ds.SOPInstanceUID} refused: {describe(code)}"
                    if code >= 0
                    else f"no answer to C-STORE of {ds.SOPInstanceUID}"
                )
            log.info(
                "sent %s to %s",
                ds.SOPInstanceUID,
                destination,
                extra={"event": "result_sent", "sop_instance_uid": str(ds.SOPInstanceUID)},
            )
    finally:
        if assoc.is_established:
            assoc.release()


def echo(destination: Destination, *, calling_ae: str, timeout_s: float = 10.0) -> Status:
    """C-ECHO a destination (PS3.7 9.1.5); raises :class:`SendError` if unreachable."""
    if destination.web is not None:
        raise SendError(f"{destination} is a DICOMweb destination: C-ECHO does not apply")
    assoc = association(
        destination, calling_ae, {(Verification, ImplicitVRLittleEndian)}, timeout_s
    )
    try:
        status = assoc.send_c_echo()
        code = int(getattr(status, "Status", -1)) if status else -1
        if code < 0:
            raise SendError("no answer to C-ECHO")
        return Status(code) if code in Status._value2member_map_ else Status.PROCESSING_FAILURE
    finally:
        if assoc.is_established:
            assoc.release()
