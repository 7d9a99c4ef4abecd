"""HTTP Basic credentials: a user name (or email) with a password or an API key.

What py-tes (``user=``/``password=``), Snakemake and the compliance tooling send to
the TES face. The attempts are counted by the failure limiter Galaxy's baseauth
uses (``UserService.failures``), and a verified password is remembered for
``api.key_cache_s`` as keys are (keyed by a hash of the pair, never the password),
so a client polling a task costs at most one password hash per that time.
"""

from __future__ import annotations

import hashlib
import time

from jobferry.errors import AuthenticationError, InvalidCredentialsError, NotFoundError
from jobferry.services.auth import AuthService
from jobferry.services.core import Core, Principal
from jobferry.services.users import UserService

#: Passwords remembered at most (the cache is dropped whole past it: a flood of
#: distinct credentials cannot grow it).
MAX_REMEMBERED = 10_000


class BasicAuthenticator:
    def __init__(self, core: Core, auth: AuthService, users: UserService) -> None:
        self.core, self.auth, self.users = core, auth, users
        #: sha256 of "identity\0password" -> (when verified, who).
        self._verified: dict[str, tuple[float, Principal]] = {}

    def authenticate(self, identity: str, secret: str, client: str = "") -> Principal:
        """The user named by HTTP Basic credentials: *identity* with a password or one of
        their API keys. Raises InvalidCredentialsError or TooManyRequestsError.

        A verified password is remembered for ``api.key_cache_s`` (keyed by a hash of
        the pair, never the password): within that time neither a password hash nor
        the store is asked again, as for keys (whose own cache ``AuthService`` keeps,
        with its revocations)."""
        is_key = secret.startswith("jf_")
        digest = hashlib.sha256(f"{identity}\0{secret}".encode("utf-8", "surrogateescape"))
        cache_key = digest.hexdigest()
        ttl = self.core.config.api.key_cache_s
        cached = None if is_key else self._verified.get(cache_key)
        if cached is not None and time.monotonic() - cached[0] < ttl:
            return cached[1]
        counted = (f"user:{identity.casefold()}", f"addr:{client}")
        failures = self.users.failures
        failures.check(*counted)
        try:
            principal = (
                self._with_key(identity, secret)
                if is_key
                else self._with_password(identity, secret)
            )
        except InvalidCredentialsError:
            failures.failed(*counted)
            raise
        failures.forget(counted[0])
        if ttl > 0 and not is_key:
            if len(self._verified) > MAX_REMEMBERED:
                self._verified.clear()
            self._verified[cache_key] = (time.monotonic(), principal)
        return principal

    def _with_key(self, identity: str, key: str) -> Principal:
        """The key's owner, if *identity* names them (user name, else their email)."""
        try:
            principal = self.auth.cached(key) or self.auth.authenticate(key)
        except AuthenticationError as exc:
            raise InvalidCredentialsError() from exc
        if identity != principal.username:
            try:
                email = self.auth.get_user(principal.username).email
            except NotFoundError as exc:
                raise InvalidCredentialsError() from exc
            if identity != email:
                raise InvalidCredentialsError()
        return principal

    def _with_password(self, identity: str, password: str) -> Principal:
        record = self.users.verify_credentials(identity, password)
        return Principal(record.id, record.username, record.is_admin)
