"""Tokens, sessions and loopback (service.access)."""

from __future__ import annotations

import pytest

from service.access import AccessPolicy, Role, bearer_token, is_loopback, session_value

VIEWER = "v" * 20
ADMIN = "a" * 24


def policy(read_access: str = "token", admin: str | None = ADMIN) -> AccessPolicy:
    return AccessPolicy(read_access=read_access, viewer_token=VIEWER, admin_token=admin)  # type: ignore[arg-type]


def test_roles_from_tokens_and_sessions() -> None:
    p = policy()
    assert p.role_of_token(ADMIN) is Role.ADMIN
    assert p.role_of_token(VIEWER) is Role.VIEWER
    assert p.role_of_token(VIEWER + "x") is Role.NONE
    assert p.role_of_token(None) is Role.NONE
    assert p.role_of_session(session_value(ADMIN)) is Role.ADMIN
    assert p.role_of_session(session_value(VIEWER)) is Role.VIEWER
    assert p.role_of_session(ADMIN) is Role.NONE  # the raw token is not a session
    assert ADMIN not in session_value(ADMIN)


def test_without_an_admin_token_nobody_is_admin() -> None:
    p = policy(admin=None)
    assert not p.actions_enabled
    assert p.role_of_token("") is Role.NONE
    assert p.role_of_session(session_value("")) is Role.NONE


@pytest.mark.parametrize(
    ("read_access", "host", "allowed"),
    [
        ("token", "127.0.0.1", False),
        ("loopback", "127.0.0.1", True),
        ("loopback", "::1", True),
        ("loopback", "127.8.9.10", True),
        ("loopback", "192.0.2.1", False),
        ("loopback", "testclient", False),
        ("loopback", None, False),
        ("open", "192.0.2.1", True),
    ],
)
def test_reads_without_a_role(read_access: str, host: str | None, allowed: bool) -> None:
    assert policy(read_access).may_read(Role.NONE, host, proxied=False) is allowed
    assert policy(read_access).may_read(Role.VIEWER, host, proxied=False) is True


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "127.8.9.10"])
def test_a_proxied_request_is_never_loopback(host: str) -> None:
    """Through a proxy (trusted or not), a local peer says nothing about the client."""
    assert policy("loopback").may_read(Role.NONE, host, proxied=True) is False
    assert policy("loopback").may_read(Role.NONE, host) is False  # unmarked: fails closed
    assert policy("loopback").may_read(Role.VIEWER, host, proxied=True) is True
    assert policy("open").may_read(Role.NONE, host, proxied=True) is True


def test_patient_data_needs_a_role() -> None:
    assert AccessPolicy.may_see_patient_data(Role.VIEWER, True)
    assert AccessPolicy.may_see_patient_data(Role.ADMIN, True)
    assert not AccessPolicy.may_see_patient_data(Role.NONE, True)  # tokenless loopback read
    assert not AccessPolicy.may_see_patient_data(Role.ADMIN, False)


def test_bearer_header_parsing() -> None:
    assert bearer_token("Bearer abc") == "abc"
    assert bearer_token("bearer  abc ") == "abc"
    assert bearer_token("Basic abc") is None
    assert bearer_token("Bearer ") is None
    assert bearer_token(None) is None
    assert is_loopback("::1") and not is_loopback("example.org")
