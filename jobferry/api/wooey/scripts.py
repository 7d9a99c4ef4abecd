"""The Wooey face's script routes: add-or-update (a streamed upload), list, detail."""

from __future__ import annotations

from jobferry import errors
from jobferry.api.wooey.base import MANAGE_SCRIPTS, StreamingFormHandler, WooeyHandler
from jobferry.services.scripts import ScriptUpload


class AddOrUpdateScriptHandler(StreamingFormHandler):
    admin_only = True

    async def post(self) -> None:
        form = self.complete_body()
        if form is None:
            return
        assert self.principal is not None
        uploads = [ScriptUpload(f.field, f.path, f.filename) for f in form.files]
        default_text = (form.field("default") or "").strip().lower()
        results = await self.call(
            self.services.scripts.add_or_update,
            self.principal,
            uploads,
            group=form.field("group") or None,
            default=default_text not in ("false", "0", "no", "off"),
            description=form.field("script_description"),
        )
        self.send_json(results)


class ScriptListHandler(WooeyHandler):
    async def get(self) -> None:
        principal = await self.authenticate()
        if not principal.is_admin:
            raise errors.PermissionDeniedError(MANAGE_SCRIPTS)
        scripts = await self.call(self.services.scripts.list_scripts)
        self.send_json({"valid": True, "scripts": scripts})


class ScriptDetailHandler(WooeyHandler):
    async def get(self, slug: str) -> None:
        principal = await self.authenticate()
        if not principal.is_admin:
            raise errors.PermissionDeniedError(MANAGE_SCRIPTS)
        script = await self.call(self.services.scripts.get_script, slug)
        self.send_json({"valid": True, "script": script})
