"""The base of every browser page: session, guards, CSRF, security headers, error pages.

``WebHandler`` is to the pages what ``api.base.ApiHandler`` is to the APIs:

- ``prepare`` checks the CSRF token of every non-GET request (Tornado's
  ``check_xsrf_cookie``; the app-wide ``xsrf_cookies`` setting stays off, the JSON
  APIs have no forms) and resolves the session cookie to ``current_user`` (a
  ``Principal``, or None), one store read per page.
- ``@signed_in`` sends a visitor without a session to the sign-in page
  (``next=`` the page); ``@admin_only`` answers others a 403 page.
- ``render_page(template, title=..., **kw)`` renders a template of
  ``web/templates`` inside ``base.html`` (nav, skip link, ``<title>``).
- Every answer carries the Content-Security-Policy (no inline script or style, no
  other origin), ``X-Content-Type-Options: nosniff``, ``Referrer-Policy`` and
  ``Cache-Control: no-store``, and the request's ``X-Request-Id``
  (``jobferry.request_ids``, as the APIs send it: error pages and redirects too).
- Errors raised from the one exception tree become pages in the site's style with
  the status of the one table (``jobferry.http_status``); a 500 says nothing of
  its cause (it is logged with its traceback).
"""

from __future__ import annotations

import functools
import hashlib
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlencode, urlsplit

import tornado.web

from jobferry import errors
from jobferry.http_status import http_status
from jobferry.request_ids import HEADER as REQUEST_ID_HEADER
from jobferry.request_ids import request_id
from jobferry.sent_bytes import CountsSentBytes
from jobferry.services.container import Services
from jobferry.services.core import Core, Principal

logger = logging.getLogger(__name__)

#: Where every page lives.
UI = "/ui"
HERE = Path(__file__).resolve().parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"
#: The session cookie: signed, HttpOnly, SameSite=Strict, Path=/ui, Secure over https.
SESSION_COOKIE = "jobferry_session"
#: Tornado's CSRF cookie (``xsrf_form_html`` puts its token in every form).
XSRF_COOKIE = "_xsrf"

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}

#: Titles of error pages by status.
ERROR_TITLES = {
    400: "Bad request",
    403: "Not allowed",
    404: "Page not found",
    405: "Not allowed",
    409: "Conflict",
    410: "Gone",
    413: "Too large",
    429: "Too many attempts",
    503: "Unavailable",
    507: "Out of space",
}


def safe_next(target: str | None, default: str = UI + "/") -> str:
    """*target* if it is a page of this site (``/ui/...``, no scheme, host or ``//``),
    else *default*: the only places a ``next=`` may send a browser."""
    if not target or "\\" in target or any(ord(c) < 0x20 for c in target):
        return default
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or target.startswith("//"):
        return default
    if parts.path != UI and not parts.path.startswith(UI + "/"):
        return default
    if "/../" in parts.path + "/" or "/./" in parts.path + "/":
        return default
    return target


_VERSIONS: dict[str, str] = {}


def static_url(path: str) -> str:
    """``/ui/static/<path>?v=<hash of its bytes>``: cached for long, refetched on change."""
    version = _VERSIONS.get(path)
    if version is None:
        try:
            version = hashlib.sha256((STATIC / path).read_bytes()).hexdigest()[:12]
        except OSError:
            version = "missing"
        _VERSIONS[path] = version
    return f"{UI}/static/{path}?v={version}"


class WebHandler(CountsSentBytes, tornado.web.RequestHandler):
    """Base of every page handler (see the module's docstring)."""

    services: Services
    #: Who is signed in (also what the access log names); None: nobody.
    principal: Principal | None

    def initialize(self, services: Services) -> None:
        self.services = services
        self.principal = None

    @property
    def core(self) -> Core:
        return self.services.core

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Awaitable[Any]:
        """Run a blocking service call in the worker pool."""
        return self.core.call(fn, *args, **kwargs)

    # --- headers ----------------------------------------------------------------------

    def set_default_headers(self) -> None:
        for name, value in SECURITY_HEADERS.items():
            self.set_header(name, value)
        self.set_header(REQUEST_ID_HEADER, request_id(self.request))
        self.set_header("Cache-Control", "no-store")

    # --- session and CSRF -------------------------------------------------------------

    @property
    def is_https(self) -> bool:
        base = self.core.config.server.base_url or ""
        return self.request.protocol == "https" or base.startswith("https:")

    def set_cookie(  # type: ignore[override]
        self, name: str, value: str | bytes, **kwargs: Any
    ) -> None:
        """Every cookie of the site: HttpOnly, SameSite=Strict, Path=/ui, Secure on https."""
        kwargs.setdefault("path", UI)
        kwargs["httponly"] = True
        kwargs["samesite"] = "Strict"
        if self.is_https:
            kwargs["secure"] = True
        super().set_cookie(name, value, **kwargs)

    def clear_cookie(self, name: str, **kwargs: Any) -> None:
        kwargs.setdefault("path", UI)
        super().clear_cookie(name, **kwargs)

    def session_token(self) -> str | None:
        """The session token of the signed cookie, if its signature holds."""
        raw = self.get_cookie(SESSION_COOKIE)
        if not raw:
            return None
        secret = self.services.web_sessions.cookie_secret
        value = tornado.web.decode_signed_value(
            secret, SESSION_COOKIE, raw, max_age_days=self.cookie_days()
        )
        return value.decode() if value else None

    def cookie_days(self) -> float:
        return self.core.config.web.session_max_s / 86400.0

    def start_session(self, token: str) -> None:
        """Give the browser the cookie of a new session (a session cookie: no expiry)."""
        secret = self.services.web_sessions.cookie_secret
        signed = tornado.web.create_signed_value(secret, SESSION_COOKIE, token)
        self.set_cookie(SESSION_COOKIE, signed.decode())

    def end_session(self) -> None:
        self.clear_cookie(SESSION_COOKIE)

    #: False: the handler resolves the session itself, in the same worker call as its
    #: page's data (one hop to the worker pool instead of two; the job list).
    resolve_session = True

    async def prepare(self) -> None:
        if self.request.method not in ("GET", "HEAD", "OPTIONS"):
            self.check_xsrf_cookie()
        if not self.resolve_session:
            return
        token = self.session_token()
        if token is not None:
            try:
                self.principal = await self.call(self.services.web_sessions.resolve, token)
            except errors.AuthenticationError:
                self.principal = None
                self.end_session()
        self.current_user = self.principal

    def sign_in_url(self) -> str:
        return f"{UI}/sign-in?" + urlencode({"next": self.request.uri or UI + "/"})

    # --- pages ------------------------------------------------------------------------

    def get_template_path(self) -> str:
        return str(TEMPLATES)

    def static_url(self, path: str, include_host: bool | None = None, **kwargs: Any) -> str:
        return static_url(path)

    def get_template_namespace(self) -> dict[str, Any]:
        namespace = super().get_template_namespace()
        namespace.update(user=self.principal, UI=UI, static_url=static_url)
        return namespace

    def render_page(self, template: str, *, title: str, **kwargs: Any) -> None:
        """Render *template* (which extends ``base.html``) with the page's *title*."""
        kwargs.setdefault("css", ())
        kwargs.setdefault("scripts", ())
        kwargs.setdefault("nav", "")
        self.render(template, title=title, **kwargs)

    # --- errors -----------------------------------------------------------------------

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if exc is not None and not isinstance(exc, errors.JobferryError | tornado.web.HTTPError):
            exc = errors.no_space(exc) or exc
        if isinstance(exc, errors.JobferryError):
            status_code = http_status(exc)
            if status_code < 400:  # the Wooey face's 200 for form errors means 400 here
                status_code = 400
            message = exc.message
        elif isinstance(exc, tornado.web.HTTPError):
            status_code = exc.status_code
            message = ""
            if status_code == 403 and "xsrf" in (exc.log_message or "").lower():
                message = "This form has expired or came from another site: please try again."
        else:
            message = ""
        if status_code >= 500:
            message = ""  # nothing of a server error's cause reaches the page
        self.clear()
        self.set_status(status_code)
        if isinstance(exc, errors.TooManyRequestsError):
            self.set_header("Retry-After", str(exc.retry_after))
        title = ERROR_TITLES.get(status_code, "Something went wrong")
        try:
            self.render_page(
                "error.html", title=title, status=status_code, message=message or self._reason
            )
        except Exception:  # a template that fails must still give a page, never a trace
            logger.exception("error page for %s failed", status_code)
            self.clear()
            self.set_status(status_code)
            self.set_header("Content-Type", "text/plain; charset=UTF-8")
            self.finish(f"{status_code} {title}\n")

    def log_exception(self, typ: Any, value: BaseException | None, tb: Any) -> None:
        if isinstance(value, errors.JobferryError) and http_status(value) < 500:
            return
        if isinstance(value, tornado.web.HTTPError) and value.status_code < 500:
            return
        logger.error("error handling %s %s", self.request.method, self.request.path, exc_info=value)


Method = Callable[..., Awaitable[None] | None]


def signed_in(method: Method) -> Method:
    """A page for signed-in users: others are sent to sign in (``next=`` this page)
    on a GET, refused (403 page) otherwise."""

    @functools.wraps(method)
    async def wrapper(self: WebHandler, *args: Any, **kwargs: Any) -> None:
        if self.principal is None:
            if self.request.method in ("GET", "HEAD"):
                self.redirect(self.sign_in_url())
                return
            raise errors.AuthenticationError("Please sign in.")
        result = method(self, *args, **kwargs)
        if result is not None:
            await result

    return cast(Method, wrapper)


def admin_only(method: Method) -> Method:
    """A page for admins: signed in (as ``signed_in``) and an admin, else a 403 page."""

    @functools.wraps(method)
    async def wrapper(self: WebHandler, *args: Any, **kwargs: Any) -> None:
        if self.principal is not None and not self.principal.is_admin:
            raise errors.AdminRequiredError("This page is for administrators.")
        result = signed_in(method)(self, *args, **kwargs)
        if result is not None:
            await result

    return cast(Method, wrapper)


class StaticHandler(tornado.web.StaticFileHandler):
    """``/ui/static/...``: the site's CSS, scripts and images, with the same headers."""

    services: Services

    def initialize(  # type: ignore[override]
        self, services: Services, path: str = str(STATIC), default_filename: str | None = None
    ) -> None:
        self.services = services  # for the request metrics
        super().initialize(path=path, default_filename=default_filename)

    def set_default_headers(self) -> None:
        for name, value in SECURITY_HEADERS.items():
            self.set_header(name, value)
        self.set_header(REQUEST_ID_HEADER, request_id(self.request))

    def set_extra_headers(self, path: str) -> None:
        if self.get_query_argument("v", None):
            self.set_header("Cache-Control", "public, max-age=31536000, immutable")
        else:
            self.set_header("Cache-Control", "no-cache")
