"""Ended browser sessions are purged (``WebSessionService.purge_ended``, run by the
heartbeat), and changing a password ends the sessions signed in with the old one
(``UserService.set_password``): on a real store, SQLite or PostgreSQL."""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from sqlalchemy import func, select, update

from jobferry.errors import AuthenticationError, NotFoundError
from jobferry.services.container import Services, build
from jobferry.services.core import Core
from jobferry.services.web_sessions import SignedIn, WebSessionService
from jobferry.store.models import User, WebSession, utcnow
from tests.unit import test_web_sessions as base

#: The same store and users (alice, bob) as the other session tests.
services = base.services
PASSWORD = base.PASSWORD


def stored_tokens(services: Services, *signed: SignedIn) -> list[bool]:
    """For each session, whether its row is still in the store."""
    with services.core.sessions.begin() as session:
        hashes = set(session.execute(select(WebSession.token_hash)).scalars())
    return [hashlib.sha256(s.token.encode()).hexdigest() in hashes for s in signed]


def session_rows(services: Services) -> int:
    with services.core.sessions.begin() as session:
        return int(session.execute(select(func.count()).select_from(WebSession)).scalar_one())


def test_purging_deletes_every_kind_of_ended_session_and_only_those(services: Services) -> None:
    sessions = services.web_sessions
    now = utcnow()
    # Every session opens first: signing in clears that user's ended sessions itself.
    live = sessions.sign_in_password("alice", PASSWORD)
    signed_out = sessions.sign_in_password("alice", PASSWORD)
    past_max = sessions.sign_in_password("alice", PASSWORD)
    idle = sessions.sign_in_password("bob", PASSWORD)
    info, key = services.auth.create_key("bob", "laptop")
    by_revoked_key = sessions.sign_in_key(key)
    _, other_key = services.auth.create_key("bob", "desktop")
    by_live_key = sessions.sign_in_key(other_key)
    deactivated = sessions.sign_in_password("bob", PASSWORD)
    sessions.sign_out(signed_out.token)
    base.age(services, past_max.token, expires_at=now - timedelta(seconds=1))
    base.age(services, idle.token, last_seen_at=now - timedelta(seconds=base.IDLE_S + 1))
    services.auth.revoke_key(info.id)
    with services.core.sessions.begin() as session:
        session.execute(update(User).where(User.username == "bob").values(is_active=False))

    assert sessions.purge_ended() == 4
    assert stored_tokens(
        services, live, signed_out, past_max, idle, by_revoked_key, by_live_key, deactivated
    ) == [True, False, False, False, False, True, True]
    # A deactivated user's sessions stay: reactivated, the user is signed in again.
    with services.core.sessions.begin() as session:
        session.execute(update(User).where(User.username == "bob").values(is_active=True))
    assert sessions.resolve(deactivated.token).username == "bob"
    assert sessions.resolve(live.token).username == "alice"
    assert sessions.purge_ended() == 0


def test_a_purge_is_bounded_and_the_next_ones_finish_the_work(services: Services) -> None:
    sessions = services.web_sessions
    ended = [sessions.sign_in_password("alice", PASSWORD) for _ in range(7)]
    for signed in ended:
        sessions.sign_out(signed.token)
    live = sessions.sign_in_password("bob", PASSWORD)
    assert [sessions.purge_ended(limit=3) for _ in range(4)] == [3, 3, 1, 0]
    assert session_rows(services) == 1
    assert sessions.resolve(live.token).username == "bob"


def test_two_daemons_purging_one_store_at_once_delete_each_row_once(
    services: Services,
) -> None:
    """Two daemons' heartbeats purging at once: every row goes once, no purge fails."""
    sessions = services.web_sessions
    opened = [sessions.sign_in_password("alice", PASSWORD) for _ in range(40)]
    for signed in opened:
        sessions.sign_out(signed.token)
    other = build(Core(services.core.config, runners={}))

    def purge_all(service: WebSessionService) -> int:
        total = 0
        while done := service.purge_ended(limit=3):
            total += done
        return total

    try:
        with ThreadPoolExecutor(2) as pool:
            counts = list(pool.map(purge_all, (sessions, other.web_sessions)))
    finally:
        other.core.close()
    assert sum(counts) == 40
    assert session_rows(services) == 0


def test_changing_a_password_ends_the_sessions_signed_in_with_the_old_one(
    services: Services,
) -> None:
    sessions = services.web_sessions
    by_password = [sessions.sign_in_password("alice", PASSWORD) for _ in range(2)]
    sessions.sign_out(by_password[1].token)  # already ended: not counted
    _, key = services.auth.create_key("alice", "laptop")
    by_key = sessions.sign_in_key(key)
    bobs = sessions.sign_in_password("bob", PASSWORD)

    assert services.users.set_password("alice", "a new secret, long enough") == 1
    with pytest.raises(AuthenticationError):
        sessions.resolve(by_password[0].token)
    assert sessions.resolve(by_key.token).username == "alice"  # the key still holds
    assert sessions.resolve(bobs.token).username == "bob"
    fresh = sessions.sign_in_password("alice", "a new secret, long enough")
    assert sessions.resolve(fresh.token).username == "alice"
    assert services.users.set_password("bob", PASSWORD) == 1
    with pytest.raises(NotFoundError):
        services.users.set_password("nobody", PASSWORD)
    assert sessions.resolve(fresh.token).username == "alice"
