"""Users as the Galaxy face sees them: passwords, baseauth, user records, new keys.

Creating users without a password and managing keys by name stay in
``AuthService``; this service adds what needs a password or a user id.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import unquote

from sqlalchemy import func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from jobferry.errors import (
    AdminRequiredError,
    ConflictError,
    InvalidCredentialsError,
    NotFoundError,
    PermissionDeniedError,
    ValidationError,
)
from jobferry.services.auth import AuthService, hash_key, new_key, placeholder_email
from jobferry.services.core import Core, Principal
from jobferry.services.passwords import check_password_rules, hash_password, verify_password
from jobferry.services.ratelimit import FailureLimiter
from jobferry.store.models import ApiKey, Job, JobFile, User, WebSession, utcnow

logger = logging.getLogger(__name__)

#: Name given to keys created by ``GET /api/authenticate/baseauth``.
BASEAUTH_KEY_NAME = "baseauth"
#: The one answer to bad credentials, whether the user exists or not.
BAD_CREDENTIALS = "Invalid email, username or password."

_dummy: list[str] = []


def _dummy_hash() -> str:
    """A real hash of a random password, to verify against when there is no user."""
    if not _dummy:
        _dummy.append(hash_password(new_key()))
    return _dummy[0]


@dataclass(frozen=True)
class UserRecord:
    id: str
    username: str
    email: str
    is_admin: bool
    is_active: bool
    created_at: datetime
    password_changed_at: datetime | None
    #: Bytes of job files (inputs and outputs) of the user's jobs.
    disk_usage: int = 0


def _record(user: User, disk_usage: int = 0) -> UserRecord:
    return UserRecord(
        id=user.id,
        username=user.username,
        email=user.email or placeholder_email(user.username),
        is_admin=bool(user.is_admin),
        is_active=bool(user.is_active),
        created_at=user.created_at,
        password_changed_at=user.password_changed_at,
        disk_usage=int(disk_usage or 0),
    )


def _disk_usage(session: Session, user_ids: list[str]) -> dict[str, int]:
    if not user_ids:
        return {}
    rows = session.execute(
        select(Job.user_id, func.coalesce(func.sum(JobFile.size), 0))
        .join(JobFile, JobFile.job_id == Job.id)
        .where(Job.user_id.in_(user_ids))
        .group_by(Job.user_id)
    ).all()
    return {user_id: int(total) for user_id, total in rows}


class UserService:
    def __init__(self, core: Core, auth: AuthService) -> None:
        self.core = core
        self.auth = auth
        #: Failed baseauth attempts per identity and per client address (in memory).
        self.failures = FailureLimiter(core.config.api.baseauth_failures_per_minute, 60.0)

    # --- passwords --------------------------------------------------------------------

    def set_password(self, username: str, password: str) -> int:
        """Set (or replace) a user's password, and end the user's browser sessions that
        signed in with a password (the old one); how many were live.

        In the same transaction: no session signed in with the old password outlives
        the change. Sessions signed in with an API key stay (revoking the key ends
        them). Raises NotFoundError, ValidationError."""
        hashed = hash_password(password)
        with self.core.sessions.begin() as session:
            user = session.execute(select(User).where(User.username == username)).scalar()
            if user is None:
                raise NotFoundError(f"no user named {username!r}")
            now = utcnow()
            user.password_hash = hashed
            user.password_changed_at = now
            ended = session.execute(
                update(WebSession)
                .where(
                    WebSession.user_id == user.id,
                    WebSession.method == "password",
                    WebSession.revoked_at.is_(None),
                    WebSession.expires_at > now,
                )
                .values(revoked_at=now)
            )
            return int(ended.rowcount or 0)  # type: ignore[attr-defined]

    def verify_credentials(self, identity: str, password: str) -> UserRecord:
        """The user whose email or username is *identity*, if *password* is theirs.

        Galaxy URL-unquotes both parts of the basic credentials; a client that
        did not quote them is served too (the raw form is tried first).
        Raises InvalidCredentialsError, the same for an unknown user as for a wrong
        password (Galaxy answers 404 for the former, which tells who has an
        account); an unknown user costs a password hash too, so timing does not tell.
        """
        identities = [identity] + ([unquote(identity)] if "%" in identity else [])
        passwords = [password] + ([unquote(password)] if "%" in password else [])
        with self.core.sessions.begin() as session:
            user = None
            for candidate in identities:
                user = session.execute(
                    select(User)
                    .where(or_(User.email == candidate, User.username == candidate))
                    .order_by(User.username == candidate)  # an email match first
                    .limit(1)
                ).scalar()
                if user is not None:
                    break
            record = _record(user) if user is not None else None
            stored = user.password_hash if user is not None else None
        if record is None or not stored:
            stored = _dummy_hash()  # the same work as for a real user
        if not any(verify_password(p, stored) for p in passwords) or record is None:
            raise InvalidCredentialsError(BAD_CREDENTIALS)
        if not record.is_active:
            raise InvalidCredentialsError(
                "User account is deactivated, please contact an administrator."
            )
        return record

    def baseauth_key(self, identity: str, password: str, client: str = "") -> str:
        """A new API key (named "baseauth") for the user the credentials name.

        Keys are stored hashed, so an existing one cannot be handed back. Failed
        attempts are counted per identity and per *client* address; past
        ``api.baseauth_failures_per_minute`` either answers TooManyRequestsError
        without looking at the password, so guessing is slowed to that rate.
        """
        counted = (f"user:{unquote(identity).casefold()}", f"addr:{client}")
        self.failures.check(*counted)
        try:
            record = self.verify_credentials(identity, password)
        except InvalidCredentialsError:
            self.failures.failed(*counted)
            raise
        self.failures.forget(counted[0])
        with self.core.sessions.begin() as session:
            return self._add_key(session, record.id, BASEAUTH_KEY_NAME)

    # --- records ----------------------------------------------------------------------

    def _load(self, session: Session, user_id: str) -> User:
        user = session.get(User, user_id)
        if user is None:
            raise NotFoundError("No such user found.")
        return user

    def get(self, principal: Principal, user_id: str) -> UserRecord:
        """A user the principal may see: themselves, or anyone for an admin."""
        if not principal.is_admin and user_id != principal.user_id:
            raise PermissionDeniedError("You are not allowed to view this user.")
        with self.core.sessions.begin() as session:
            user = self._load(session, user_id)
            return _record(user, _disk_usage(session, [user.id]).get(user.id, 0))

    def current(self, principal: Principal) -> UserRecord:
        return self.get(principal, principal.user_id)

    def list_users(
        self,
        principal: Principal,
        *,
        deleted: bool = False,
        f_email: str | None = None,
        f_name: str | None = None,
        f_any: str | None = None,
    ) -> list[UserRecord]:
        """Active (or, with *deleted*, deactivated) users; a non-admin sees only themselves."""
        if deleted and not principal.is_admin:
            raise AdminRequiredError("Only admins can list deleted users.")
        stmt = select(User).where(User.is_active.is_(not deleted))
        if not principal.is_admin:
            stmt = stmt.where(User.id == principal.user_id)
        if f_email:
            stmt = stmt.where(User.email.contains(f_email, autoescape=True))
        if f_name:
            stmt = stmt.where(User.username.contains(f_name, autoescape=True))
        if f_any:
            stmt = stmt.where(
                or_(
                    User.email.contains(f_any, autoescape=True),
                    User.username.contains(f_any, autoescape=True),
                )
            )
        with self.core.sessions.begin() as session:
            users = session.execute(stmt.order_by(User.created_at, User.id)).scalars().all()
            usage = _disk_usage(session, [u.id for u in users])
            return [_record(u, usage.get(u.id, 0)) for u in users]

    def create(
        self, principal: Principal, username: str, email: str | None, password: str | None
    ) -> UserRecord:
        """Create a local user with a password (admins only). No key is made."""
        if not principal.is_admin:
            raise AdminRequiredError("Only admins can create users.")
        username = (username or "").strip()
        problems: dict[str, list[str]] = {}
        if not username or len(username) > 255 or any(c.isspace() for c in username):
            problems["username"] = ["Enter a name without spaces."]
        email = (email or "").strip() or None
        if email is not None and ("@" not in email or len(email) > 255):
            problems["email"] = ["Enter a valid email address."]
        if not password:
            problems["password"] = ["A password is required."]
        if problems:
            raise ValidationError(
                "; ".join(f"{k}: {v[0]}" for k, v in problems.items()), errors=problems
            )
        assert password is not None
        check_password_rules(password)
        hashed = hash_password(password)
        try:
            with self.core.sessions.begin() as session:
                user = User(
                    username=username,
                    email=email or placeholder_email(username),
                    password_hash=hashed,
                    password_changed_at=utcnow(),
                    is_admin=False,
                )
                session.add(user)
                session.flush()
                return _record(user)
        except IntegrityError as exc:
            raise ConflictError(
                f"a user named {username!r} (or with that email) already exists"
            ) from exc

    # --- keys -------------------------------------------------------------------------

    def _add_key(self, session: Session, user_id: str, name: str) -> str:
        key = new_key()
        session.add(ApiKey(user_id=user_id, name=name, key_hash=hash_key(key), prefix=key[:12]))
        return key

    def _key_owner(self, session: Session, principal: Principal, user_id: str) -> User:
        """The active user *principal* may make keys for: themself, or anyone for an admin."""
        if not principal.is_admin and user_id != principal.user_id:
            raise PermissionDeniedError("You can create keys only for yourself.")
        user = self._load(session, user_id)
        if not user.is_active:
            raise ConflictError("The user account is deactivated.")
        return user

    def new_key(self, principal: Principal, user_id: str, name: str = "api") -> str:
        """A new API key for a user: their own, or anyone's for an admin."""
        with self.core.sessions.begin() as session:
            user = self._key_owner(session, principal, user_id)
            return self._add_key(session, user.id, name)

    def replace_key(self, principal: Principal, user_id: str) -> str:
        """A new API key for a user that replaces all their others, as Galaxy's
        ``POST /api/users/{id}/api_key`` does: the old keys stop working at once
        (on other nodes within ``api.key_cache_s``). The CLI's ``key create`` adds."""
        with self.core.sessions.begin() as session:
            user = self._key_owner(session, principal, user_id)
            old = (
                session.execute(select(ApiKey).where(ApiKey.user_id == user.id, ApiKey.is_active))
                .scalars()
                .all()
            )
            now = utcnow()
            for row in old:
                row.is_active = False
                row.revoked_at = now
            key = self._add_key(session, user.id, "api")
        self.auth.forget([row.key_hash for row in old])
        return key

    def key_matches_user(self, key: str, user_id: str) -> bool:
        """True if *key* is an active key of *user_id* (to hand a caller's own key back)."""
        with self.core.sessions.begin() as session:
            found = session.execute(
                select(ApiKey.id).where(
                    ApiKey.key_hash == hash_key(key), ApiKey.user_id == user_id, ApiKey.is_active
                )
            ).first()
        return found is not None
