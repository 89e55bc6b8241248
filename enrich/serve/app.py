"""`enrich serve`: one process serving the review workbench (pages) and the enrichment API (`/v1`).

Safe by default: it binds to loopback; every page and API call needs the server's token (a random one is made and
printed when none is given), pages through a cookie that the link with `?token=` sets, the API through an
`Authorization: Bearer` header; forms carry a CSRF token; bodies over the limits are refused with 413 before
they are read; templates escape every listing field.
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
import sys
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

from enrich.errors import ConfigError
from enrich.serve import api, pages
from enrich.serve.workbench import Batcher, Workbench
from enrich.settings import ServeConfig

STATIC = Path(__file__).parent / "static"
COOKIE = "enrich_token"
OPEN_PATHS = ("/v1/health", "/static/")


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class Guard:
    """Every request but the health check and the static files: its body within the limits (413 before it is read),
    and the server's token, from the `Authorization` header (the API) or the cookie the `?token=` link sets (pages).
    Plain ASGI: it adds nothing to a request's cost but the checks."""

    def __init__(self, app, config: ServeConfig):
        self.app, self.config = app, config

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request = Request(scope)
        path, config = scope["path"], self.config
        length = request.headers.get("content-length")
        limit = config.max_upload_bytes if path == "/batches" else config.max_request_bytes
        if length is not None and (not length.isdigit() or int(length) > limit):
            return await PlainTextResponse(f"request body over {limit} bytes", status_code=413)(scope, receive, send)
        if path.startswith(OPEN_PATHS):
            return await self.app(scope, receive, send)
        given = request.query_params.get("token")
        if given is not None and scope["method"] == "GET" and hmac.compare_digest(given, config.token):
            response = RedirectResponse(path or "/", status_code=303)  # the token leaves the address bar at once
            response.set_cookie(COOKIE, config.token, httponly=True, samesite="strict")
            return await response(scope, receive, send)
        bearer = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        cookie = request.cookies.get(COOKIE, "") if not path.startswith("/v1/") else ""
        if hmac.compare_digest(bearer, config.token) or hmac.compare_digest(cookie, config.token):
            return await self.app(scope, receive, send)
        if path.startswith(("/v1/", "/docs", "/openapi")):
            refusal = JSONResponse({"detail": "a token is needed: Authorization: Bearer <token>"}, status_code=401)
        else:
            refusal = PlainTextResponse("enrich: open the address `enrich serve` printed (it carries the token)", status_code=401)
        return await refusal(scope, receive, send)


def create_app(config: ServeConfig, workbench: Workbench | None = None) -> FastAPI:
    """The app: its index and models loaded once (or the `workbench` given), shared by the pages and the API."""
    if not config.token:
        raise ValueError("enrich serve needs a token (create_app is given one; the command makes one when none is given)")
    bench = workbench or Workbench(config)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.batcher.start()
        yield
        await app.state.batcher.stop()

    app = FastAPI(title="enrich", version="1", lifespan=lifespan,
                  description="Tags, similar popular listings and exposure priors for new listings; the review workbench.")
    app.state.workbench = bench
    app.state.batcher = Batcher(bench, config.batch_listings, config.batch_wait_ms)
    app.state.csrf = hmac.new(config.token.encode(), b"csrf", "sha256").hexdigest()
    app.include_router(api.router)
    app.include_router(pages.router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    app.add_middleware(Guard, config=config)
    pages.install_error_pages(app)  # outside the guard: its refusals become pages too
    return app


def serve(config: ServeConfig) -> None:
    """Run the server until interrupted. Beyond loopback it must be given its token: a made-up one cannot be shared."""
    import uvicorn

    if not is_loopback(config.host) and not config.token:
        raise ConfigError(f"--host {config.host} is reachable from other machines: give it a --token (or ENRICH_TOKEN)")
    token = config.token or secrets.token_urlsafe(24)
    app = create_app(replace(config, token=token))
    print(f"enrich serve: http://{config.host}:{config.port}/?token={token}  (API: Authorization: Bearer {token})",
          file=sys.stderr, flush=True)
    uvicorn.run(app, host=config.host, port=config.port, log_level="warning", loop="uvloop", http="httptools")
