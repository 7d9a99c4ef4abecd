"""Password hashing: scrypt (stdlib) with a random salt, compared in constant time.

Stored form: ``scrypt$<n>$<r>$<p>$<salt b64>$<hash b64>``, so the cost can be
raised later without invalidating existing hashes. Only API keys authenticate
API calls; a password is used for one thing: Galaxy's ``baseauth``, which
trades it for an API key.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

from jobferry.errors import ValidationError

#: scrypt cost: 2**14 x 8 x 128 bytes = 16 MiB of memory and ~50 ms per hash.
SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
SALT_BYTES = 16
HASH_BYTES = 32
#: Galaxy's own lower bound (its ``validate_password``); the upper bound caps hashing cost.
MIN_PASSWORD_CHARS = 6
MAX_PASSWORD_CHARS = 1024
_SCHEME = "scrypt"


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        password.encode("utf-8", "surrogateescape"),
        salt=salt,
        n=n,
        r=r,
        p=p,
        maxmem=256 * 1024 * 1024,
        dklen=HASH_BYTES,
    )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def check_password_rules(password: str) -> None:
    """Raise ValidationError for a password that is too short, too long or has NUL."""
    if len(password) < MIN_PASSWORD_CHARS:
        raise ValidationError(
            f"Use a password of at least {MIN_PASSWORD_CHARS} characters.",
            errors={"password": [f"Use a password of at least {MIN_PASSWORD_CHARS} characters."]},
        )
    if len(password) > MAX_PASSWORD_CHARS or "\0" in password:
        raise ValidationError(
            "The password is too long or contains NUL.",
            errors={"password": ["The password is too long or contains NUL."]},
        )


def hash_password(password: str) -> str:
    """A fresh salted hash of *password* (checks the rules first)."""
    check_password_rules(password)
    salt = secrets.token_bytes(SALT_BYTES)
    digest = _scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    return f"{_SCHEME}${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, stored: str | None) -> bool:
    """True iff *password* matches the *stored* hash. Never raises for bad input."""
    if not stored or len(password) > MAX_PASSWORD_CHARS:
        return False
    parts = stored.split("$")
    if len(parts) != 6 or parts[0] != _SCHEME:
        return False
    try:
        n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
        salt = base64.b64decode(parts[4], validate=True)
        expected = base64.b64decode(parts[5], validate=True)
    except ValueError:
        return False
    if not (2 <= n <= 2**20 and 1 <= r <= 32 and 1 <= p <= 16):
        return False
    try:
        actual = _scrypt(password, salt, n, r, p)
    except (ValueError, MemoryError):
        return False
    return hmac.compare_digest(actual, expected)
