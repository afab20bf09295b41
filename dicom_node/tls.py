"""DICOM TLS for both directions: one place that builds every TLS context.

The storage SCP's server context (``dicom_node.scp.TlsConfig``) and the SCU's
client context (``dicom_node.scu.DestinationTls``) both come from
:func:`tls_context`, which applies the BCP 195 non-downgrading profile of DICOM
PS3.15 (Annex B, "Non-Downgrading BCP 195 TLS Secure Transport Connection
Profile"; BCP 195 is RFC 8996 and RFC 9325):

- TLS 1.2 at least (1.0 and 1.1 are never negotiated, RFC 8996); TLS 1.3 is
  enabled and, as OpenSSL always picks the highest version both sides have,
  preferred (RFC 9325 3.1.1).
- For TLS 1.2 only ECDHE key exchange with an AEAD cipher (AES-GCM or
  ChaCha20-Poly1305), :data:`DEFAULT_TLS_CIPHERS`; a site may set its own list
  (the ``tls_ciphers`` setting). TLS 1.3 suites are OpenSSL's defaults, all of
  them AEAD (Python has no call to change them).
- No TLS compression and no renegotiation (RFC 9325 3.3, 3.5); the server
  chooses the cipher by its own order.

A client verifies the server's certificate against the configured CA file only
(never the system's store) and checks its name. A server with a CA file asks
for client certificates; :func:`peer_names` and :func:`caller_certificate_problem`
tie them to calling AE titles.
"""

from __future__ import annotations

import hashlib
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

#: The TLS 1.2 suites of the profile, OpenSSL names, in the server's order of preference.
DEFAULT_TLS_CIPHERS: Final = ":".join(
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
    )
)
MINIMUM_VERSION: Final = ssl.TLSVersion.TLSv1_2


class TlsSetupError(OSError):
    """A certificate, key, CA file or cipher list that cannot be used; the message names it."""


def _tls12_suites(context: ssl.SSLContext) -> list[Any]:
    return [c for c in context.get_ciphers() if c.get("protocol") != "TLSv1.3"]


def check_ciphers(ciphers: str) -> list[str]:
    """The TLS 1.2 suites OpenSSL selects from ``ciphers``; ``ValueError`` when none."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.set_ciphers(ciphers)
    except ssl.SSLError as exc:
        raise ValueError(f"OpenSSL selects no cipher suite from {ciphers!r}") from exc
    names = [c["name"] for c in _tls12_suites(context)]
    if not names:
        raise ValueError(f"{ciphers!r} selects no TLS 1.2 cipher suite")
    return names


def outside_profile(ciphers: str) -> list[str]:
    """The TLS 1.2 suites ``ciphers`` allows that the BCP 195 non-downgrading profile does not.

    The profile's are ECDHE key exchange with an AEAD cipher (AES-GCM, ChaCha20-Poly1305).
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.set_ciphers(ciphers)
    return [
        c["name"]
        for c in _tls12_suites(context)
        if c.get("kea") != "kx-ecdhe" or not c.get("aead") or c.get("auth") == "auth-null"
    ]


class _RecordingSSLSocket(ssl.SSLSocket):
    """Keeps the first TLS or connection error on its context, for a readable reason.

    pynetdicom only logs why a connection failed; the SCU reads it back from here.
    """

    def _record(self, exc: OSError) -> None:
        context = self.context
        if isinstance(context, ClientContext) and context.failure is None:
            context.failure = exc

    def connect(self, address: Any) -> None:
        try:
            super().connect(address)
        except OSError as exc:
            self._record(exc)
            raise

    def recv(self, buflen: int = 1024, flags: int = 0) -> bytes:
        try:
            return super().recv(buflen, flags)
        except ssl.SSLError as exc:  # TLS 1.3: a refused client certificate shows up here
            self._record(exc)
            raise


class ClientContext(ssl.SSLContext):
    """A client context that remembers why its connection failed (``failure``)."""

    failure: OSError | None = None
    sslsocket_class = _RecordingSSLSocket


def _readable(what: str, path: Path) -> None:
    try:
        with open(path, "rb"):
            pass
    except FileNotFoundError as exc:
        raise TlsSetupError(f"{what} {path} does not exist") from exc
    except PermissionError as exc:
        raise TlsSetupError(f"{what} {path} cannot be read by this user") from exc
    except OSError as exc:
        raise TlsSetupError(f"{what} {path} cannot be read: {exc.strerror or exc}") from exc


def _load(what: str, load: Any) -> None:
    try:
        load()
    except (OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "reason", None) or exc.strerror or str(exc)
        raise TlsSetupError(f"{what} cannot be loaded: {reason}") from exc


def tls_context(
    *,
    server: bool,
    cert_file: Path | None = None,
    key_file: Path | None = None,
    ca_file: Path | None = None,
    ciphers: str = DEFAULT_TLS_CIPHERS,
    require_peer_cert: bool = False,
) -> ssl.SSLContext:
    """A TLS context of the profile for either side; raises :class:`TlsSetupError`.

    Server: ``cert_file``/``key_file`` are its certificate; with ``ca_file`` client
    certificates are asked for and verified (required with ``require_peer_cert``).
    Client: ``ca_file`` is required and is the only trust anchor; the server's name
    is checked (``server_hostname`` when wrapping); ``cert_file``/``key_file`` are
    the client certificate, if the server asks for one.
    """
    if server:
        context: ssl.SSLContext = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    else:
        context = ClientContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = MINIMUM_VERSION
    context.maximum_version = ssl.TLSVersion.MAXIMUM_SUPPORTED
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    if server:
        context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    try:
        context.set_ciphers(ciphers)
    except ssl.SSLError as exc:
        raise TlsSetupError(f"tls_ciphers {ciphers!r}: OpenSSL selects no cipher suite") from exc
    if (cert_file is None) != (key_file is None):
        raise TlsSetupError("a certificate and its key go together (cert_file and key_file)")
    if cert_file is not None and key_file is not None:
        _readable("certificate", cert_file)
        _readable("key", key_file)
        _load(
            f"certificate {cert_file} with key {key_file}",
            lambda: context.load_cert_chain(certfile=str(cert_file), keyfile=str(key_file)),
        )
    if ca_file is not None:
        _readable("CA file", ca_file)
        _load(f"CA file {ca_file}", lambda: context.load_verify_locations(cafile=str(ca_file)))
    if server:
        if ca_file is not None:
            context.verify_mode = ssl.CERT_REQUIRED if require_peer_cert else ssl.CERT_OPTIONAL
        elif require_peer_cert:
            raise TlsSetupError("client certificates need a CA file to verify them")
    else:
        if ca_file is None:
            raise TlsSetupError("a TLS destination needs ca_file to verify the server")
        context.check_hostname = True
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def describe_tls_error(exc: BaseException) -> str:
    """Why a TLS connection failed, in words (no peer data beyond names and reasons)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"the peer's certificate was not accepted: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        reason = str(exc.reason or exc)
        upper = reason.upper()
        if "PROTOCOL_VERSION" in upper or "UNSUPPORTED_PROTOCOL" in upper:
            return f"no TLS version in common (TLS 1.2 or later is required): {reason}"
        if "NO_SHARED_CIPHER" in upper or "HANDSHAKE_FAILURE" in upper:
            return f"no cipher suite in common (tls_ciphers): {reason}"
        if "CERTIFICATE_REQUIRED" in upper:
            return f"the peer requires a client certificate (cert_file, key_file): {reason}"
        if "UNKNOWN_CA" in upper or "BAD_CERTIFICATE" in upper or "CERTIFICATE_UNKNOWN" in upper:
            return f"the peer did not accept our certificate: {reason}"
        if "WRONG_VERSION_NUMBER" in upper or "RECORD_LAYER" in upper:
            return f"the peer does not speak TLS on this port: {reason}"
        return f"TLS error: {reason}"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError):
        return exc.strerror or str(exc) or type(exc).__name__
    return str(exc) or type(exc).__name__


def peer_names(certificate: Mapping[str, Any] | None) -> frozenset[str]:
    """A verified peer certificate's subject CNs and DNS subjectAltNames, case-folded.

    ``certificate`` is what ``SSLSocket.getpeercert()`` returns (None or empty: none).
    """
    if not certificate:
        return frozenset()
    names = {
        value for rdn in certificate.get("subject", ()) for key, value in rdn if key == "commonName"
    }
    names |= {value for kind, value in certificate.get("subjectAltName", ()) if kind == "DNS"}
    return frozenset(name.casefold() for name in names)


def fingerprint(der: bytes | None) -> str:
    """``sha256:`` and the first 16 hex digits of a DER certificate's digest, for logs."""
    if not der:
        return "no certificate"
    return "sha256:" + hashlib.sha256(der).hexdigest()[:16]


def caller_certificate_problem(
    calling_ae_title: str,
    names: frozenset[str],
    allowed: Mapping[str, frozenset[str]],
) -> str | None:
    """Why ``calling_ae_title`` may not use a certificate with ``names``; None if it may.

    Only AE titles in ``allowed`` are bound to certificates; each needs one of its
    names (exact, case-insensitive; no wildcard matching) as the certificate's
    subject CN or a DNS subjectAltName.
    """
    wanted = allowed.get(calling_ae_title.strip())
    if wanted is None:
        return None
    if not names:
        return f"calling AE title {calling_ae_title.strip()} needs a client certificate"
    if names & wanted:
        return None
    return (
        f"the client certificate names none of the names allowed for calling AE title "
        f"{calling_ae_title.strip()}"
    )


def normalise_caller_names(mapping: Mapping[str, Any]) -> dict[str, frozenset[str]]:
    """``{AE title: [names]}`` as looked up: stripped titles, case-folded name sets."""
    return {
        str(ae).strip(): frozenset(str(name).strip().casefold() for name in names)
        for ae, names in mapping.items()
    }
