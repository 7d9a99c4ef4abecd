"""The store's schema and the first admin, for the admin command line.

The CLI works on the store directly (no daemon needs to run), but it never
touches the store itself: whether the schema is at head, migrating it, and who
the CLI acts as (the first admin, created on a fresh store) are asked here.
The daemon checks the schema on its own start-up (``daemon/server.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select

from jobferry.errors import NotFoundError
from jobferry.services.auth import AuthService
from jobferry.services.core import Core, Principal
from jobferry.store import engine as schema
from jobferry.store.models import User


@dataclass(frozen=True)
class SchemaStatus:
    """Where the store's schema is, against the head revision of this jobferry."""

    #: The database URL as shown to people (any password hidden).
    database: str
    #: The store's revision (None: no schema at all).
    current: str | None
    head: str

    @property
    def up_to_date(self) -> bool:
        return self.current == self.head


@dataclass(frozen=True)
class SchemaUpgrade:
    """What ``upgrade_schema`` did: the revision before and after, on *database*."""

    database: str
    before: str | None
    after: str


class AdminService:
    """Schema status and migration, and the admin the CLI acts as. Blocking."""

    def __init__(self, core: Core, auth: AuthService) -> None:
        self.core = core
        self.auth = auth

    def _database(self) -> str:
        return schema.display_url(self.core.config.database_url)

    def check_schema(self) -> None:
        """Refuse a store whose schema is not at head (a new, empty one is created).

        Raises SchemaOutOfDateError naming the command that fixes it.
        """
        schema.check_schema(self.core.engine)

    def schema_status(self) -> SchemaStatus:
        """The store's revision and this jobferry's head (never changes the store)."""
        current = schema.current_revision(self.core.engine)
        return SchemaStatus(self._database(), current, schema.head_revision())

    def upgrade_schema(self) -> SchemaUpgrade:
        """Migrate the store to head (idempotent). Raises SchemaOutOfDateError for a
        revision this jobferry does not know, StoreError when a migration fails."""
        before, after = schema.upgrade_schema(self.core.engine)
        return SchemaUpgrade(self._database(), before, after)

    def acting_admin(self) -> Principal:
        """Who the CLI acts as: the first admin user (``admin`` is created on a store
        with no users at all). Raises NotFoundError when users exist but no admin."""
        self.auth.ensure_admin()
        with self.core.sessions.begin() as session:
            user = session.execute(
                select(User).where(User.is_admin).order_by(User.created_at).limit(1)
            ).scalar()
        if user is None:
            raise NotFoundError(
                "no admin user exists; create one with 'jobferry user create --admin'"
            )
        return Principal(user.id, user.username, True)
