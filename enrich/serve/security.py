"""What every request passes before a route sees it (`Guard`), and the checks the routes share: the server's token
compared as bytes, bodies counted as they arrive and timed, redirects kept on this site, security headers on every
answer."""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import string
import time
from urllib.parse import parse_qsl, urlsplit

from starlette.exceptions import HTTPException
from starlette.requests import cookie_parser
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse

from enrich.errors import ConfigError
from enrich.settings import ServeConfig

COOKIE = "enrich_token"
OPEN_PATHS = ("/v1/health", "/static/")
MIN_TOKEN = 16
TOKEN_CHARACTERS = set(string.ascii_letters + string.digits + string.punctuation)
SECURITY_HEADERS = [
    (b"referrer-policy", b"no-referrer"),  # an address never leaves for another site in a Referer
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    # Scripts and styles from this server's own files only (no inline script can run), no framing, forms post here.
    (b"content-security-policy", b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: https:; "
                                 b"object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"),
]


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def check_token(token: str) -> None:
    """A token strong enough to put a server on a network: at least 16 printable ASCII characters, no whitespace."""
    if len(token) < MIN_TOKEN or not set(token) <= TOKEN_CHARACTERS:
        raise ConfigError(f"--token (or ENRICH_TOKEN) must be at least {MIN_TOKEN} printable ASCII characters without"
                          " whitespace (e.g. `python -c 'import secrets; print(secrets.token_urlsafe(24))'`)")


def same_secret(given: str | bytes | None, secret: str | bytes) -> bool:
    """`given` equals `secret`, compared as bytes in constant time; anything that is not ASCII is simply not equal."""
    try:
        given = given.encode("ascii") if isinstance(given, str) else given
        secret = secret.encode("ascii") if isinstance(secret, str) else secret
    except UnicodeEncodeError:
        return False
    return given is not None and hmac.compare_digest(given, secret)


def derived(token: str, purpose: bytes) -> str:
    """A value made from the token for one purpose (the forms' CSRF field): hex, safe in any field."""
    return hmac.new(token.encode("ascii"), purpose, "sha256").hexdigest()


def local_path(target: str | None, host: str | None = None) -> str:
    """Where a redirect may go: a path on this site. An absolute address (a Referer) counts only when it names this
    host, and gives its path; `//host`, a scheme, a backslash or anything else odd gives `/`."""
    if not target:
        return "/"
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        if host is None or parts.netloc != host or parts.scheme not in ("http", "https"):
            return "/"
        target = parts.path + (f"?{parts.query}" if parts.query else "")
    if not target.startswith("/") or target.startswith("//") or "\\" in target or not target.isprintable():
        return "/"
    return target


class BodyRefused(HTTPException):
    """A body over its limit (413) or too slow (408): raised where a route reads it; the connection is closed."""

    def __init__(self, status: int, detail: str):
        super().__init__(status, detail, headers={"Connection": "close"})


class LimitedBody:
    """The request's `receive`, counting the bytes that actually arrive (a chunked body too) against `limit`, and
    timing them: the body must arrive within `grace_s`, plus a second for every `min_rate` bytes it holds."""

    def __init__(self, receive, limit: int, grace_s: float, min_rate: float, clock=time.monotonic):
        self.inner, self.limit, self.grace, self.min_rate, self.clock = receive, limit, grace_s, min_rate, clock
        self.started, self.received, self.done = clock(), 0, False

    async def __call__(self):
        if self.done:
            return await self.inner()
        remaining = self.started + self.grace + self.received / self.min_rate - self.clock()
        try:
            message = await asyncio.wait_for(self.inner(), max(remaining, 0.0))
        except asyncio.TimeoutError:
            raise BodyRefused(408, "the request body came too slowly") from None
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self.limit:
                raise BodyRefused(413, f"request body over {self.limit} bytes")
            self.done = not message.get("more_body", False)
        return message


class Guard:
    """Every request: its body within the limits (413 at once for a Content-Length over them, else counted as it
    arrives), within time (408), and, but for the health check and the static files, the server's token: from
    the `Authorization` header (the API) or the cookie that the `?token=` link sets (pages). Every answer carries the
    security headers. Plain ASGI: it adds nothing to a request's cost but the checks."""

    def __init__(self, app, config: ServeConfig):
        self.app, self.config = app, config
        self.bearer = b"Bearer " + config.token.encode("ascii")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        send = with_headers(send)
        path, config, headers = scope["path"], self.config, dict(scope["headers"])
        limit = config.max_upload_bytes if path == "/batches" else config.max_request_bytes
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            return await refuse(413, f"request body over {limit} bytes", scope, receive, send)
        if not path.startswith(OPEN_PATHS):
            refusal = self.refusal(scope, headers)
            if refusal is not None:
                return await refusal(scope, receive, send)
        body = LimitedBody(receive, limit, config.body_timeout_s, config.min_body_rate)
        try:
            await self.app(scope, body, send)
        except BodyRefused as refused:
            if not send.started:
                await refuse(refused.status_code, refused.detail, scope, receive, send)

    def refusal(self, scope, headers: dict):
        """None when the request carries the token; else the answer: the cookie for a `?token=` link, or a 401."""
        path = scope["path"]
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        if "token" in query and scope["method"] == "GET" and same_secret(query["token"], self.config.token):
            response = RedirectResponse(local_path(path), status_code=303)  # the token leaves the address bar at once
            response.set_cookie(COOKIE, self.config.token, httponly=True, samesite="strict")
            return response
        if same_secret(headers.get(b"authorization"), self.bearer):
            return None
        if not path.startswith("/v1/") and same_secret(cookie(headers, COOKIE), self.config.token):
            return None
        if path.startswith(("/v1/", "/docs", "/openapi")):
            return JSONResponse({"detail": "a token is needed: Authorization: Bearer <token>"}, status_code=401)
        return PlainTextResponse("enrich: open the address `enrich serve` printed (it carries the token)", status_code=401)


def cookie(headers: dict, name: str) -> str | None:
    return cookie_parser(headers.get(b"cookie", b"").decode("latin-1")).get(name)


async def refuse(status: int, detail: str, scope, receive, send) -> None:
    """A refusal that closes the connection: the rest of a refused body is never read."""
    await PlainTextResponse(detail, status_code=status, headers={"Connection": "close"})(scope, receive, send)


def with_headers(send):
    """`send` with the security headers added to the answer's start, and whether it has started."""
    async def sending(message):
        if message["type"] == "http.response.start":
            sending.started = True
            present = {name.lower() for name, _ in message.get("headers", [])}
            message = {**message, "headers": [*message.get("headers", []),
                                              *((k, v) for k, v in SECURITY_HEADERS if k not in present)]}
        await send(message)
    sending.started = False
    return sending
