""" "My API keys": create (the key is shown once), list with last use, revoke.

Over ``AuthService`` (the same keys the CLI's ``key`` commands manage).
"""

from __future__ import annotations

from typing import Any

from jobferry.services.auth import KeyInfo
from jobferry.web.base import UI, WebHandler, signed_in

#: The longest key name accepted here (names tell a person's keys apart).
MAX_NAME = 100


class KeysHandler(WebHandler):
    """``/ui/keys``: the caller's keys (GET) and a new one (POST)."""

    async def my_keys(self) -> list[KeyInfo]:
        assert self.principal is not None
        keys: list[KeyInfo] = await self.call(self.services.auth.list_keys, self.principal.username)
        return sorted(keys, key=lambda k: (not k.is_active, k.created_at))

    async def show(self, status: int = 200, **kwargs: Any) -> None:
        kwargs.setdefault("new_key", None)
        kwargs.setdefault("new_name", "")
        kwargs.setdefault("field_errors", {})
        kwargs.setdefault("notice", "")
        self.set_status(status)
        self.render_page(
            "keys.html",
            title="API keys",
            nav="keys",
            css=("keys.css",),
            keys=await self.my_keys(),
            **kwargs,
        )

    @signed_in
    async def get(self) -> None:
        notice = "The key was revoked." if self.get_query_argument("revoked", "") else ""
        await self.show(notice=notice)

    @signed_in
    async def post(self) -> None:
        assert self.principal is not None
        name = self.get_body_argument("name", "").strip()
        if not name:
            await self.show(400, field_errors={"name": "Give the key a name."})
            return
        if len(name) > MAX_NAME:
            problem = f"At most {MAX_NAME} characters."
            await self.show(400, new_name=name, field_errors={"name": problem})
            return
        info, key = await self.call(self.services.auth.create_key, self.principal.username, name)
        await self.show(201, new_key=key, new_key_info=info)


class RevokeKeyHandler(WebHandler):
    """``POST /ui/keys/<id>/revoke``."""

    @signed_in
    async def post(self, key_id: str) -> None:
        await self.call(self.services.auth.revoke_key, key_id, self.principal)
        self.redirect(f"{UI}/keys?revoked=1", status=303)


def key_routes(s: dict[str, Any]) -> list[tuple[str, type, dict[str, Any]]]:
    return [
        (rf"{UI}/keys", KeysHandler, s),
        (rf"{UI}/keys/([0-9a-f]{{1,32}})/revoke", RevokeKeyHandler, s),
    ]
