"""Signing in and out, the home page, and the site's 404.

Sign-in takes a user name and password (the passwords of ``user passwd``) or an
API key; either opens a server-side session (``services.web_sessions``) whose
token goes into the signed cookie. Errors are shown next to the field they
concern; ``next=`` is followed only to pages of this site (``safe_next``).
"""

from __future__ import annotations

from jobferry import errors
from jobferry.services.web_sessions import SignedIn
from jobferry.web.base import UI, WebHandler, safe_next, signed_in


class SignInHandler(WebHandler):
    """``/ui/sign-in``: the form (GET) and its answer (POST)."""

    def get(self) -> None:
        target = safe_next(self.get_query_argument("next", None))
        if self.principal is not None:
            self.redirect(target)
            return
        self.show(target)

    def show(
        self,
        target: str,
        *,
        username: str = "",
        field_errors: dict[str, str] | None = None,
        status: int = 200,
    ) -> None:
        self.set_status(status)
        self.render_page(
            "sign_in.html",
            title="Sign in",
            next=target,
            username=username,
            field_errors=field_errors or {},
            css=("sign_in.css",),
        )

    async def post(self) -> None:
        target = safe_next(self.get_body_argument("next", None))
        method = self.get_body_argument("method", "password")
        username = self.get_body_argument("username", "")
        client = self.request.remote_ip or ""
        sessions = self.services.web_sessions
        signed: SignedIn
        try:
            if method == "api_key":
                key = self.get_body_argument("api_key", "")
                if not key.strip():
                    self.show(target, field_errors={"api_key": "Enter an API key."}, status=400)
                    return
                signed = await self.call(sessions.sign_in_key, key, client)
            else:
                password = self.get_body_argument("password", "")
                missing = {}
                if not username.strip():
                    missing["username"] = "Enter your user name or email."
                if not password:
                    missing["password"] = "Enter your password."
                if missing:
                    self.show(target, username=username, field_errors=missing, status=400)
                    return
                signed = await self.call(sessions.sign_in_password, username, password, client)
        except errors.TooManyRequestsError as exc:
            self.set_header("Retry-After", str(exc.retry_after))
            field = "api_key" if method == "api_key" else "password"
            message = f"Too many failed attempts: try again in {exc.retry_after} s."
            self.show(target, username=username, field_errors={field: message}, status=429)
            return
        except errors.AuthenticationError as exc:
            field = "api_key" if method == "api_key" else "password"
            self.show(target, username=username, field_errors={field: exc.message}, status=403)
            return
        previous = self.session_token()
        if previous is not None:  # signing in again (as another user?) ends the old session
            await self.call(sessions.sign_out, previous)
        self.start_session(signed.token)
        self.redirect(target, status=303)


class SignOutHandler(WebHandler):
    """``POST /ui/sign-out``: end the session (a form in the nav; GET shows that form)."""

    def get(self) -> None:
        if self.principal is None:
            self.redirect(f"{UI}/sign-in")
            return
        self.render_page("sign_out.html", title="Sign out")

    async def post(self) -> None:
        token = self.session_token()
        if token is not None:
            await self.call(self.services.web_sessions.sign_out, token)
        self.end_session()
        self.redirect(f"{UI}/sign-in", status=303)


class HomeHandler(WebHandler):
    """``/ui/``: where signing in lands by default."""

    @signed_in
    def get(self) -> None:
        self.render_page("home.html", title="jobferry")


class RootHandler(WebHandler):
    """``/``: a browser opening the daemon's address is sent to the pages."""

    def get(self) -> None:
        self.redirect(f"{UI}/")


class PageNotFoundHandler(WebHandler):
    """Any other ``/ui/...`` path: the site's 404 page."""

    async def prepare(self) -> None:
        await super().prepare()  # the nav shows who is signed in, as on every page
        raise errors.NotFoundError("There is no such page.")
