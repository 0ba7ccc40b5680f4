"""Signing in with an API key, and out. Only while the server has keys: without any the console is open."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from pipeserve.console.session import SESSION_COOKIE, Signer
from pipeserve.console.web import ConsoleRoute, console, field, read_form, redirect, render, set_cookie
from pipeserve.keys import KeyStore

router = APIRouter(route_class=ConsoleRoute)


def local_path(target: str) -> str:
    """Only a path on this server: a sign-in link must not send anyone elsewhere. Browsers read `\\` as `/`
    and drop tabs and newlines, so `/\\evil` or `/<tab>/evil` would leave the site: any such character, or a
    space or non-ASCII one (a path from a URL is percent-encoded), makes it `/`."""
    if target.startswith("/") and not target.startswith("//") and all(32 < ord(c) < 127 and c != "\\" for c in target):
        return target
    return "/"


@router.get("/login")
async def login_page(request: Request) -> Response:
    keys: KeyStore = request.app.state.keys
    target = local_path(request.query_params.get("next", "/"))
    if not keys.all():
        return redirect(target)
    return render(request, "login.html", {"next": target, "error": None})


@router.post("/login")
async def login(request: Request) -> Response:
    form = await read_form(request)
    keys: KeyStore = request.app.state.keys
    target = local_path(field(form, "next", "/"))
    stored = keys.find(field(form, "key").strip())
    if stored is None:
        error = "That is not an API key of this server. Use a key printed by `pipeserve keys create`."
        return render(request, "login.html", {"next": target, "error": error}, status_code=401)
    signer = console(request).signer
    response = redirect(target)
    set_cookie(request, response, SESSION_COOKIE, signer.open_session(stored.id), max_age=signer.lifetime)
    request.state.csrf_nonce = Signer.new_nonce()  # a fresh token for the session, as for any change of identity
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    await read_form(request)
    response = redirect("/login")
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
    return response
