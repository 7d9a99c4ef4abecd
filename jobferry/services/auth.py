"""Users and API keys: creation, authentication, revocation.

Keys are 256-bit random tokens shown once; the store keeps their sha256 (no
salt is needed for random keys of this size, and it allows an indexed lookup).
``last_used_at`` is written at most once per ``api.key_last_used_resolution_s``
per key, so authenticated requests do not each cost a write.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError

from jobferry.errors import (
    AuthenticationError,
    ConflictError,
    InvalidKeyError,
    NotFoundError,
    PermissionDeniedError,
    ValidationError,
)
from jobferry.services.core import Core, Principal
from jobferry.store.models import ApiKey, User, utcnow

logger = logging.getLogger(__name__)

#: Name of the file in the data directory that holds the first admin's key.
ADMIN_KEY_FILE = "admin-api-key"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


def new_key() -> str:
    return "jf_" + secrets.token_urlsafe(32)


def placeholder_email(username: str) -> str:
    """The email of a user created without one: Galaxy's clients expect a string, and
    this one is stable (the same name gives the same address) and never delivered."""
    return f"{username}@localhost"


@dataclass(frozen=True)
class KeyInfo:
    id: str
    username: str
    name: str
    prefix: str
    is_active: bool
    created_at: datetime
    last_used_at: datetime | None


@dataclass(frozen=True)
class UserInfo:
    id: str
    username: str
    email: str
    is_admin: bool
    is_active: bool
    created_at: datetime


def _user_info(user: User) -> UserInfo:
    email = user.email or placeholder_email(user.username)  # rows migrated by 0007 have one
    return UserInfo(user.id, user.username, email, user.is_admin, user.is_active, user.created_at)


class AuthService:
    """Users, keys and the resolution of a presented key to a Principal."""

    def __init__(self, core: Core) -> None:
        self.core = core
        self._last_written: dict[str, float] = {}
        #: sha256 of a key -> (when verified, who); see api.key_cache_s.
        self._verified: dict[str, tuple[float, Principal]] = {}
        self._lock = threading.Lock()
        #: One store lookup per key at a time: when a key's cache entry expires under
        #: load, the requests waiting on it find the refreshed entry instead of each
        #: asking the store (striped by key, so different keys do not wait on each other).
        self._lookups = [threading.Lock() for _ in range(16)]

    # --- authentication ---------------------------------------------------------------

    def cached(self, key: str | None) -> Principal | None:
        """The principal for a key verified less than api.key_cache_s ago, else None.

        Non-blocking (a dict lookup), so the API calls it on the event loop and
        goes to the store (through the executor) only on a miss.
        """
        if not key or len(key) > 512:
            return None
        cached = self._verified.get(hash_key(key))
        if cached is not None and time.monotonic() - cached[0] < self.core.config.api.key_cache_s:
            return cached[1]
        return None

    def authenticate(self, key: str | None) -> Principal:
        """Resolve an API key. Raises AuthenticationError for a missing or bad key."""
        if not key or len(key) > 512:
            raise AuthenticationError()
        digest = hash_key(key)
        ttl = self.core.config.api.key_cache_s
        with self._lookups[hash(digest) % len(self._lookups)]:
            now = time.monotonic()
            cached = self._verified.get(digest)
            if cached is not None and now - cached[0] < ttl:
                return cached[1]
            principal = self._lookup(digest)
            if ttl > 0:
                if len(self._verified) > 10_000:
                    self._verified.clear()
                self._verified[digest] = (now, principal)
            return principal

    def _lookup(self, digest: str) -> Principal:
        with self.core.sessions.begin() as session:
            row = session.execute(
                select(ApiKey.id, User.id, User.username, User.is_admin)
                .join(User, User.id == ApiKey.user_id)
                .where(ApiKey.key_hash == digest, ApiKey.is_active, User.is_active)
            ).first()
            if row is None:
                raise InvalidKeyError()
            key_id, user_id, username, is_admin = row
            if self._due_for_write(key_id):
                session.execute(
                    update(ApiKey).where(ApiKey.id == key_id).values(last_used_at=utcnow())
                )
        return Principal(user_id=user_id, username=username, is_admin=bool(is_admin))

    def _due_for_write(self, key_id: str) -> bool:
        resolution = self.core.config.api.key_last_used_resolution_s
        now = time.monotonic()
        with self._lock:
            last = self._last_written.get(key_id)
            if last is not None and now - last < resolution:
                return False
            self._last_written[key_id] = now
            return True

    # --- users ------------------------------------------------------------------------

    def create_user(
        self, username: str, *, email: str | None = None, is_admin: bool = False
    ) -> tuple[UserInfo, str]:
        """Create a user and a first API key; return both (the key is shown once)."""
        username = username.strip()
        if not username or len(username) > 255 or any(c.isspace() for c in username):
            raise ValidationError(errors={"username": ["Enter a name without spaces."]})
        try:
            with self.core.sessions.begin() as session:
                email = (email or "").strip() or placeholder_email(username)
                user = User(username=username, email=email, is_admin=is_admin)
                session.add(user)
                session.flush()
                key = self._add_key(session, user.id, "default")
                info = _user_info(user)
        except IntegrityError as exc:
            raise ConflictError(f"a user named {username!r} (or with that email) exists") from exc
        return info, key

    def list_users(self) -> list[UserInfo]:
        with self.core.sessions.begin() as session:
            users = session.execute(select(User).order_by(User.created_at)).scalars().all()
            return [_user_info(u) for u in users]

    def get_user(self, username: str) -> UserInfo:
        with self.core.sessions.begin() as session:
            user = session.execute(select(User).where(User.username == username)).scalar()
            if user is None:
                raise NotFoundError(f"no user named {username!r}")
            return _user_info(user)

    def ensure_admin(self) -> Path | None:
        """On first start with no users, create ``admin`` and write its key to a 0600 file.

        Returns the file's path when an admin was created, else None.
        """
        with self.core.sessions.begin() as session:
            if session.execute(select(func.count()).select_from(User)).scalar_one():
                return None
        try:
            _, key = self.create_user("admin", is_admin=True)
        except ConflictError:
            return None  # another process won the race
        path = self.core.data_path / ADMIN_KEY_FILE
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(key + "\n")
        path.chmod(0o600)
        return path

    # --- keys -------------------------------------------------------------------------

    def _add_key(self, session: object, user_id: str, name: str) -> str:
        from sqlalchemy.orm import Session

        assert isinstance(session, Session)
        key = new_key()
        session.add(ApiKey(user_id=user_id, name=name, key_hash=hash_key(key), prefix=key[:12]))
        return key

    def create_key(self, username: str, name: str = "") -> tuple[KeyInfo, str]:
        with self.core.sessions.begin() as session:
            user = session.execute(select(User).where(User.username == username)).scalar()
            if user is None:
                raise NotFoundError(f"no user named {username!r}")
            key = self._add_key(session, user.id, name)
            session.flush()
            row = session.execute(
                select(ApiKey).where(ApiKey.key_hash == hash_key(key))
            ).scalar_one()
            info = KeyInfo(
                row.id, username, row.name, row.prefix, True, row.created_at, row.last_used_at
            )
        return info, key

    def list_keys(self, username: str | None = None) -> list[KeyInfo]:
        with self.core.sessions.begin() as session:
            stmt = select(ApiKey, User.username).join(User, User.id == ApiKey.user_id)
            if username is not None:
                stmt = stmt.where(User.username == username)
            rows = session.execute(stmt.order_by(ApiKey.created_at)).all()
            return [
                KeyInfo(k.id, uname, k.name, k.prefix, k.is_active, k.created_at, k.last_used_at)
                for k, uname in rows
            ]

    def revoke_key(self, key_id: str, principal: Principal | None = None) -> None:
        """Revoke a key by id. A non-admin principal may revoke only their own keys."""
        with self.core.sessions.begin() as session:
            key = session.get(ApiKey, key_id)
            if key is None:
                raise NotFoundError(f"no API key with id {key_id!r}")
            if (
                principal is not None
                and not principal.is_admin
                and key.user_id != principal.user_id
            ):
                raise PermissionDeniedError("You may revoke only your own keys.")
            key.is_active = False
            key.revoked_at = utcnow()
            self._verified.pop(key.key_hash, None)

    def forget(self, key_hashes: list[str]) -> None:
        """Drop revoked keys from this daemon's cache, so they stop working at once."""
        for digest in key_hashes:
            self._verified.pop(digest, None)
