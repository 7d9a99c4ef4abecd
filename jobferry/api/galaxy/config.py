"""``/api/version``, ``/api/whoami``, ``/api/configuration``, ``/api/authenticate/baseauth``."""

from __future__ import annotations

import asyncio
import random
from typing import Any

from jobferry import __version__, errors
from jobferry.api.base import decode_baseauth
from jobferry.api.galaxy.common import GalaxyResource, route
from jobferry.api.galaxy.formats import GALAXY_VERSION_MAJOR, GALAXY_VERSION_MINOR
from jobferry.api.galaxy.users_json import user_brief
from jobferry.services.core import Principal

#: Seconds a failed password check is held back (spread a little), against guessing.
FAILURE_DELAY_S = (0.3, 0.6)
#: ``view=`` values of ``GET /api/configuration``.
CONFIG_VIEWS = frozenset({"all"})


class VersionHandler(GalaxyResource):
    def get(self) -> None:
        self.send_json(
            {"version_major": GALAXY_VERSION_MAJOR, "version_minor": GALAXY_VERSION_MINOR}
        )


class WhoamiHandler(GalaxyResource):
    async def get(self) -> None:
        if self.presented_key() is None:
            self.send_json(None)  # Galaxy's answer for an anonymous caller
            return
        principal = await self.authenticate()
        user = await self.call(self.services.users.current, principal)
        self.send_json(user_brief(user))


class ConfigurationHandler(GalaxyResource):
    async def get(self) -> None:
        principal = await self.authenticate() if self.presented_key() is not None else None
        view = self.arg("view") or ""
        if view and view not in CONFIG_VIEWS:
            raise errors.ValidationError(
                f"unknown view {view[:40]!r}", errors={"view": [f"Unknown view {view[:40]!r}."]}
            )
        data = self._settings(principal)
        keys = self.list_arg("keys")
        if keys:
            data = {k: data[k] for k in keys if k in data}
        self.send_json(data)

    def _settings(self, principal: Principal | None) -> dict[str, Any]:
        config = self.core.config
        admin = principal is not None and principal.is_admin
        data: dict[str, Any] = {
            "brand": "jobferry",
            "version_major": GALAXY_VERSION_MAJOR,
            "version_minor": GALAXY_VERSION_MINOR,
            "version_extra": None,
            "is_admin_user": admin,
            "allow_user_creation": False,
            "allow_user_dataset_purge": False,
            "use_remote_user": False,
            "remote_user_logout_href": None,
            "enable_quotas": False,
            "enable_oidc": False,
            "enable_unique_workflow_defaults": False,
            "require_login": True,
            "server_mail_configured": False,
            "server_startttime": self.services.started,
            "message_box_visible": False,
            "message_box_content": None,
            "message_box_class": "info",
            "logo_url": None,
            "logo_src": None,
            "terms_url": None,
            "wiki_url": None,
            "support_url": None,
            "citation_url": None,
            "helpsite_url": None,
            "inactivity_box_content": None,
            "single_user": False,
            "ftp_upload_site": None,
            "datatypes_disable_auto": True,
            "upload_from_form_button": "always-off",
            "nginx_upload_path": None,
            "chunk_upload_size": 0,
            "simplified_workflow_run_ui": "off",
            "jobferry_version": __version__,
        }
        if admin:
            data.update(
                {
                    "allow_user_deletion": False,
                    "allow_user_impersonation": False,
                    "allow_library_path_paste": False,
                    "library_import_dir": None,
                    "user_library_import_dir": None,
                    "expose_user_email": True,
                    "expose_user_name": True,
                    "jobferry_local_slots": config.local_slots,
                    "jobferry_max_upload_mb": config.server.max_upload_mb,
                    "jobferry_default_walltime_s": config.jobs.default_walltime_s,
                    "jobferry_files_grace_s": config.jobs.files_grace_s,
                }
            )
        return data


class BaseAuthHandler(GalaxyResource):
    """HTTP basic credentials (email or username, password) -> a new API key."""

    async def get(self) -> None:
        header = self.request.headers.get("Authorization", "").strip()
        if not header:
            raise errors.RequestError("Authentication is missing")
        identity, password = decode_baseauth(header)
        try:
            key = await self.call(
                self.services.users.baseauth_key, identity, password, self.request.remote_ip or ""
            )
        except errors.InvalidCredentialsError:
            await asyncio.sleep(random.uniform(*FAILURE_DELAY_S))
            raise
        self.send_json({"api_key": key})


def config_routes(init: dict[str, Any]) -> list[Any]:
    return [
        (route(r"/api/version"), VersionHandler, init),
        (route(r"/api/whoami"), WhoamiHandler, init),
        (route(r"/api/configuration"), ConfigurationHandler, init),
        (route(r"/api/authenticate/baseauth"), BaseAuthHandler, init),
    ]
