"""Registering scripts (Wooey's add-or-update) and reading them back.

A script is identified by its name; its group only files it (registering it
under another group moves it there). Its slug is globally unique and never
changes. Each distinct content is one version; identical content creates
nothing new. The parser is read in a separate, time-limited process
(``jobferry.argspec.introspect``): the script is never imported here.
"""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from jobferry.argspec.introspect import introspect_script
from jobferry.errors import (
    IntrospectionError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    ValidationError,
)
from jobferry.services.core import Core, Principal
from jobferry.store.models import Script, ScriptVersion, utcnow

logger = logging.getLogger(__name__)

_SLUG_STRIP = re.compile(r"[^a-z0-9_-]+")


def slugify(name: str) -> str:
    slug = _SLUG_STRIP.sub("-", name.lower()).strip("-")
    return slug[:200] or "script"


@dataclass(frozen=True)
class ScriptUpload:
    """One uploaded script: its name (the multipart field), where it lies, its file name."""

    name: str
    path: Path
    filename: str


def require_admin(principal: Principal) -> None:
    if not principal.is_admin:
        raise PermissionDeniedError("You do not have permission to manage scripts.")


class ScriptService:
    def __init__(self, core: Core) -> None:
        self.core = core

    # --- registering ------------------------------------------------------------------

    def add_or_update(
        self,
        principal: Principal,
        uploads: list[ScriptUpload],
        *,
        group: str | None = None,
        default: bool = True,
        description: str | None = None,
    ) -> list[dict[str, Any]]:
        """Register each uploaded script; one result per upload, in order (Wooey's shape)."""
        require_admin(principal)
        if not uploads:
            raise ValidationError(errors={"script_file": ["A script file is required."]})
        self.core.scripts_generation += 1
        try:
            results = []
            for up in uploads:
                result = self._add_one(
                    principal, up, group=group, default=default, description=description
                )
                _log_registration(principal, result)
                results.append(result)
            return results
        finally:
            # Again after the change: a submission that cached meanwhile saw the old one.
            self.core.scripts_generation += 1

    def _add_one(
        self,
        principal: Principal,
        upload: ScriptUpload,
        *,
        group: str | None,
        default: bool,
        description: str | None,
    ) -> dict[str, Any]:
        name = upload.name.strip()
        try:
            if not name or len(name) > 255:
                raise ValidationError("a script needs a name of 1 to 255 characters")
            size = upload.path.stat().st_size
            if size > self.core.config.scripts.max_script_kb * 1024:
                raise PayloadTooLargeError(
                    f"the script is {size} bytes; scripts.max_script_kb allows "
                    f"{self.core.config.scripts.max_script_kb} KiB"
                )
            checksum = hashlib.sha256(upload.path.read_bytes()).hexdigest()
            existing = self._find_version(name, group, checksum, default)
            if existing is not None:
                return existing
            spec = introspect_script(
                str(upload.path),
                interpreter=self.core.config.interpreter,
                timeout_s=self.core.config.scripts.introspection_timeout_s,
                memory_mb=self.core.config.scripts.introspection_memory_mb,
                user=self.core.config.scripts.introspection_user,
            )
        except IntrospectionError as exc:
            return {"script": name, "success": False, "errors": f"ParserError: {exc.message}"}
        except (ValidationError, PayloadTooLargeError) as exc:
            return {"script": name, "success": False, "errors": exc.message}
        for _ in range(3):  # a concurrent upload may take our iteration number: retry
            try:
                return self._store_version(
                    principal, upload, name, group, default, description, checksum, spec.to_dict()
                )
            except IntegrityError:
                continue
        return {"script": name, "success": False, "errors": "concurrent update; try again"}

    def _script_for(self, session: Session, name: str, group: str | None) -> Script | None:
        """The script *name*: the one in *group* if given and there, else the only one of
        that name (to be moved to *group* by ``_regroup``), else None. Registering a
        script under another group regroups it, never makes a ``NAME-2`` twin; two
        scripts of that name elsewhere (older data) are refused as ambiguous."""
        stmt = select(Script).where(Script.name == name).order_by(Script.created_at, Script.id)
        if group is None:
            return session.execute(stmt.limit(1)).scalar()
        scripts = list(session.execute(stmt).scalars())
        for script in scripts:
            if script.group_name == group:
                return script
        if len(scripts) > 1:
            groups = ", ".join(sorted(s.group_name for s in scripts))
            raise ValidationError(
                f"scripts named {name!r} exist in several groups ({groups}); "
                f"cannot tell which one to move to group {group!r}"
            )
        return scripts[0] if scripts else None

    def _regroup(self, script: Script, group: str | None) -> None:
        if group is not None and script.group_name != group:
            logger.info(
                "script %s moved from group %r to %r", script.slug, script.group_name, group
            )
            script.group_name = group
            script.updated_at = utcnow()

    def _find_version(
        self, name: str, group: str | None, checksum: str, default: bool
    ) -> dict[str, Any] | None:
        """Identical content re-uploaded: nothing new; made default again if asked."""
        with self.core.sessions.begin() as session:
            script = self._script_for(session, name, group)
            if script is None:
                return None
            version = session.execute(
                select(ScriptVersion).where(
                    ScriptVersion.script_id == script.id, ScriptVersion.checksum == checksum
                )
            ).scalar()
            if version is None:
                return None
            self._regroup(script, group)
            if default and not version.is_default:
                self._make_default(session, script.id, version.id)
                version.is_default = True
            return _result(script, version, created=False)

    def _make_default(self, session: Session, script_id: str, version_id: str) -> None:
        session.execute(
            update(ScriptVersion)
            .where(ScriptVersion.script_id == script_id)
            .values(is_default=ScriptVersion.id == version_id)
        )

    def _store_version(
        self,
        principal: Principal,
        upload: ScriptUpload,
        name: str,
        group: str | None,
        default: bool,
        description: str | None,
        checksum: str,
        spec: dict[str, Any],
    ) -> dict[str, Any]:
        with self.core.sessions.begin() as session:
            script = self._script_for(session, name, group)
            if script is None:
                script = Script(
                    slug=self._free_slug(session, name),
                    name=name,
                    group_name=group or self.core.config.scripts.default_group,
                    description=description or spec.get("description"),
                    created_by=principal.user_id,
                )
                session.add(script)
                session.flush()
                default = True  # a new script's first version is always the default
            else:
                self._regroup(script, group)
                if description is not None:
                    script.description = description
            version_str = str(spec.get("version") or "1")
            last = session.execute(
                select(func.max(ScriptVersion.iteration)).where(
                    ScriptVersion.script_id == script.id, ScriptVersion.version == version_str
                )
            ).scalar()
            dest = self.core.scripts_path / script.id / f"{checksum}.py"
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_suffix(".part")
            shutil.copyfile(upload.path, tmp)
            tmp.replace(dest)
            version = ScriptVersion(
                script_id=script.id,
                version=version_str,
                iteration=(last or 0) + 1,
                checksum=checksum,
                path=str(dest),
                description=spec.get("description"),
                spec=spec,
                is_default=False,
                created_by=principal.user_id,
            )
            session.add(version)
            session.flush()
            if default:
                self._make_default(session, script.id, version.id)
                version.is_default = True
            script.updated_at = utcnow()
            return _result(script, version, created=True)

    def _free_slug(self, session: Session, name: str) -> str:
        base = slugify(name)
        if base in ("list", "add-or-update"):
            base = f"{base}-script"
        taken = set(
            session.execute(select(Script.slug).where(Script.slug.like(f"{base}%"))).scalars()
        )
        slug, n = base, 1
        while slug in taken:
            n += 1
            slug = f"{base}-{n}"
        return slug

    # --- reading ----------------------------------------------------------------------

    def list_scripts(self) -> list[dict[str, Any]]:
        with self.core.sessions.begin() as session:
            scripts = session.execute(select(Script).order_by(Script.group_name, Script.name))
            return [self._describe(session, s, versions=False) for s in scripts.scalars()]

    def get_script(self, slug: str) -> dict[str, Any]:
        with self.core.sessions.begin() as session:
            script = session.execute(select(Script).where(Script.slug == slug)).scalar()
            if script is None:
                raise NotFoundError("Unable to find script.", field="script")
            return self._describe(session, script, versions=True)

    def _describe(self, session: Session, script: Script, *, versions: bool) -> dict[str, Any]:
        rows = (
            session.execute(
                select(ScriptVersion)
                .where(ScriptVersion.script_id == script.id)
                .order_by(ScriptVersion.created_at.desc(), ScriptVersion.iteration.desc())
            )
            .scalars()
            .all()
        )
        default = next((v for v in rows if v.is_default), None)
        issues = [] if default is not None else ["does not have a default version"]
        data: dict[str, Any] = {
            "id": script.id,
            "slug": script.slug,
            "script_name": script.name,
            "group": script.group_name,
            "script_description": script.description,
            "is_active": script.is_active,
            "created_date": script.created_at.isoformat(),
            "modified_date": script.updated_at.isoformat(),
            "versions_count": len(rows),
            "issues": issues,
            "default_version": _version(default) if default else None,
        }
        if versions:
            data["versions"] = [_version(v) for v in rows]
        return data


def _log_registration(principal: Principal, result: dict[str, Any]) -> None:
    """One INFO line per registration (who, which script, what came of it)."""
    if not result["success"]:
        logger.info(
            "user %s: script %r refused: %s", principal.user_id, result["script"], result["errors"]
        )
        return
    logger.info(
        "user %s registered script %s (group %r): version %s iteration %s%s%s",
        principal.user_id,
        result["slug"],
        result["group"],
        result["version"],
        result["iteration"],
        "" if result["created"] else ", unchanged",
        ", default" if result["is_default"] else "",
    )


def _version(v: ScriptVersion) -> dict[str, Any]:
    return {
        "id": v.id,
        "script_version": v.version,
        "script_iteration": v.iteration,
        "is_active": v.is_active,
        "default_version": v.is_default,
        "checksum": v.checksum,
        "created_date": v.created_at.isoformat(),
        "parameters": v.spec.get("params", []),
    }


def _result(script: Script, version: ScriptVersion, *, created: bool) -> dict[str, Any]:
    return {
        "script": script.name,
        "success": True,
        "errors": None,
        "version": version.version,
        "iteration": version.iteration,
        "is_default": version.is_default,
        "id": script.id,
        "slug": script.slug,
        "group": script.group_name,
        "created": created,
    }
