"""``/api/users``: list, show (``current``), create (admins), API keys."""

from __future__ import annotations

from typing import Any

from jobferry.api.galaxy.common import GalaxyResource, route
from jobferry.api.galaxy.users_json import user_brief, user_detail
from jobferry.services.core import Principal
from jobferry.services.galaxy import check_id


class _UserListHandler(GalaxyResource):
    deleted = False

    async def get(self) -> None:
        principal = await self.authenticate()
        users = await self.call(
            self.services.users.list_users,
            principal,
            deleted=self.deleted or self.flag("deleted"),
            f_email=self.arg("f_email"),
            f_name=self.arg("f_name"),
            f_any=self.arg("f_any"),
        )
        self.send_json([user_brief(u) for u in users])


class UsersHandler(_UserListHandler):
    """``GET /api/users`` and ``POST /api/users`` (admins: a local user)."""

    async def post(self) -> None:
        principal = await self.authenticate()
        payload = self.payload()
        user = await self.call(
            self.services.users.create,
            principal,
            str(payload.get("username") or ""),
            str(payload.get("email") or "") or None,
            str(payload.get("password") or "") or None,
        )
        self.send_json(user_detail(user))


class DeletedUsersHandler(_UserListHandler):
    """``GET /api/users/deleted``: deactivated users (admins)."""

    deleted = True


def _user_id(principal: Principal, user_id: str) -> str:
    return principal.user_id if user_id == "current" else check_id(user_id, "user")


class UserHandler(GalaxyResource):
    """``GET /api/users/{id}``, ``/api/users/current``, ``/api/users/deleted/{id}``."""

    async def get(self, user_id: str) -> None:
        principal = await self.authenticate()
        user = await self.call(self.services.users.get, principal, _user_id(principal, user_id))
        self.send_json(user_detail(user))


class UserKeyHandler(GalaxyResource):
    """``POST /api/users/{id}/api_key``: a new key replacing the user's others; ``GET``: the
    caller's own key when they ask for themselves (keys are stored hashed), else a new one."""

    async def get(self, user_id: str) -> None:
        principal = await self.authenticate()
        target = _user_id(principal, user_id)
        key = self.presented_key()
        if target == principal.user_id and key is not None:
            if await self.call(self.services.users.key_matches_user, key, target):
                self.send_json(key)
                return
        self.send_json(await self.call(self.services.users.new_key, principal, target, "api"))

    async def post(self, user_id: str) -> None:
        principal = await self.authenticate()
        self.payload()  # bioblend sends {"user_id": ...}; size-checked, not needed
        target = _user_id(principal, user_id)
        # Galaxy replaces the user's key: the old one stops working.
        self.send_json(await self.call(self.services.users.replace_key, principal, target))


class UserKeyDetailHandler(GalaxyResource):
    """``GET /api/users/{id}/api_key/detailed``: the caller's own key, else 204 (Galaxy's
    answer when there is no key to show)."""

    async def get(self, user_id: str) -> None:
        principal = await self.authenticate()
        target = _user_id(principal, user_id)
        key = self.presented_key()
        if target == principal.user_id and key is not None:
            self.send_json({"key": key, "create_time": None})
            return
        await self.call(self.services.users.get, principal, target)  # 403/404 as for show
        self.set_status(204)
        self.finish()


def user_routes(init: dict[str, Any]) -> list[Any]:
    user = r"/api/users/(?:deleted/)?([^/]+)"
    return [
        (route(r"/api/users"), UsersHandler, init),
        (route(r"/api/users/deleted"), DeletedUsersHandler, init),
        (route(user), UserHandler, init),
        (route(r"/api/users/([^/]+)/api_key"), UserKeyHandler, init),
        (route(r"/api/users/([^/]+)/api_key/detailed"), UserKeyDetailHandler, init),
    ]
