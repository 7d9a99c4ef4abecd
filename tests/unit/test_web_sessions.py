"""Browser sessions (services.web_sessions) on a real store, SQLite or PostgreSQL:
lifetimes, revocation, logout-all, hash-only storage, failed sign-ins limited."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from jobferry.config import parse_config
from jobferry.errors import (
    AuthenticationError,
    InvalidCredentialsError,
    NotFoundError,
    TooManyRequestsError,
)
from jobferry.services.container import Services, build
from jobferry.services.core import Core
from jobferry.store.engine import check_schema
from jobferry.store.models import ApiKey, User, WebSession, utcnow
from tests.db import with_database

PASSWORD = "correct horse battery staple"
IDLE_S = 3600.0
MAX_S = 86400.0
TOUCH_S = 60.0


def make_core(data: Path, **web: Any) -> Core:
    settings = {
        "session_idle_s": IDLE_S,
        "session_max_s": MAX_S,
        "session_touch_s": TOUCH_S,
        "sign_in_failures_per_minute": 3,
        **web,
    }
    config = parse_config(with_database({"data_dir": str(data), "web": settings}, data))
    core = Core(config, runners={})
    core.ensure_dirs()
    check_schema(core.engine)
    return core


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Services]:
    core = make_core(tmp_path / "data")
    made = build(core)
    for name in ("alice", "bob"):
        made.auth.create_user(name)
        made.users.set_password(name, PASSWORD)
    yield made
    core.close()


def row_of(services: Services, token: str) -> WebSession:
    digest = hashlib.sha256(token.encode()).hexdigest()
    with services.core.sessions.begin() as session:
        found = session.execute(select(WebSession).where(WebSession.token_hash == digest))
        row = found.scalar_one()
        session.expunge(row)
        return row


def age(services: Services, token: str, **changes: Any) -> None:
    """Move a session's clock: set its timestamps as if time had passed."""
    digest = hashlib.sha256(token.encode()).hexdigest()
    with services.core.sessions.begin() as session:
        session.execute(update(WebSession).where(WebSession.token_hash == digest).values(**changes))


def test_a_password_sign_in_opens_a_session_that_resolves_to_its_user(
    services: Services,
) -> None:
    signed = services.web_sessions.sign_in_password("alice", PASSWORD, "10.0.0.1")
    principal = services.web_sessions.resolve(signed.token)
    assert (principal.username, principal.is_admin) == ("alice", False)
    assert principal == signed.principal
    row = row_of(services, signed.token)
    assert row.method == "password"
    assert row.expires_at - row.created_at == timedelta(seconds=MAX_S)


def test_the_store_keeps_only_the_tokens_hash(services: Services) -> None:
    signed = services.web_sessions.sign_in_password("alice", PASSWORD)
    assert signed.token.startswith("jfs_") and len(signed.token) >= 40
    with services.core.sessions.begin() as session:
        rows = session.execute(select(WebSession)).scalars().all()
        stored = [str(getattr(r, c.key)) for r in rows for c in WebSession.__table__.columns]
    assert len(rows) == 1
    assert rows[0].token_hash == hashlib.sha256(signed.token.encode()).hexdigest()
    assert not any(signed.token in value or signed.token[4:] in value for value in stored)


def test_signing_out_ends_the_session_at_once(services: Services) -> None:
    sessions = services.web_sessions
    signed = sessions.sign_in_password("alice", PASSWORD)
    other = sessions.sign_in_password("alice", PASSWORD)
    sessions.sign_out(signed.token)
    with pytest.raises(AuthenticationError):
        sessions.resolve(signed.token)
    assert sessions.resolve(other.token).username == "alice"  # only that one ended


def test_a_session_idle_longer_than_session_idle_s_has_ended(services: Services) -> None:
    sessions = services.web_sessions
    idle = sessions.sign_in_password("alice", PASSWORD)
    recent = sessions.sign_in_password("alice", PASSWORD)
    now = utcnow()
    age(services, idle.token, last_seen_at=now - timedelta(seconds=IDLE_S + 1))
    age(services, recent.token, last_seen_at=now - timedelta(seconds=IDLE_S - 30))
    with pytest.raises(AuthenticationError, match="ended"):
        sessions.resolve(idle.token)
    assert sessions.resolve(recent.token).username == "alice"


def test_a_session_ends_at_session_max_s_however_busy(services: Services) -> None:
    sessions = services.web_sessions
    signed = sessions.sign_in_password("alice", PASSWORD)
    age(services, signed.token, expires_at=utcnow() - timedelta(seconds=1))
    with pytest.raises(AuthenticationError, match="ended"):
        sessions.resolve(signed.token)


def test_the_last_request_is_written_at_most_every_session_touch_s(services: Services) -> None:
    sessions = services.web_sessions
    signed = sessions.sign_in_password("alice", PASSWORD)
    a_bit_ago = utcnow() - timedelta(seconds=TOUCH_S / 2)
    age(services, signed.token, last_seen_at=a_bit_ago)
    sessions.resolve(signed.token)
    unchanged = row_of(services, signed.token).last_seen_at
    assert abs((unchanged - a_bit_ago).total_seconds()) < 1e-3
    long_ago = utcnow() - timedelta(seconds=TOUCH_S + 5)
    age(services, signed.token, last_seen_at=long_ago)
    before = utcnow()
    sessions.resolve(signed.token)
    assert row_of(services, signed.token).last_seen_at >= before - timedelta(seconds=1)


def test_logout_all_ends_every_session_of_that_user_only(services: Services) -> None:
    sessions = services.web_sessions
    alices = [sessions.sign_in_password("alice", PASSWORD) for _ in range(3)]
    sessions.sign_out(alices[2].token)  # already ended: not counted
    bobs = sessions.sign_in_password("bob", PASSWORD)
    assert sessions.logout_all("alice") == 2
    for signed in alices:
        with pytest.raises(AuthenticationError):
            sessions.resolve(signed.token)
    assert sessions.resolve(bobs.token).username == "bob"
    assert sessions.logout_all("alice") == 0
    with pytest.raises(NotFoundError):
        sessions.logout_all("nobody")


def test_an_api_key_signs_in_and_revoking_the_key_ends_its_session(services: Services) -> None:
    sessions = services.web_sessions
    info, key = services.auth.create_key("alice", "laptop")
    by_key = sessions.sign_in_key(key, "10.0.0.1")
    by_password = sessions.sign_in_password("alice", PASSWORD)
    assert sessions.resolve(by_key.token).username == "alice"
    assert row_of(services, by_key.token).method == "api_key"
    services.auth.revoke_key(info.id)
    with pytest.raises(AuthenticationError):
        sessions.resolve(by_key.token)
    assert sessions.resolve(by_password.token).username == "alice"


def test_a_deactivated_user_is_signed_out(services: Services) -> None:
    sessions = services.web_sessions
    signed = sessions.sign_in_password("alice", PASSWORD)
    with services.core.sessions.begin() as session:
        session.execute(update(User).where(User.username == "alice").values(is_active=False))
    with pytest.raises(AuthenticationError):
        sessions.resolve(signed.token)


def test_unknown_and_malformed_tokens_are_refused(services: Services) -> None:
    for token in ("", "jfs_" + "A" * 43, "jf_notasession", "jfs_" + "x" * 500):
        with pytest.raises(AuthenticationError):
            services.web_sessions.resolve(token)


def test_failed_password_sign_ins_are_limited_per_user_and_address(services: Services) -> None:
    sessions = services.web_sessions
    for _ in range(3):
        with pytest.raises(InvalidCredentialsError):
            sessions.sign_in_password("alice", "wrong", "10.0.0.1")
    # Past the limit even the right password is refused, from any address, for alice...
    with pytest.raises(TooManyRequestsError) as refused:
        sessions.sign_in_password("alice", PASSWORD, "10.0.0.2")
    assert 1 <= refused.value.retry_after <= 60
    # ... and anyone from that address; bob elsewhere is not affected.
    with pytest.raises(TooManyRequestsError):
        sessions.sign_in_password("bob", PASSWORD, "10.0.0.1")
    assert sessions.sign_in_password("bob", PASSWORD, "10.0.0.3").principal.username == "bob"


def test_failed_key_sign_ins_are_limited_per_address(services: Services) -> None:
    sessions = services.web_sessions
    _, key = services.auth.create_key("alice")
    for _ in range(3):
        with pytest.raises(InvalidCredentialsError):
            sessions.sign_in_key("jf_" + "x" * 43, "10.0.0.9")
    with pytest.raises(TooManyRequestsError):
        sessions.sign_in_key(key, "10.0.0.9")
    assert sessions.sign_in_key(key, "10.0.0.8").principal.username == "alice"


def test_a_revoked_key_does_not_sign_in(services: Services) -> None:
    info, key = services.auth.create_key("alice")
    services.auth.revoke_key(info.id)
    with pytest.raises(InvalidCredentialsError):
        services.web_sessions.sign_in_key(key)


def test_signing_in_clears_the_users_ended_sessions(services: Services) -> None:
    sessions = services.web_sessions
    old = sessions.sign_in_password("alice", PASSWORD)
    sessions.sign_out(old.token)
    sessions.sign_in_password("alice", PASSWORD)
    with services.core.sessions.begin() as session:
        assert len(session.execute(select(WebSession)).scalars().all()) == 1


def test_every_daemon_on_one_store_signs_cookies_with_the_same_key(
    services: Services, tmp_path: Path
) -> None:
    """Two daemons sharing a store (as nodes do) accept each other's cookies."""
    other_core = Core(services.core.config, runners={})
    try:
        other = build(other_core)
        assert other.web_sessions.cookie_secret == services.web_sessions.cookie_secret
        assert len(services.web_sessions.cookie_secret) == 32
        assert services.web_sessions.cookie_secret != services.core.secret  # derived
        signed = services.web_sessions.sign_in_password("alice", PASSWORD)
        assert other.web_sessions.resolve(signed.token).username == "alice"
    finally:
        other_core.close()


def test_deleting_a_key_row_deletes_its_sessions(services: Services) -> None:
    info, key = services.auth.create_key("alice")
    signed = services.web_sessions.sign_in_key(key)
    with services.core.sessions.begin() as session:
        session.delete(session.get(ApiKey, info.id))
    with pytest.raises(AuthenticationError):
        services.web_sessions.resolve(signed.token)
