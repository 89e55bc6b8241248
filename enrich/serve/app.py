"""`enrich serve`: the review workbench (pages) and the enrichment API (`/v1`), in HTTP processes that parse, check
and answer, and model workers (`worker.py`) that hold the models and batch the work (see docs/guide.md).

Safe by default: it binds to loopback; every page and API call needs the server's token (a random one is made and
printed when none is given), pages through a cookie that the link with `?token=` sets, the API through an
`Authorization: Bearer` header; forms carry a CSRF token; bodies are counted as they arrive and refused past the
limits (413), slow ones cut off (408); templates escape every listing field (see `security.py`).
"""

from __future__ import annotations

import json
import secrets
import socket
import sys
from contextlib import asynccontextmanager
from dataclasses import asdict, replace
from pathlib import Path
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from enrich.catalog import Columns
from enrich.environment import set_for_children, variable
from enrich.errors import ConfigError, InputError
from enrich.serve import api, pages
from enrich.serve.pool import ModelClient, ModelPool, ModelsBusy, ModelsUnavailable
from enrich.serve.security import Guard, check_token, derived, is_loopback  # noqa: F401  (is_loopback: re-exported)
from enrich.serve.workbench import Workbench
from enrich.settings import ServeConfig

STATIC = Path(__file__).parent / "static"
RUNTIME = "ENRICH_SERVE_RUNTIME"  # the file that tells uvicorn's worker processes their settings and model sockets


def create_app(config: ServeConfig, workbench: Workbench | None = None, model_sockets: list[str] | None = None) -> FastAPI:
    """The app of one HTTP process. Its model workers are the ones at `model_sockets`; without them, the app starts
    its own (`ModelPool`) when it starts, and stops them when it stops (tests, `TestClient`)."""
    if not config.token:
        raise ValueError("enrich serve needs a token (create_app is given one; the command makes one when none is given)")
    check_token(config.token)
    bench = workbench or Workbench(config)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        pool = None if model_sockets else ModelPool(config, config.model_workers, config.model_threads or None).start()
        client = ModelClient(model_sockets or pool.sockets, config.max_pending_listings, config.model_timeout_s)
        client.start()
        try:
            await bench.connect(client)
            bench.mark_interrupted()
            yield
        finally:
            bench.stop_jobs()
            await client.close()
            if pool is not None:
                pool.stop()

    app = FastAPI(title="enrich", version="1", lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Tags, similar popular listings and exposure priors for new listings; the review workbench.")
    app.state.workbench = bench
    app.state.csrf = derived(config.token, b"csrf")
    app.include_router(api.router)
    app.include_router(pages.router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.get("/docs", include_in_schema=False)(docs)
    install_error_handlers(app)
    app.openapi = lambda: openapi(app)
    app.add_middleware(Guard, config=config)
    pages.install_error_pages(app)  # outside the guard: its refusals become pages too
    return app


def docs() -> HTMLResponse:
    """Swagger UI from the vendored files (static/swagger): it works offline, and no inline script runs."""
    return HTMLResponse((STATIC / "swagger" / "index.html").read_text())


def openapi(app: FastAPI) -> dict:
    """FastAPI's schema, with the request body `/v1/enrich` reads itself (strict JSON, see api.py) and the token."""
    if app.openapi_schema is None:
        from fastapi.openapi.utils import get_openapi

        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        body = api.EnrichRequest.model_json_schema(ref_template="#/components/schemas/{model}")
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components.update(body.pop("$defs", {}))
        components["EnrichRequest"] = body
        # The token, as every /v1 call but the health check sends it: Swagger UI's Authorize button then works.
        schema["components"]["securitySchemes"] = {"token": {"type": "http", "scheme": "bearer"}}
        for path, operations in schema["paths"].items():
            for operation in operations.values():
                if path != "/v1/health":
                    operation["security"] = [{"token": []}]
        app.openapi_schema = schema
    return app.openapi_schema


def install_error_handlers(app: FastAPI) -> None:
    """Every refusal a 4xx or a 503 with a message, never a 500: the echo of an invalid value is left out (a NaN or
    a lone surrogate cannot be written back as JSON), a number too large for the store is out of range."""

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> Response:
        detail = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")} for e in error.errors()]
        return Response(json.dumps({"detail": detail}, default=str), status_code=422, media_type="application/json")

    @app.exception_handler(OverflowError)
    async def overflow(request: Request, error: OverflowError) -> Response:
        return JSONResponse({"detail": "a number in the request is out of range"}, status_code=422)

    @app.exception_handler(InputError)
    async def refused(request: Request, error: InputError) -> Response:
        return JSONResponse({"detail": str(error)}, status_code=422)

    @app.exception_handler(ModelsBusy)
    async def busy(request: Request, error: ModelsBusy) -> Response:
        return JSONResponse({"detail": str(error)}, status_code=503, headers={"Retry-After": "1"})

    @app.exception_handler(ModelsUnavailable)
    async def unavailable(request: Request, error: ModelsUnavailable) -> Response:
        return JSONResponse({"detail": str(error)}, status_code=503, headers={"Retry-After": "5"})


def app_from_runtime() -> FastAPI:
    """The app in one of uvicorn's worker processes (`--workers` above 1): its settings and model sockets come from
    the file the serving process wrote (mode 0600, in the pool's private folder)."""
    runtime = json.loads(Path(variable(RUNTIME)).read_text())
    fields = runtime["config"]
    columns = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.pop("columns").items()}
    return create_app(ServeConfig(**fields, columns=Columns(**columns)), model_sockets=runtime["sockets"])


def serve(config: ServeConfig) -> None:
    """Run the server until interrupted: the model workers first (loaded once), then the HTTP processes. Beyond
    loopback it must be given its token: a made-up one cannot be shared."""
    from enrich.serve.protocol import GuardedHttpProtocol, ServerConfig

    if not is_loopback(config.host) and not config.token:
        raise ConfigError(f"--host {config.host} is reachable from other machines: give it a --token (or ENRICH_TOKEN)")
    if config.token:
        check_token(config.token)
    if config.workers < 1 or config.model_workers < 1:
        raise ConfigError("--workers and --model-workers must be at least 1")
    config = replace(config, token=config.token or secrets.token_urlsafe(24))
    options = dict(host=config.host, port=config.port, log_level="warning", loop="uvloop", http=GuardedHttpProtocol,
                   limit_concurrency=config.max_connections, timeout_keep_alive=5,
                   header_timeout_s=config.header_timeout_s, max_header_bytes=config.max_header_bytes)
    sock = bound_socket(ServerConfig("enrich.serve.app:app_from_runtime", **options))  # before the models load
    pool = ModelPool(config, config.model_workers, config.model_threads or None).start()
    try:
        if config.workers == 1:
            server_config = ServerConfig(create_app(config, model_sockets=pool.sockets), **options)
        else:
            runtime = pool.folder / "runtime.json"
            runtime.write_text(json.dumps({"config": asdict(config), "sockets": pool.sockets}))
            runtime.chmod(0o600)
            set_for_children(RUNTIME, str(runtime))
            server_config = ServerConfig("enrich.serve.app:app_from_runtime", factory=True, workers=config.workers, **options)
        print(f"enrich serve: http://{config.host}:{config.port}/?token={quote(config.token, safe='')}  (API:"
              f" Authorization: Bearer {config.token})", file=sys.stderr, flush=True)
        run_uvicorn(server_config, sock)
    finally:
        pool.stop()


def bound_socket(config) -> socket.socket:
    """The server's socket, bound before anything else starts: a port in use is said at once, and no address is
    printed that another server answers."""
    try:
        return config.bind_socket()
    except SystemExit:  # uvicorn logs the OSError and exits
        raise ConfigError(f"cannot listen on {config.host}:{config.port} (in use, or not an address of this machine):"
                          " choose another --port or --host") from None


def run_uvicorn(config, sock: socket.socket) -> None:
    """What `uvicorn.run` does, with our `ServerConfig` (uvicorn.run would build its own)."""
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    if config.workers > 1:
        Multiprocess(config, sockets=[sock]).run()
    else:
        uvicorn.Server(config).run(sockets=[sock])
