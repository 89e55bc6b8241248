"""What every workbench page shares: the templates, the reviewer's name (one per browser, asked once, kept in a
cookie; the server's token stays the access control), the CSRF check, and errors rendered as pages."""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import quote, unquote

from fastapi import HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates

from enrich.serve.paths import KnownPaths
from enrich.serve.security import SECURITY_HEADERS, same_secret
from enrich.serve.workbench import Workbench

templates = Jinja2Templates(directory=Path(__file__).parent / "templates")  # autoescapes every value


def ago(at: str | None) -> str:
    """A stored time (UTC, ISO 8601) as a reviewer reads it: '40 s ago', '3 min ago', '2 h ago', else the date."""
    if not at:
        return ""
    seconds = (datetime.now(timezone.utc) - datetime.fromisoformat(at)).total_seconds()
    if seconds < 60:
        return f"{max(seconds, 0):.0f} s ago"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 86400:
        return f"{seconds / 3600:.0f} h ago"
    return f"on {at[:10]}"


templates.env.filters["ago"] = ago
REVIEWER = "enrich_reviewer"
REVIEWER_DAYS = 365
API_PATHS = ("/v1/", "/docs", "/openapi", "/redoc", "/static/")
log = logging.getLogger("enrich.serve")


async def workbench(request: Request) -> Workbench:
    return request.app.state.workbench


def reviewer(request: Request) -> str:
    """The name this browser reviews under; "" until it has given one."""
    return unquote(request.cookies.get(REVIEWER, ""))[:40].strip()


def remember_reviewer(response, name: str) -> None:
    response.set_cookie(REVIEWER, quote(name), max_age=REVIEWER_DAYS * 86400, httponly=True, samesite="strict")


def ask_reviewer(request: Request) -> RedirectResponse:
    """To the page that asks who is reviewing, then back here."""
    back = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/reviewer?next={quote(back)}", status_code=303)


def address_number(text: str | None) -> int | None:
    """A decision's, operation's or page's number from an address: ASCII digits below 2**63, else None (`isdigit`
    alone takes '²', which int() refuses)."""
    return int(text) if text and text.isascii() and text.isdigit() and len(text) < 19 else None


def check_csrf(request: Request, token: str) -> None:
    if not same_secret(token or "", request.app.state.csrf):
        raise HTTPException(403, "the form is stale or came from another site: reload the page and try again")


def page(request: Request, name: str, status_code: int = 200, **context) -> HTMLResponse:
    return templates.TemplateResponse(request, name, {"csrf": request.app.state.csrf, "reviewer": reviewer(request),
                                                      **context}, status_code=status_code)


def known_paths(request: Request) -> KnownPaths:
    """The paths a decision may name: the index's, and those the team confirmed as new (kept until one is added)."""
    bench, state = request.app.state.workbench, request.app.state
    added = bench.store.new_paths()
    cached = getattr(state, "known_paths", None)
    if cached is None or cached[0] != len(added):
        cached = state.known_paths = (len(added), KnownPaths([*bench.known_paths, *added]))
    return cached[1]


# -- errors as pages ---------------------------------------------------------------------------------------------------
HINTS = {
    401: "Open the address `enrich serve` printed: it carries the server's token. A server restarted without --token "
         "made a new one; ask whoever runs it for the new address.",
    403: "Reload the page you came from and try again.",
    404: "It may have been removed, or the address was mistyped.",
    413: "The file or form is over the server's limit (--max-upload-bytes, --max-request-bytes).",
}


def error_message(body: bytes, content_type: str) -> str:
    """The words of an error response: a JSON `detail` (a string, or the validation errors' fields and messages)."""
    text = body.decode("utf-8", "replace")
    if "json" not in content_type:
        return text
    try:
        detail = json.loads(text).get("detail", text)
    except (ValueError, AttributeError):
        return text
    if isinstance(detail, list):
        return "; ".join(f"{'.'.join(str(p) for p in d.get('loc', [])[1:]) or 'request'}: {d.get('msg', d)}"
                         if isinstance(d, dict) and "msg" in d else (d.get("error") if isinstance(d, dict) else str(d))
                         for d in detail)
    return str(detail)


def error_page(status: int, message: str) -> bytes:
    return templates.get_template("error.html").render(status=status, message=message, hint=HINTS.get(status, ""),
                                                       reviewer="", csrf="").encode()


class ErrorPages:
    """A browser's request for a page that ends in an error (a 404 from the router, a 422 from a form, the token
    guard's 401) gets a page with the workbench's look that says what went wrong; the API and other clients get
    the error as it was. An unexpected error is logged with its traceback and shown as a bug."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"].startswith(API_PATHS):
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        if b"text/html" not in headers.get(b"accept", b""):
            return await self.app(scope, receive, send)
        held: dict = {}

        async def catch(message):
            if message["type"] == "http.response.start" and message["status"] >= 400:
                held["start"], held["body"] = message, b""
                return
            if "start" in held and message["type"] == "http.response.body":
                held["body"] += message.get("body", b"")
                if not message.get("more_body"):
                    await self.replace(held, send)
                return
            if message["type"] == "http.response.start":
                held["sent"] = True
            await send(message)

        try:
            await self.app(scope, receive, catch)
        except Exception as error:  # noqa: BLE001 - a bug: logged in full, shown as one
            if "sent" in held:
                raise
            log.exception("a bug answering %s %s", scope.get("method"), scope["path"])
            held["start"], held["body"] = {"status": 500, "headers": []}, f"a bug in enrich: {type(error).__name__}: {error}".encode()
            await self.replace(held, send)

    @staticmethod
    async def replace(held: dict, send) -> None:
        held["sent"] = True
        start = held["start"]
        kept = {k.lower(): v for k, v in start.get("headers", [])}
        content_type = kept.get(b"content-type", b"text/plain").decode()
        if "text/html" in content_type:  # already a page
            await send(start)
            return await send({"type": "http.response.body", "body": held["body"]})
        body = error_page(start["status"], error_message(held["body"], content_type))
        headers = [(b"content-type", b"text/html; charset=utf-8"), (b"content-length", str(len(body)).encode())]
        headers += [(k, v) for k, v in start.get("headers", []) if k.lower() in (b"set-cookie", b"www-authenticate", b"connection")]
        headers += SECURITY_HEADERS  # this sits outside the guard, which added them to the answer it replaces
        await send({"type": "http.response.start", "status": start["status"], "headers": headers})
        await send({"type": "http.response.body", "body": body})
