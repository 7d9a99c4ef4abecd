"""Galaxy's user shapes: the summary (whoami, the users list) and the detailed view.

Built from the services' ``UserRecord``.
"""

from __future__ import annotations

from typing import Any

from jobferry.api.galaxy.formats import human_bytes, iso
from jobferry.services.users import UserRecord


def user_brief(user: UserRecord) -> dict[str, Any]:
    """Galaxy's user summary (whoami and the users list)."""
    return {
        "model_class": "User",
        "id": user.id,
        "username": user.username,
        "email": user.email,
        "deleted": not user.is_active,
        "active": user.is_active,
        "last_password_change": iso(user.password_changed_at),
    }


def user_detail(user: UserRecord) -> dict[str, Any]:
    """Galaxy's detailed user view."""
    return {
        **user_brief(user),
        "is_admin": user.is_admin,
        "create_time": iso(user.created_at),
        "total_disk_usage": float(user.disk_usage),
        "nice_total_disk_usage": human_bytes(user.disk_usage),
        "quota_percent": None,
        "quota": "unlimited",
        "quota_bytes": None,
        "purged": False,
        "preferences": {},
        "tags_used": [],
    }
