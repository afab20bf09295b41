"""One settings object, built once at start-up and passed down.

Precedence (highest first): command-line flags, environment variables
(``MAMMOSEG_*``; lists as JSON or comma-separated), the TOML config file
(``--config`` or ``MAMMOSEG_CONFIG``), then these defaults. Every field is listed
in ``deploy/mammoseg.example.toml`` and ``deploy/README.md``.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BeforeValidator,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from dicom_node.capture import DEFAULT_SC_SERIES_DESCRIPTION
from dicom_node.scu import DESTINATION_FORMS, Destination
from dicom_node.seg import DEFAULT_SEG_SERIES_DESCRIPTION
from dicom_node.sr import DEFAULT_SR_SERIES_DESCRIPTION
from dicom_node.tls import DEFAULT_TLS_CIPHERS, check_ciphers
from dicom_node.uids import is_valid_uid_root
from service.viewer_link import DEFAULT_VIEWER_URL_TEMPLATE, check_viewer_url_template

DEFAULT_MODEL = Path(__file__).resolve().parent / "models" / "mammoseg-mnv2-resunet.onnx"
# pydicom's registered root; sites should configure their own (deploy/README.md).
DEFAULT_UID_ROOT = "1.2.826.0.1.3680043.8.498."
MIN_TOKEN_LENGTH = 16
#: Host header values served by default (service/http_edge.py), with http_host when concrete.
DEFAULT_ALLOWED_HOSTS = ("localhost", "127.0.0.1", "::1")
#: http_host values that bind every interface: they name no host, so none is added.
WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::", "[::]", "*"})  # noqa: S104 (not a bind)
_LABEL = r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?"
_HOST_NAME = re.compile(rf"^(\*\.)?({_LABEL}\.)*{_LABEL}$")


SECRET_SETTINGS = frozenset(
    {"viewer_token", "admin_token", "stow_token", "database_url", "webhook_secret"}
)
SOURCES = ("default", "file", "env", "flag")


class SettingsError(ValueError):
    """A setting that stops start-up; the message names the value.

    ``problems`` lists each bad value on its own (``mammoseg check-config`` prints them).
    """

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or [message]


def _split_list(value: Any) -> Any:
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            import json

            return json.loads(text)
        return [part.strip() for part in text.split(",") if part.strip()]
    return value


StrList = Annotated[list[str], NoDecode, BeforeValidator(_split_list)]


def _destination_list(value: Any) -> Any:
    """Strings as they are; a config-file table ``{ae_title, host, port, tls, ca_file...}``
    becomes its string form (``tls://AET@HOST:PORT?ca_file=...``, dicom_node/scu.py)."""
    value = _split_list(value)
    if isinstance(value, list):
        return [Destination.from_table(v).spec if isinstance(v, dict) else v for v in value]
    return value


DestinationList = Annotated[list[str], NoDecode, BeforeValidator(_destination_list)]
CallerNames = dict[str, Annotated[list[str], BeforeValidator(_split_list)]]


class Settings(BaseSettings):
    """Everything the node can be told; validated at once, bad values stop start-up."""

    model_config = SettingsConfigDict(
        env_prefix="MAMMOSEG_", extra="forbid", frozen=True, validate_default=True
    )

    data_dir: Path = Field(
        default=Path("mammoseg-data"), description="Spool, outbox and SQLite store"
    )
    ae_title: str = Field(default="MAMMOSEG", min_length=1, max_length=16)
    dicom_host: str = "127.0.0.1"
    dicom_port: int = Field(default=11112, ge=1, le=65535)
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8080, ge=0, le=65535)
    destinations: DestinationList = Field(
        default_factory=list, description=f"{DESTINATION_FORMS}; repeatable"
    )
    allowed_callers: StrList = Field(
        default_factory=list, description="Calling AE titles allowed in; empty allows any"
    )
    model_path: Path = DEFAULT_MODEL
    workers: int = Field(default=1, ge=1, le=16)
    worker_processes: int = Field(
        default=1,
        ge=0,
        le=16,
        description="serve: child processes that run the workers (decode, infer, build, send), "
        "restarted when one dies, so a decoder crash never takes down the SCP or HTTP; "
        "0: the workers run in the serve process itself",
    )
    test_fault_injection: bool = Field(
        default=False,
        description="Tests only: honour MAMMOSEG_TEST_ABORT_ON_UID (the decode step aborts "
        "its process on that SOP Instance UID); never in production",
    )
    inference_threads: int = Field(default=0, ge=0, le=64, description="0: ONNX Runtime decides")
    min_lesion_area_mm2: float = Field(default=10.0, ge=0.0)
    threshold: float | None = Field(
        default=None, gt=0.0, lt=1.0, description="Overrides the model's"
    )
    uid_root: str = DEFAULT_UID_ROOT
    seg_series_number: int = Field(default=9901, ge=1)
    sc_series_number: int = Field(default=9902, ge=1)
    sc_max_size: int = Field(default=2048, ge=256, le=8192)
    sr_series_number: int = Field(default=9903, ge=1, le=2**31 - 1)
    seg_series_description: str = Field(
        default=DEFAULT_SEG_SERIES_DESCRIPTION, min_length=1, max_length=64
    )
    sc_series_description: str = Field(
        default=DEFAULT_SC_SERIES_DESCRIPTION, min_length=1, max_length=64
    )
    sr_series_description: str = Field(
        default=DEFAULT_SR_SERIES_DESCRIPTION, min_length=1, max_length=64
    )
    sc_compression: Literal["deflate", "jpeg", "rle", "none"] = Field(
        default="jpeg", description="Secondary Capture transfer syntax (deploy/README.md)"
    )
    voi_index: int = Field(
        default=0, ge=0, le=99, description="Which VOI LUT item / window of the source to display"
    )
    tomosynthesis_policy: Literal["skip", "fail"] = "skip"
    other_modality_policy: Literal["skip", "fail"] = "skip"
    institution_name: str | None = None
    max_associations: int = Field(default=10, ge=1, le=200)
    max_associations_per_peer: int = Field(
        default=0,
        ge=0,
        le=200,
        description="Associations at once from one IP address (0: only max_associations)",
    )
    # DICOM (SCP) timeouts, docs/security.md. The SCU's is send_timeout_s.
    dicom_request_timeout_s: float = Field(
        default=5.0,
        gt=0,
        le=600,
        description="Seconds from the connection (after TLS) to the first byte of the "
        "A-ASSOCIATE-RQ; a silent socket is closed and never holds an association slot",
    )
    dicom_acse_timeout_s: float = Field(
        default=10.0,
        gt=0,
        le=600,
        description="ACSE timeout: the whole A-ASSOCIATE-RQ, and the release",
    )
    dicom_dimse_timeout_s: float = Field(
        default=60.0, gt=0, le=3600, description="DIMSE timeout: a message in an association"
    )
    dicom_network_timeout_s: float = Field(
        default=60.0,
        gt=0,
        le=3600,
        description="Seconds of silence on an open association before it is aborted",
    )
    dicom_tls_handshake_timeout_s: float = Field(
        default=5.0, gt=0, le=600, description="TLS handshake on the DICOM port"
    )
    min_free_mb: int = Field(
        default=200, ge=0, description="Below this free disk, refuse with 0xA700"
    )
    process_for_processing: bool = Field(default=False, description="Segment FOR PROCESSING images")
    send_timeout_s: float = Field(default=30.0, gt=0)
    retry_initial_s: float = Field(default=5.0, gt=0)
    retry_max_s: float = Field(default=300.0, gt=0)
    retry_give_up_s: float = Field(default=86400.0, gt=0)
    # Storage Commitment (PS3.4 J) to destinations given with ?commit=1.
    commit_timeout_s: float = Field(
        default=600.0,
        gt=0,
        le=7 * 86400,
        description="Seconds to wait for a destination's storage commitment report "
        "(N-EVENT-REPORT) before the request (N-ACTION) is sent again",
    )
    commit_attempts: int = Field(
        default=3,
        ge=1,
        le=100,
        description="Storage commitment requests per destination before the job is FAILED; "
        "after a failure report the results are sent again first",
    )
    commit_wait_s: float = Field(
        default=2.0,
        ge=0,
        le=60,
        description="Seconds the N-ACTION's association stays open for a report on it; "
        "later reports come on a new association to the node's SCP",
    )
    poll_interval_s: float = Field(default=0.05, gt=0)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    database_url: str | None = Field(
        default=None,
        description="postgresql://user:password@host:port/db; none: SQLite in data_dir",
    )
    worker_id: str = Field(
        default_factory=socket.gethostname,
        min_length=1,
        max_length=128,
        description="Names this process's claims in a shared store",
    )
    stale_claim_s: float = Field(
        default=600.0, gt=0, description="Shared store: take back jobs another process left"
    )
    log_format: Literal["text", "json"] = Field(
        default="text", description="text: one line per event; json: one JSON object per line"
    )
    max_dataset_mb: int = Field(
        default=1024, ge=1, description="Larger incoming datasets abort the association"
    )
    tls_cert_file: Path | None = Field(default=None, description="DICOM TLS server certificate")
    tls_key_file: Path | None = Field(default=None, description="Its private key (PEM)")
    tls_ca_file: Path | None = Field(default=None, description="CA that signs client certificates")
    tls_require_client_cert: bool = Field(
        default=False, description="Refuse TLS clients without a certificate from tls_ca_file"
    )
    tls_ciphers: str = Field(
        default=DEFAULT_TLS_CIPHERS,
        min_length=1,
        description="TLS 1.2 cipher suites (OpenSSL list), both directions; default: the "
        "BCP 195 non-downgrading profile (ECDHE with AES-GCM or ChaCha20-Poly1305)",
    )
    tls_caller_names: CallerNames = Field(
        default_factory=dict,
        description="Calling AE title -> client certificate CN or DNS subjectAltName values "
        "it must present (TLS with tls_ca_file)",
    )
    # HTTP access (service/access.py). Tokens have no default: admin actions stay refused
    # until admin_token is set.
    viewer_token: SecretStr | None = Field(
        default=None, description="Bearer token for the read endpoints and pages"
    )
    admin_token: SecretStr | None = Field(
        default=None, description="Bearer token for retry, reprocess, echo"
    )
    read_access: Literal["token", "loopback", "open"] = Field(
        default="loopback",
        description="token: a token for every read; loopback: no token from 127.0.0.1/::1 "
        "unless through a proxy; open: no token (trusted network only)",
    )
    show_patient_data: bool = Field(
        default=False,
        description="Show patient name, ID, birth date in job details (to a token or a "
        "session only, never to a tokenless loopback read)",
    )
    max_upload_mb: int = Field(default=64, ge=1, le=2048, description="POST /api/v1/segment")
    # STOW-RS in (service/api/dicomweb.py): each part also within max_dataset_mb.
    stow_token: SecretStr | None = Field(
        default=None,
        description="Bearer token for STOW-RS (POST /dicomweb/studies) besides admin_token",
    )
    max_stow_mb: int = Field(
        default=1024, ge=1, le=65536, description="One STOW-RS request body, all parts"
    )
    # Webhooks: job.done, job.failed, exam.complete (service/webhooks.py, README "Webhooks").
    webhook_urls: StrList = Field(
        default_factory=list,
        description="http(s) URLs POSTed a signed JSON notice on each event; none: no webhooks",
    )
    webhook_secret: SecretStr | None = Field(
        default=None,
        description="Shared secret of the X-Mammoseg-Signature HMAC-SHA256 (or the file below)",
    )
    webhook_secret_file: Path | None = Field(
        default=None, description="File holding the webhook secret (first line), instead"
    )
    webhook_timeout_s: float = Field(
        default=10.0, gt=0, le=300, description="One delivery: connect, send and answer"
    )
    webhook_retry_initial_s: float = Field(
        default=5.0, gt=0, description="First retry after a failed delivery; doubles each time"
    )
    webhook_retry_max_s: float = Field(
        default=600.0, gt=0, description="Longest wait between two delivery attempts"
    )
    webhook_give_up_attempts: int = Field(
        default=12, ge=1, le=1000, description="Attempts before a notice becomes a dead letter"
    )
    webhook_give_up_s: float = Field(
        default=86400.0, gt=0, description="Or seconds since the event, whichever comes first"
    )
    # HTTP behind a proxy, and its limits (service/http_edge.py, service/body_limit.py).
    trusted_proxies: StrList = Field(
        default_factory=list,
        description="Proxy addresses or CIDR networks whose X-Forwarded-For and "
        "X-Forwarded-Proto are honoured; none: those headers are ignored",
    )
    allowed_hosts: StrList = Field(
        default_factory=lambda: list(DEFAULT_ALLOWED_HOSTS),
        description="Host header names served (and http_host unless a wildcard); "
        "'*.example.org' for subdomains, '*' for any; other hosts get 400",
    )
    http_header_timeout_s: float = Field(
        default=10.0,
        gt=0,
        le=300,
        description="A request line and headers must all arrive within this (from the "
        "connection or the previous response), else the connection is closed",
    )
    http_body_idle_timeout_s: float = Field(
        default=15.0, gt=0, le=3600, description="A request body pausing longer gets 408"
    )
    http_body_total_timeout_s: float = Field(
        default=300.0, gt=0, le=86400, description="A request body taking longer in all gets 408"
    )
    http_keep_alive_timeout_s: int = Field(
        default=5, ge=1, le=300, description="An idle keep-alive connection is closed after this"
    )
    http_max_header_bytes: int = Field(
        default=16384,
        ge=1024,
        le=1 << 20,
        description="Largest request head (line and headers); larger gets 400",
    )
    http_limit_concurrency: int = Field(
        default=1000,
        ge=0,
        le=100_000,
        description="Connections plus requests in progress beyond which requests get 503 "
        "(0: no limit)",
    )
    http_backlog: int = Field(
        default=2048, ge=1, le=65535, description="Listen backlog of the HTTP socket"
    )
    http_shutdown_timeout_s: int = Field(
        default=10, ge=1, le=3600, description="On SIGTERM, wait this long for open requests"
    )
    # Long life (issue 12): poison pills, retention.
    quarantine_after: int = Field(
        default=3,
        ge=1,
        le=100,
        description="Crashed processing attempts before a job is FAILED as quarantined",
    )
    retention_days: float = Field(
        default=30.0,
        ge=0.0,
        description="Days the spool and outbox files of a finished job are kept; 0: forever",
    )
    retention_audit_days: float = Field(
        default=365.0,
        ge=0.0,
        description="Days job rows, their events and the association audit are kept; 0: forever",
    )
    retention_high_water_mb: int = Field(
        default=0,
        ge=0,
        description="Below this free disk, the oldest finished jobs' files go early; 0: off",
    )
    retention_interval_s: float = Field(
        default=300.0, gt=0, description="How often the retention sweep runs"
    )
    # Exams (issue 15 part 3; service/exams.py, README "Exams"): one exam-level SR per study.
    exam_stable_s: float = Field(
        default=300.0,
        ge=0,
        description="Write the exam SR of a study without all four views once no image of it "
        "arrived for this long; 0: no exam SRs at all",
    )
    exam_sr_series_number: int = Field(
        default=9904, ge=1, le=2**31 - 1, description="Series number of the exam SR"
    )
    # Viewer (README "Viewing results in OHIF"): the job page links the study in a viewer.
    viewer_url_template: str = Field(
        default=DEFAULT_VIEWER_URL_TEMPLATE,
        max_length=2000,
        description="The job page's 'open in viewer' link: an http(s) URL with {study_uid}, "
        "{series_uid}, {sop_uid} (the received image's); empty: no link",
    )
    # Audit trail (issue 12; service/audit_trail.py, docs/security.md "Audit trail"): DICOM
    # audit messages (PS3.15 A.5), one file per UTC day under audit_dir, kept for
    # retention_audit_days; optionally also sent to a syslog server over TLS (RFC 5425).
    audit_dir: Path | None = Field(
        default=None, description="Audit message files, one per UTC day; none: data_dir/audit"
    )
    audit_syslog: str | None = Field(
        default=None, description="HOST:PORT of a syslog server (RFC 5424 over TLS, RFC 5425)"
    )
    audit_syslog_ca_file: Path | None = Field(
        default=None, description="CA of the syslog server's certificate; none: the system's"
    )
    audit_syslog_cert_file: Path | None = Field(
        default=None, description="Client certificate for the syslog server (PEM)"
    )
    audit_syslog_key_file: Path | None = Field(default=None, description="Its private key (PEM)")
    audit_hashed_patient_ids: bool = Field(
        default=False,
        description="Add a keyed SHA-256 of the Patient ID (never the ID itself) to messages",
    )

    @field_validator("audit_syslog")
    @classmethod
    def _audit_syslog(cls, value: str | None) -> str | None:
        if value is None:
            return None
        host, sep, port = value.strip().rpartition(":")
        if not sep or not host.strip("[]") or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"audit_syslog {value!r} must be HOST:PORT")
        return value.strip()

    @field_validator("ae_title")
    @classmethod
    def _ae_title(cls, value: str) -> str:
        if value != value.strip() or "\\" in value or not value.isascii():
            raise ValueError(f"AE title {value!r} must be ASCII without backslash or edge spaces")
        return value

    @field_validator("seg_series_description", "sc_series_description", "sr_series_description")
    @classmethod
    def _series_description(cls, value: str) -> str:
        # LO (PS3.5 6.2): no backslash, no control characters, not only spaces.
        if not value.strip() or "\\" in value or any(ord(ch) < 32 for ch in value):
            raise ValueError(f"series description {value!r} must be printable text without '\\'")
        return value

    @field_validator("destinations")
    @classmethod
    def _destinations(cls, values: list[str]) -> list[str]:
        for value in values:
            Destination.parse(value)
        return values

    @field_validator("tls_ciphers")
    @classmethod
    def _tls_ciphers(cls, value: str) -> str:
        check_ciphers(value)
        return value

    @field_validator("tls_caller_names")
    @classmethod
    def _tls_caller_names(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for ae, names in value.items():
            if not 0 < len(ae) <= 16 or ae != ae.strip() or "\\" in ae or not ae.isascii():
                raise ValueError(f"tls_caller_names: {ae!r} is not an AE title")
            if not names or any(not name.strip() for name in names):
                raise ValueError(f"tls_caller_names: {ae} needs at least one non-empty name")
        return value

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(
            ("sqlite:///", "postgresql:", "postgres:", "postgresql+psycopg:")
        ):
            raise ValueError("database_url must start with postgresql:// (or sqlite:///)")
        if value is not None and not value.startswith("sqlite:"):
            import importlib.util

            if importlib.util.find_spec("psycopg") is None:
                raise ValueError(
                    "database_url is a PostgreSQL URL but psycopg is not installed: "
                    "pip install 'mammoseg[postgres]'"
                )
        return value

    @field_validator("uid_root")
    @classmethod
    def _uid_root(cls, value: str) -> str:
        if not is_valid_uid_root(value):
            raise ValueError(
                f"UID root {value!r} must be a valid UID ending in '.', at most 40 chars"
            )
        return value

    @model_validator(mode="after")
    def _tls_pairs(self) -> Settings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file must be set together")
        if self.tls_require_client_cert and self.tls_ca_file is None:
            raise ValueError("tls_require_client_cert needs tls_ca_file")
        if self.tls_caller_names and (self.tls_cert_file is None or self.tls_ca_file is None):
            raise ValueError(
                "tls_caller_names needs TLS with client certificates: tls_cert_file, "
                "tls_key_file and tls_ca_file"
            )
        return self

    @model_validator(mode="after")
    def _access(self) -> Settings:
        viewer, admin = self.viewer_token, self.admin_token
        named = (("viewer_token", viewer), ("admin_token", admin), ("stow_token", self.stow_token))
        for name, token in named:
            # Checked here, not with min_length, so that the error never echoes the secret.
            if token is not None and len(token.get_secret_value()) < MIN_TOKEN_LENGTH:
                raise ValueError(f"{name} must be at least {MIN_TOKEN_LENGTH} characters")
        if self.read_access == "token" and viewer is None and admin is None:
            raise ValueError("read_access 'token' needs viewer_token or admin_token")
        if viewer and admin and viewer.get_secret_value() == admin.get_secret_value():
            raise ValueError("viewer_token and admin_token must differ")
        if self.show_patient_data and self.read_access == "open":
            raise ValueError("show_patient_data needs read_access 'token' or 'loopback'")
        return self

    @field_validator("viewer_url_template")
    @classmethod
    def _viewer_url_template(cls, value: str) -> str:
        value = value.strip()
        if value:
            check_viewer_url_template(value)
        return value

    @field_validator("webhook_urls")
    @classmethod
    def _webhook_urls(cls, values: list[str]) -> list[str]:
        for value in values:
            url = urlsplit(value.strip())
            if url.scheme not in ("http", "https") or not url.hostname:
                raise ValueError(f"webhook_urls: {value!r} is not an http:// or https:// URL")
            if url.username is not None or url.password is not None:
                raise ValueError("webhook_urls: no user or password in a URL; use webhook_secret")
        return [value.strip() for value in values]

    @model_validator(mode="after")
    def _webhooks(self) -> Settings:
        if self.webhook_secret is not None and self.webhook_secret_file is not None:
            raise ValueError("set webhook_secret or webhook_secret_file, not both")
        if self.webhook_urls and self.webhook_secret is None and self.webhook_secret_file is None:
            raise ValueError("webhook_urls needs webhook_secret or webhook_secret_file")
        if self.webhook_urls and len(self.webhook_key()) < MIN_TOKEN_LENGTH:
            raise ValueError(f"the webhook secret needs at least {MIN_TOKEN_LENGTH} characters")
        if self.webhook_retry_initial_s > self.webhook_retry_max_s:
            raise ValueError("webhook_retry_initial_s must not exceed webhook_retry_max_s")
        return self

    def webhook_key(self) -> bytes:
        """The HMAC key: webhook_secret, or the first line of webhook_secret_file (b"": none)."""
        if self.webhook_secret is not None:
            return self.webhook_secret.get_secret_value().encode("utf-8")
        if self.webhook_secret_file is None:
            return b""
        try:
            text = self.webhook_secret_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(
                f"webhook_secret_file: cannot read {self.webhook_secret_file}: {exc}"
            ) from exc
        lines = text.splitlines()
        return lines[0].strip().encode("utf-8") if lines else b""

    @field_validator("trusted_proxies")
    @classmethod
    def _trusted_proxies(cls, values: list[str]) -> list[str]:
        for value in values:
            try:
                ipaddress.ip_network(value.strip(), strict=False)
            except ValueError:
                raise ValueError(
                    f"trusted_proxies: {value!r} is not an IP address or CIDR network"
                ) from None
        return [value.strip() for value in values]

    @field_validator("allowed_hosts")
    @classmethod
    def _allowed_hosts(cls, values: list[str]) -> list[str]:
        hosts = []
        for value in values:
            host = value.strip().lower().rstrip(".")
            if host.startswith("[") and host.endswith("]"):
                host = host[1:-1]
            if host != "*" and not _HOST_NAME.match(host):
                try:
                    ipaddress.ip_address(host)
                except ValueError:
                    raise ValueError(
                        f"allowed_hosts: {value!r} is not a host name, an IP address, "
                        "'*.domain' or '*' (leave out scheme and port)"
                    ) from None
            hosts.append(host)
        return hosts

    @model_validator(mode="after")
    def _http(self) -> Settings:
        if self.http_body_total_timeout_s < self.http_body_idle_timeout_s:
            raise ValueError(
                f"http_body_total_timeout_s ({self.http_body_total_timeout_s:g}) must be at "
                f"least http_body_idle_timeout_s ({self.http_body_idle_timeout_s:g})"
            )
        if not self.host_allow_list:
            raise ValueError(
                "allowed_hosts is empty and http_host is a wildcard: every request would be "
                "refused ('*' allows any Host)"
            )
        return self

    @model_validator(mode="after")
    def _retention(self) -> Settings:
        files, audit = self.retention_days, self.retention_audit_days
        if audit and (not files or audit < files):
            raise ValueError(
                f"retention_audit_days ({audit:g}) must be 0 (forever) or at least "
                f"retention_days ({files:g}, 0 = forever): a job's row outlives its files"
            )
        if self.retention_high_water_mb and self.retention_high_water_mb <= self.min_free_mb:
            raise ValueError(
                f"retention_high_water_mb ({self.retention_high_water_mb}) must be above "
                f"min_free_mb ({self.min_free_mb}): files go before C-STORE is refused"
            )
        return self

    @property
    def spool_dir(self) -> Path:
        return self.data_dir / "spool"

    @property
    def outbox_dir(self) -> Path:
        return self.data_dir / "outbox"

    @property
    def database_path(self) -> Path:
        return self.data_dir / "jobs.sqlite3"

    @property
    def host_allow_list(self) -> list[str]:
        """``allowed_hosts`` and ``http_host`` (unless it binds every interface)."""
        hosts = list(self.allowed_hosts)
        own = self.http_host.strip().lower().strip("[]")
        if own not in WILDCARD_HOSTS and own not in hosts:
            hosts.append(own)
        return hosts

    @property
    def destination_list(self) -> list[Destination]:
        return [Destination.parse(text, ciphers=self.tls_ciphers) for text in self.destinations]


def config_file_from(flag: Path | None, environ: Mapping[str, str]) -> Path | None:
    """The config file ``serve`` reads: ``--config``, else ``MAMMOSEG_CONFIG``, else none."""
    if flag is not None:
        return flag
    value = environ.get("MAMMOSEG_CONFIG")
    return Path(value) if value else None


def read_config_file(config_file: Path) -> dict[str, Any]:
    """The TOML file's keys (``-`` read as ``_``); unknown keys are refused later."""
    try:
        values = tomllib.loads(Path(config_file).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise SettingsError(f"cannot read config file {config_file}: {exc}") from exc
    return {key.replace("-", "_"): value for key, value in values.items()}


def setting_sources(
    file_values: Mapping[str, Any], overrides: Mapping[str, Any], environ: Mapping[str, str]
) -> dict[str, str]:
    """Where each setting's value comes from, by the precedence ``load_settings`` applies.

    The environment is matched case-insensitively, as pydantic-settings reads it.
    """
    env_names = {name.upper() for name in environ}
    sources = {}
    for name in Settings.model_fields:
        if overrides.get(name) is not None:
            sources[name] = "flag"
        elif f"MAMMOSEG_{name.upper()}" in env_names:
            sources[name] = "env"
        elif name in file_values:
            sources[name] = "file"
        else:
            sources[name] = "default"
    return sources


def _problem(err: Mapping[str, Any]) -> str:
    loc = ".".join(str(p) for p in err["loc"]) or "settings"
    echo = not isinstance(err.get("input"), dict) and loc not in SECRET_SETTINGS
    return f"{loc}: {err['msg']}" + (f" (got {err['input']!r})" if echo else "")


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build the settings: overrides (CLI) > environment > config file > defaults."""
    file_values: dict[str, Any] = {}
    if config_file is not None:
        file_values = read_config_file(config_file)
    explicit = {key: value for key, value in overrides.items() if value is not None}

    class _FromFile(Settings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls,
            init_settings,
            env_settings,  # type: ignore[no-untyped-def, override]
            dotenv_settings,
            file_secret_settings,
        ):
            from pydantic_settings import InitSettingsSource

            return (
                init_settings,
                env_settings,
                InitSettingsSource(settings_cls, init_kwargs=file_values),
            )

    try:
        built = _FromFile(**explicit)
    except ValidationError as exc:
        # Secrets (tokens, a database URL with its password) are never echoed back.
        problems = [_problem(err) for err in exc.errors()]
        raise SettingsError(f"invalid settings: {'; '.join(problems)}", problems) from exc
    return Settings.model_validate(built.model_dump())
