"""Who may read and who may act on the HTTP side: bearer tokens, a session cookie, loopback.

Two roles: a *viewer* reads (REST API, ``/metrics``, the dashboard, the upload
page), an *admin* also acts (retry, reprocess, C-ECHO). Tokens come from the
settings only; there is no default secret, and without ``admin_token`` actions
are refused. ``read_access`` says whether reads need a token at all
(``token``), only from other hosts (``loopback``) or never (``open``).

A *loopback* caller is a peer on 127.0.0.0/8 or ::1 whose request did not come
through a proxy: ``service.http_edge`` marks a request proxied (:data:`PROXIED`)
when its peer is in ``trusted_proxies`` or it carries a forwarding header, so a
reverse proxy on the same host never makes a remote user local. Patient data is
shown only to a role (a token or a session), never to a tokenless loopback read.

Browsers log in once (``/login``): the cookie holds a keyed hash of the token,
never the token, so changing a token ends every session. Comparisons are
constant-time. Nothing here knows FastAPI; ``service.api.deps`` turns it into
dependencies.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from dataclasses import dataclass
from enum import IntEnum
from typing import Literal

from service.settings import Settings

SESSION_COOKIE = "mammoseg_session"
#: Header a browser script sends with actions; a cross-site form cannot set it.
ACTION_HEADER = "X-Requested-With"
_SESSION_CONTEXT = b"mammoseg-session-v1"
#: ASGI scope key set by ``service.http_edge``: whether the request came through a proxy.
PROXIED = "mammoseg.proxied"


class Role(IntEnum):
    """Ordered: a higher role may do everything a lower one may."""

    NONE = 0
    VIEWER = 1
    ADMIN = 2


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def session_value(token: str) -> str:
    """The cookie for a token: HMAC-SHA256 keyed by the token (the token itself stays secret)."""
    return "v1." + hmac.new(token.encode(), _SESSION_CONTEXT, hashlib.sha256).hexdigest()


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class AccessPolicy:
    read_access: Literal["token", "loopback", "open"]
    viewer_token: str | None
    admin_token: str | None

    @classmethod
    def from_settings(cls, settings: Settings) -> AccessPolicy:
        return cls(
            read_access=settings.read_access,
            viewer_token=settings.viewer_token.get_secret_value()
            if settings.viewer_token
            else None,
            admin_token=settings.admin_token.get_secret_value() if settings.admin_token else None,
        )

    @property
    def actions_enabled(self) -> bool:
        return self.admin_token is not None

    def role_of_token(self, token: str | None) -> Role:
        if not token:
            return Role.NONE
        # Compare against both, always, so timing does not tell which one nearly matched.
        admin = self.admin_token is not None and _same(token, self.admin_token)
        viewer = self.viewer_token is not None and _same(token, self.viewer_token)
        return Role.ADMIN if admin else Role.VIEWER if viewer else Role.NONE

    def role_of_session(self, cookie: str | None) -> Role:
        if not cookie:
            return Role.NONE
        admin = self.admin_token is not None and _same(cookie, session_value(self.admin_token))
        viewer = self.viewer_token is not None and _same(cookie, session_value(self.viewer_token))
        return Role.ADMIN if admin else Role.VIEWER if viewer else Role.NONE

    def may_read(self, role: Role, client_host: str | None, *, proxied: bool = True) -> bool:
        """A role reads; without one, ``open`` reads, and ``loopback`` from a local peer.

        ``proxied`` (the default, so that forgetting it fails closed): the request
        came through a proxy, so its peer being local says nothing about its client.
        """
        if role >= Role.VIEWER or self.read_access == "open":
            return True
        return self.read_access == "loopback" and not proxied and is_loopback(client_host)

    @staticmethod
    def may_see_patient_data(role: Role, show_patient_data: bool) -> bool:
        """Patient data for a token or a session only, never for a tokenless read."""
        return show_patient_data and role >= Role.VIEWER


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer ...`` header (RFC 6750 2.1), else None."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()
