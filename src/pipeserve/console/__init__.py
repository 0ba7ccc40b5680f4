"""The web console, served by `pipeserve serve` at `/`: server-rendered pages over the services the API and
the CLI use. Every asset ships in the package (templates, CSS, a vendored htmx); nothing is fetched from
elsewhere and nothing is built by users.

`console_router(settings)` is included by `create_app` after the API's routes, which keep precedence. Its
lifespan runs inside the app's, once the services are on `app.state`.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources

from fastapi import APIRouter, FastAPI
from jinja2 import Environment, PackageLoader, StrictUndefined
from starlette.responses import Response

from pipeserve.console import formatting
from pipeserve.console.sampler import Sampler
from pipeserve.console.session import Signer, load_secret
from pipeserve.console.views import criteria, datasets, login, models, playground, requests
from pipeserve.console.web import Console
from pipeserve.errors import NotFoundError
from pipeserve.settings import Settings

__all__ = ["console_router"]

_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8"}


@dataclass(frozen=True)
class Asset:
    body: bytes
    media_type: str
    version: str


def _assets() -> dict[str, Asset]:
    out = {}
    for entry in resources.files("pipeserve.console").joinpath("static").iterdir():
        suffix = "." + entry.name.rsplit(".", 1)[-1]
        if entry.is_file() and suffix in _TYPES:
            body = entry.read_bytes()
            out[entry.name] = Asset(body, _TYPES[suffix], hashlib.sha256(body).hexdigest()[:12])
    return out


def _templates(assets: dict[str, Asset]) -> Environment:
    env = Environment(
        loader=PackageLoader("pipeserve.console", "templates"),
        autoescape=True,  # every template, whatever its name: logged data is shown, never run
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(formatting.FILTERS)
    # Versioned URLs: assets are cached for good, and a new release's are fetched at once.
    env.globals["static"] = lambda name: f"/static/{name}?v={assets[name].version}"
    return env


def console_router(settings: Settings) -> APIRouter:
    assets = _assets()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        secret = load_secret(settings.console_secret_file or settings.data_dir / "console-secret")
        app.state.console = Console(
            settings=settings,
            templates=_templates(assets),
            signer=Signer(secret, settings.console_session_hours * 3600),
        )
        sampler = Sampler(app.state.metrics.registry)
        app.state.console_sampler = sampler
        sampler.start()
        try:
            yield
        finally:
            await sampler.stop()

    router = APIRouter(lifespan=lifespan)
    for pages in (requests, datasets, criteria, models, playground, login):
        router.include_router(pages.router, include_in_schema=False)  # pages, not part of the API

    @router.get("/static/{name}", include_in_schema=False)
    async def static(name: str) -> Response:
        asset = assets.get(name)
        if asset is None:
            raise NotFoundError(f"No console asset named {name!r}.")
        return Response(
            asset.body,
            media_type=asset.media_type,
            headers={"Cache-Control": "public, max-age=31536000, immutable", "X-Content-Type-Options": "nosniff"},
        )

    return router
