"""What every console request goes through: who is looking, CSRF, rendering, errors, headers.

Pages are rendered by Jinja2 with autoescaping on, under a Content-Security-Policy that allows only the
console's own scripts: logged data is shown as text, and even markup that slipped through could not run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import parse_qsl, quote

from fastapi import Depends
from fastapi.routing import APIRoute
from jinja2 import Environment
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from pipeserve.console.session import CSRF_COOKIE, CSRF_FIELD, CSRF_HEADER, SESSION_COOKIE, Signer
from pipeserve.errors import AuthenticationError, InvalidRequestError, PipeserveError
from pipeserve.keys import DEFAULT_PROJECT, KeyStore
from pipeserve.server.body import read_body
from pipeserve.settings import Settings

log = logging.getLogger("pipeserve.console")

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


@dataclass(frozen=True)
class Viewer:
    """Who is looking: the project the console shows, and the key they signed in with (None while the server
    has no keys, when the console is open as the API is)."""

    project: str
    key_id: str | None = None
    key_name: str | None = None

    @property
    def signed_in(self) -> bool:
        return self.key_id is not None


class SignInRequired(Exception):
    pass


class CsrfError(PipeserveError):
    status_code = 403
    error_type = "invalid_request_error"


@dataclass
class Console:
    """The console's parts, built once in its lifespan and kept on `app.state.console`."""

    settings: Settings
    templates: Environment
    signer: Signer


def console(request: Request) -> Console:
    state: Console = request.app.state.console
    return state


def _viewer(request: Request) -> Viewer:
    keys: KeyStore = request.app.state.keys
    if not keys.all():
        return Viewer(project=DEFAULT_PROJECT)
    session = console(request).signer.read_session(request.cookies.get(SESSION_COOKIE))
    stored = None if session is None else next((k for k in keys.all() if k.id == session.key_id), None)
    if stored is None:  # no session, or its key was revoked
        raise SignInRequired
    return Viewer(project=stored.project, key_id=stored.id, key_name=stored.name or None)


async def require_viewer(request: Request) -> Viewer:
    viewer = _viewer(request)
    request.state.viewer = viewer
    return viewer


# A page's parameter `viewer: Signed` requires a signed-in viewer (or an open console) and gives it.
Signed = Annotated[Viewer, Depends(require_viewer)]


def is_fragment(request: Request) -> bool:
    """htmx asks for a part of a page, to swap in."""
    return request.headers.get("hx-request") == "true"


def _csrf_nonce(request: Request) -> str:
    nonce = getattr(request.state, "csrf_nonce", None)
    if nonce is None:
        nonce = request.cookies.get(CSRF_COOKIE) or Signer.new_nonce()
        request.state.csrf_nonce = nonce
    return str(nonce)


def render(
    request: Request, template: str, context: Mapping[str, Any] | None = None, *, status_code: int = 200
) -> HTMLResponse:
    state = console(request)
    values = {
        "request": request,
        "viewer": getattr(request.state, "viewer", None),
        "csrf_field": CSRF_FIELD,
        "csrf_token": state.signer.csrf_token(_csrf_nonce(request)),
        "path": request.url.path,
        **(context or {}),
    }
    return HTMLResponse(state.templates.get_template(template).render(values), status_code=status_code)


def redirect(url: str) -> RedirectResponse:
    """See Other: the answer to a form, so that reloading the page that follows posts nothing again."""
    return RedirectResponse(url, status_code=303)


async def read_form(request: Request) -> dict[str, list[str]]:
    """A posted form (URL-encoded, within the request size limit) whose CSRF token matches this browser's."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        raise InvalidRequestError("The console's forms are sent as application/x-www-form-urlencoded.")
    settings: Settings = request.app.state.settings
    raw = await read_body(request, settings.max_request_bytes)
    try:
        pairs = parse_qsl(raw.decode(), keep_blank_values=True, max_num_fields=10_000)
    except (UnicodeDecodeError, ValueError):
        raise InvalidRequestError("The form could not be read; reload the page and send it again.") from None
    form: dict[str, list[str]] = {}
    for name, value in pairs:
        form.setdefault(name, []).append(value)
    check_csrf(request, field(form, CSRF_FIELD) or None)
    return form


def check_csrf(request: Request, token: str | None = None) -> None:
    token = token if token is not None else request.headers.get(CSRF_HEADER)
    if not console(request).signer.check_csrf(request.cookies.get(CSRF_COOKIE), token):
        raise CsrfError(
            "This form was not sent from this console's own page, or the page is too old. Reload the page and "
            "send it again."
        )


def field(form: Mapping[str, list[str]], name: str, default: str = "") -> str:
    values = form.get(name)
    return values[0] if values else default


# --- the route class: errors as pages, cookies and headers on every answer ---------------------------------


def _error_page(request: Request, error: PipeserveError) -> Response:
    if is_fragment(request):
        return render(request, "_error.html", {"message": error.message}, status_code=error.status_code)
    return render(
        request, "error.html", {"status": error.status_code, "message": error.message}, status_code=error.status_code
    )


def _to_sign_in(request: Request) -> Response:
    if request.method != "GET" or is_fragment(request):
        return _error_page(request, AuthenticationError("Your console session has ended. Sign in again."))
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return redirect(f"/login?next={quote(target, safe='')}")


class ConsoleRoute(APIRoute):
    """Console routes answer errors as HTML pages (OpenAI-shaped JSON is for the API), send the user to the
    sign-in page when their session is missing, and carry the CSRF cookie and the security headers."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            started = time.perf_counter()
            try:
                response = await handler(request)
            except SignInRequired:
                response = _to_sign_in(request)
            except PipeserveError as error:
                response = _error_page(request, error)
            except Exception:
                log.exception("console page %s failed", request.url.path)
                response = _error_page(request, PipeserveError("The console failed to show this page; it is logged."))
            for name, value in SECURITY_HEADERS.items():
                response.headers.setdefault(name, value)
            nonce = getattr(request.state, "csrf_nonce", None)
            if nonce is not None and nonce != request.cookies.get(CSRF_COOKIE):
                set_cookie(request, response, CSRF_COOKIE, nonce, max_age=None)
            # The time to build the answer (for a stream: until its first byte), as bench/console.py reads it.
            response.headers["Server-Timing"] = f"app;dur={(time.perf_counter() - started) * 1000:.1f}"
            return response

        return guarded


def set_cookie(request: Request, response: Response, name: str, value: str, *, max_age: int | None) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
