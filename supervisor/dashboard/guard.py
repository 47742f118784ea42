"""The dashboard's security, around the whole app, because the page can run commands
as the service's user: a random token (printed in the URL at start, as Jupyter does)
exchanged for an HttpOnly SameSite=Strict cookie; a Host header that is not the
listen address, localhost or a name allowed with --allow-host refused (DNS
rebinding); a CSRF token, not the cookie alone, on every state-changing request; a
strict Content-Security-Policy (nothing from elsewhere, no inline script) and no
Referer on every response."""

from __future__ import annotations

import hashlib
import hmac
from urllib.parse import parse_qs

from starlette.datastructures import Headers
from starlette.requests import cookie_parser
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# The cookie's name, followed by the port: a browser sends a host's cookies to every
# port, so two dashboards on one machine must not overwrite each other's.
COOKIE = "slotd_dashboard"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = frozenset({"GET", "HEAD"})
CONTENT_SECURITY_POLICY = (
    # 'unsafe-inline' styles only: xterm.js writes its measured sizes and theme into
    # <style> elements it creates (no nonce possible); scripts stay the package's own.
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; connect-src 'self'; img-src 'self'; "
    "font-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = [
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),  # the token is in the first URL
    (b"x-frame-options", b"DENY"),
    (b"cache-control", b"no-store"),
]


class Guard:
    """ASGI middleware: lets through only requests from the browser that was given
    the token, to this address, and adds the security headers to every response."""

    def __init__(self, app: ASGIApp, token: str, host: str, port: int, also: tuple[str, ...] = ()) -> None:
        self.app = app
        self.token = token
        self.cookie = f"{COOKIE}_{port}"
        # Made from the token, so that it too outlives a restart of the dashboard (an
        # open page keeps the one it was given) and changes with --new-token.
        self.csrf = hmac.new(token.encode(), b"slotd dashboard csrf", hashlib.sha256).hexdigest()
        # The names a browser may reach it by: the listen address, localhost and the
        # names the user allowed (--allow-host), each with the port; without it too on
        # port 80, where browsers leave it out. Host names are not case-sensitive.
        names = {host.lower(), "localhost", *(name.lower() for name in also)}
        bracketed = {f"[{name}]" if ":" in name else name for name in names}
        self.hosts = {f"{name}:{port}" for name in bracketed} | (bracketed if port == 80 else set())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, send)
            return
        if scope["type"] != "http":  # a websocket: the page uses none, none gets through
            await send({"type": "websocket.close", "code": 1008})
            return

        async def secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *SECURITY_HEADERS]}
            await send(message)

        refusal = self.refusal(scope)
        if refusal is not None:
            await refusal(scope, receive, secured)
        else:
            scope.setdefault("state", {})["csrf"] = self.csrf
            await self.app(scope, receive, secured)

    def refusal(self, scope: Scope) -> Response | None:
        """The response that refuses this request, or None to let it through."""
        headers = Headers(scope=scope)
        host = headers.get("host", "")
        if host.lower() not in self.hosts:
            return PlainTextResponse(
                f"refused: Host {host!r} is not this dashboard's address ({', '.join(sorted(self.hosts))})", 403
            )
        given = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token", [""])[0]
        if scope["path"] == "/" and given and same(given, self.token):
            # The token's URL is exchanged for the cookie, and leaves the address bar.
            redirect = RedirectResponse("/", 303)
            redirect.set_cookie(self.cookie, self.token, httponly=True, samesite="strict", path="/")
            return redirect
        # Starlette's parser, as browsers send them: another site's odd cookie on this
        # host (any port) must neither raise nor hide this one.
        held = cookie_parser(headers.get("cookie", "")).get(self.cookie, "")
        if not (held and same(held, self.token)):
            return PlainTextResponse(
                "refused: no valid token; open the URL `slotctl dashboard` printed when it started", 401
            )
        if scope["method"] not in SAFE_METHODS:
            csrf = headers.get(CSRF_HEADER, "")
            if not (csrf and same(csrf, self.csrf)):
                return PlainTextResponse(f"refused: a {scope['method']} needs the page's CSRF token", 403)
        return None


def same(given: str, expected: str) -> bool:
    """Whether what the browser gave is the secret, in constant time; as bytes, since
    compare_digest refuses (raises on) strings with characters beyond ASCII, which
    anyone can send."""
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected.encode())
