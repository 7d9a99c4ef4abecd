"""Where ``jobferry remote`` finds its daemon and its API key.

The URL comes from ``--url``, then ``$JOBFERRY_URL``, then ``url:`` in the client
file; the key from ``--key-file``, then ``$JOBFERRY_KEY``, then ``key:`` in the
client file. The client file is ``$XDG_CONFIG_HOME/jobferry/client.yml`` (else
``~/.config/jobferry/client.yml``) and is only read when a flag or variable
leaves something open.

A file that holds a key is refused when anyone but its owner may read or write
it (mode 0600 or stricter, as ssh demands of a private key): a key readable by
others is a key shared with them.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from jobferry.errors import ConfigError

URL_ENV = "JOBFERRY_URL"
KEY_ENV = "JOBFERRY_KEY"
#: Largest key or client file read, bytes (a key is ~50 characters).
MAX_FILE_BYTES = 64 * 1024


@dataclass(frozen=True)
class Target:
    """A daemon's base URL and the key to present to it."""

    url: str
    key: str


def client_file() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(Path.home(), ".config")
    return Path(base) / "jobferry" / "client.yml"


def read_private(path: Path, what: str) -> str:
    """The text of *path*, refused unless only its owner may read or write it."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        raise ConfigError(
            f"{what} {path} has mode {mode:04o}, readable or writable by others; "
            f"it holds an API key: run 'chmod 600 {path}'"
        )
    if info.st_size > MAX_FILE_BYTES:
        raise ConfigError(f"{what} {path} is too large ({info.st_size} bytes)")
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc}") from None


def _client_settings(path: Path) -> dict[str, Any]:
    text = read_private(path, "client file")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        reason = " ".join(str(exc).split())
        raise ConfigError(f"client file {path} is not valid YAML: {reason}") from None
    if data is None:
        return {}
    if not isinstance(data, dict) or set(data) - {"url", "key"}:
        raise ConfigError(f"client file {path} must be a mapping with 'url' and 'key' only")
    for name in ("url", "key"):
        if name in data and not isinstance(data[name], str):
            raise ConfigError(f"client file {path}: '{name}' must be a string")
    return data


def check_url(url: str) -> str:
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"daemon URL {url[:200]!r} is not an http:// or https:// URL")
    if parts.query or parts.fragment:
        raise ConfigError(f"daemon URL {url[:200]!r} must not have a query or fragment")
    return url.strip().rstrip("/")


def resolve(url: str | None, key_file: str | None) -> Target:
    """The daemon and key from the options, the environment and the client file."""
    url = url or os.environ.get(URL_ENV) or None
    key: str | None = None
    if key_file:
        key = read_private(Path(key_file).expanduser(), "key file").strip()
        if not key:
            raise ConfigError(f"key file {key_file} is empty")
    else:
        key = os.environ.get(KEY_ENV, "").strip() or None
    path = client_file()
    if url is None or key is None:
        settings = _client_settings(path) if path.exists() else {}
        url = url or settings.get("url") or None
        key = key or (settings.get("key") or "").strip() or None
    if url is None:
        raise ConfigError(f"no daemon URL: give --url, set ${URL_ENV} or put 'url:' in {path}")
    if key is None:
        raise ConfigError(f"no API key: give --key-file, set ${KEY_ENV} or put 'key:' in {path}")
    if any(c.isspace() for c in key) or not key.isprintable():
        raise ConfigError("the API key holds whitespace or control characters")
    return Target(check_url(url), key)
