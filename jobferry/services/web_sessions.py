"""Browser sessions: signing in (password or API key), resolving, signing out.

A session is a 256-bit random token, handed to the browser once (in a signed
cookie, ``web/``) and stored as its sha256 only, like API keys. A session ends
when it is signed out, when ``user logout-all`` revokes every session of its
user, when the key it signed in with is revoked, when its user is deactivated,
``web.session_idle_s`` after its last request, and ``web.session_max_s`` after it
began, whichever comes first. Every check is on the store's row, so several
daemons sharing one store agree at once (no cache to wait out).

Ended sessions' rows are deleted by ``purge_ended``, a bounded batch that the
daemon's heartbeat runs every beat (``daemon.heartbeat``), and at the user's next
sign-in; a password change ends the password-signed ones (``UserService.set_password``).

The last request is written at most every ``web.session_touch_s``: pages cost a
read, not a write, and the idle clock is that much coarse (a session may end up
to ``session_touch_s`` early, never late).

Failed sign-ins are counted per user name and per client address as the API's
baseauth are (``services.ratelimit``); past ``web.sign_in_failures_per_minute``
the answer is TooManyRequestsError, without looking at the password.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, or_, select, update

from jobferry.errors import AuthenticationError, InvalidCredentialsError, NotFoundError
from jobferry.services.auth import AuthService, hash_key
from jobferry.services.core import Core, Principal
from jobferry.services.ratelimit import FailureLimiter
from jobferry.services.users import UserService
from jobferry.store.models import ApiKey, User, WebSession, utcnow

#: Every session token starts with this (an API key starts with ``jf_``).
TOKEN_PREFIX = "jfs_"
#: What the cookie signature is derived from, with the store-wide secret.
_COOKIE_LABEL = b"jobferry web session cookie v1"
#: Most ended sessions one ``purge_ended`` call deletes (bounded work per heartbeat).
PURGE_BATCH = 500
#: The one answer to a bad API key at sign-in.
BAD_KEY = "This API key is not valid."


@dataclass(frozen=True)
class SignedIn:
    """A new session: the token (for the cookie, shown nowhere else) and its owner."""

    token: str
    principal: Principal
    expires_at: datetime


@dataclass(frozen=True)
class SessionInfo:
    """A session as a page shows it (never its token)."""

    id: str
    method: str
    created_at: datetime
    last_seen_at: datetime
    expires_at: datetime


class WebSessionService:
    def __init__(self, core: Core, auth: AuthService, users: UserService) -> None:
        self.core = core
        self.auth = auth
        self.users = users
        limit = core.config.web.sign_in_failures_per_minute
        #: Failed sign-ins per user name and per client address (in memory).
        self.failures = FailureLimiter(limit, 60.0)

    @functools.cached_property
    def cookie_secret(self) -> bytes:
        """The key of the cookie's signature: derived from the store-wide secret, so every
        daemon on one store signs and checks alike (and it never leaves the store)."""
        return hmac.new(self.core.secret, _COOKIE_LABEL, hashlib.sha256).digest()

    # --- signing in -------------------------------------------------------------------

    def sign_in_password(self, username: str, password: str, client: str = "") -> SignedIn:
        """A new session for the user with these credentials.

        Raises InvalidCredentialsError (the same for an unknown user as for a wrong
        password) or TooManyRequestsError."""
        counted = (f"user:{username.strip().casefold()}", f"addr:{client}")
        self.failures.check(*counted)
        try:
            record = self.users.verify_credentials(username.strip(), password)
        except InvalidCredentialsError:
            self.failures.failed(*counted)
            raise
        self.failures.forget(counted[0])
        principal = Principal(record.id, record.username, record.is_admin)
        return self._open(principal, "password", None)

    def sign_in_key(self, key: str, client: str = "") -> SignedIn:
        """A new session for the owner of API key *key*.

        Raises InvalidCredentialsError or TooManyRequestsError (failures are counted
        per client address)."""
        counted = (f"addr:{client}",)
        self.failures.check(*counted)
        key = key.strip()
        with self.core.sessions.begin() as session:
            row = (
                session.execute(
                    select(ApiKey.id, User.id, User.username, User.is_admin)
                    .join(User, User.id == ApiKey.user_id)
                    .where(ApiKey.key_hash == hash_key(key), ApiKey.is_active, User.is_active)
                ).first()
                if key and len(key) <= 512
                else None
            )
        if row is None:
            self.failures.failed(*counted)
            raise InvalidCredentialsError(BAD_KEY)
        key_id, user_id, username, is_admin = row
        return self._open(Principal(user_id, username, bool(is_admin)), "api_key", key_id)

    def _open(self, principal: Principal, method: str, key_id: str | None) -> SignedIn:
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        now = utcnow()
        expires = now + timedelta(seconds=self.core.config.web.session_max_s)
        with self.core.sessions.begin() as session:
            # The user's ended sessions go now: the table holds live sessions, mostly.
            session.execute(
                delete(WebSession).where(
                    WebSession.user_id == principal.user_id,
                    or_(WebSession.expires_at < now, WebSession.revoked_at.is_not(None)),
                )
            )
            session.add(
                WebSession(
                    user_id=principal.user_id,
                    token_hash=hash_key(token),
                    method=method,
                    api_key_id=key_id,
                    created_at=now,
                    last_seen_at=now,
                    expires_at=expires,
                )
            )
        return SignedIn(token, principal, expires)

    # --- using a session --------------------------------------------------------------

    def resolve(self, token: str) -> Principal:
        """The user of a live session; AuthenticationError if it ended or never was."""
        if not token.startswith(TOKEN_PREFIX) or len(token) > 128:
            raise AuthenticationError("Please sign in.")
        web = self.core.config.web
        now = utcnow()
        # A bare read (no ORM session; on SQLite not behind the writer lock): every page
        # asks this; only one in many also touches the session, in its own transaction.
        with self.core.sessions.read() as connection:
            row = connection.execute(
                select(
                    WebSession.id,
                    WebSession.last_seen_at,
                    WebSession.expires_at,
                    User.id,
                    User.username,
                    User.is_admin,
                )
                .join(User, User.id == WebSession.user_id)
                .outerjoin(ApiKey, ApiKey.id == WebSession.api_key_id)
                .where(
                    WebSession.token_hash == hash_key(token),
                    WebSession.revoked_at.is_(None),
                    User.is_active,
                    or_(WebSession.api_key_id.is_(None), ApiKey.is_active),
                )
            ).first()
        if row is None:
            raise AuthenticationError("Please sign in.")
        session_id, last_seen, expires, user_id, username, is_admin = row
        idle_end = last_seen + timedelta(seconds=web.session_idle_s)
        if now >= expires or now >= idle_end:
            raise AuthenticationError("Your session has ended: please sign in again.")
        if (now - last_seen).total_seconds() >= web.session_touch_s:
            with self.core.sessions.transaction() as connection:
                connection.execute(
                    update(WebSession).where(WebSession.id == session_id).values(last_seen_at=now)
                )
        return Principal(user_id, username, bool(is_admin))

    def sign_out(self, token: str) -> None:
        """End the session of *token* (nothing happens for an unknown one)."""
        with self.core.sessions.begin() as session:
            session.execute(
                update(WebSession)
                .where(WebSession.token_hash == hash_key(token), WebSession.revoked_at.is_(None))
                .values(revoked_at=utcnow())
            )

    def logout_all(self, username: str) -> int:
        """End every session of user *username*; how many were live. NotFoundError if
        there is no such user."""
        now = utcnow()
        with self.core.sessions.begin() as session:
            user_id = session.execute(select(User.id).where(User.username == username)).scalar()
            if user_id is None:
                raise NotFoundError(f"no user named {username!r}")
            result = session.execute(
                update(WebSession)
                .where(
                    WebSession.user_id == user_id,
                    WebSession.revoked_at.is_(None),
                    WebSession.expires_at > now,
                )
                .values(revoked_at=now)
            )
            return int(result.rowcount or 0)  # type: ignore[attr-defined]

    def purge_ended(self, limit: int = PURGE_BATCH) -> int:
        """Delete up to *limit* rows of ended sessions; how many went.

        Ended: signed out or revoked, past the absolute end (``session_max_s``) or the
        idle end (``session_idle_s`` after the last request written), or signed in
        with an API key since revoked (for good: a revoked key never comes back). A
        deactivated user's sessions stay: reactivating the user resumes them, as
        ``resolve`` decides. The ids are read first, so a beat with nothing to
        purge costs one read and never takes SQLite's write lock; the DELETE repeats
        no condition (an ended session never lives again), so several daemons
        purging at once just delete fewer rows each."""
        now = utcnow()
        idle_cutoff = now - timedelta(seconds=self.core.config.web.session_idle_s)
        revoked_keys = select(ApiKey.id).where(ApiKey.is_active.is_(False))
        with self.core.sessions.begin() as session:
            ids = list(
                session.execute(
                    select(WebSession.id)
                    .where(
                        or_(
                            WebSession.revoked_at.is_not(None),
                            WebSession.expires_at <= now,
                            WebSession.last_seen_at <= idle_cutoff,
                            WebSession.api_key_id.in_(revoked_keys),
                        )
                    )
                    .limit(limit)
                ).scalars()
            )
            if not ids:
                return 0
            result = session.execute(delete(WebSession).where(WebSession.id.in_(ids)))
            return int(result.rowcount or 0)  # type: ignore[attr-defined]

    def live_sessions(self, principal: Principal) -> list[SessionInfo]:
        """The caller's sessions not revoked nor past their absolute end, newest first."""
        now = utcnow()
        with self.core.sessions.begin() as session:
            rows = session.execute(
                select(WebSession)
                .where(
                    WebSession.user_id == principal.user_id,
                    WebSession.revoked_at.is_(None),
                    WebSession.expires_at > now,
                )
                .order_by(WebSession.created_at.desc())
            ).scalars()
            return [
                SessionInfo(s.id, s.method, s.created_at, s.last_seen_at, s.expires_at)
                for s in rows
            ]
