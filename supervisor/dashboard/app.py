"""The dashboard's routes: the page, its assets, two streams of Server-Sent Events (the
daemon's state; one session's transcript), a tty session's screen and the actions, each
a control request."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from supervisor.asyncclient import Daemon
from supervisor.client import DaemonUnavailable, RemoteError
from supervisor.dashboard.state import Filter, StatePoller, ended_filter
from supervisor.model import ENDED_STATUSES
from supervisor.wire import MAX_MESSAGE_BYTES, decode_message

STATIC = Path(__file__).parent / "static"
# How often a lost daemon is tried again by a stream.
RECONNECT_INTERVAL = 0.5
# Actions on one session: the button's name is the control command's.
ACTIONS: dict[str, dict[str, Any]] = {
    "stop": {"wait": False},
    "kill": {},
    "cancel": {},
    "pause": {},
    "resume": {},
    "restart": {},
}


def event(data: Any, name: str | None = None, event_id: int | None = None) -> bytes:
    """One Server-Sent Event; its id is what the browser sends back as Last-Event-ID."""
    lines = [f"event: {name}"] if name else []
    if event_id is not None:
        lines.append(f"id: {event_id}")
    lines.append(f"data: {json.dumps(data, separators=(',', ':'))}")
    return ("\n".join(lines) + "\n\n").encode()


def bad_request(message: str, status: int = 400, code: str = "bad_request") -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status)


# A body over MAX_MESSAGE_BYTES is still read to its end (up to this much) and dropped
# before the answer: a server that closes a connection with a request half read makes
# the client's kernel reset it, and the client may never see the answer.
DRAIN_MAX_BYTES = 64 * MAX_MESSAGE_BYTES
TOO_LARGE = object()  # json_body's answer for a body over MAX_MESSAGE_BYTES


async def json_body(request: Request) -> Any:
    """The request's body as JSON, up to MAX_MESSAGE_BYTES (what the daemon takes in one
    message) and parsed as the daemon parses messages; TOO_LARGE if it is longer, None
    if it is not such JSON."""
    body = bytearray()
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size <= MAX_MESSAGE_BYTES:
            body += chunk
        elif size > DRAIN_MAX_BYTES:
            break
    if size > MAX_MESSAGE_BYTES:
        return TOO_LARGE
    try:
        return decode_message(bytes(body))
    except ValueError:  # UnicodeDecodeError and TooDeep included
        return None


def sse(events: AsyncIterator[bytes]) -> StreamingResponse:
    return StreamingResponse(events, media_type="text/event-stream", headers={"x-accel-buffering": "no"})


def build_app(daemon: Daemon) -> Starlette:
    html = (STATIC / "index.html").read_text()
    poller = StatePoller(daemon)

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        """The state poller, for as long as the dashboard serves."""
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(poller.run)
            yield
            tasks.cancel_scope.cancel()

    async def index(request: Request) -> Response:
        return HTMLResponse(html.replace("{{csrf}}", request.scope["state"]["csrf"]))

    async def state_events(ended: Filter | None) -> AsyncIterator[bytes]:
        """The daemon's state (`ps`, `info`, and the ended sessions the filter picks),
        each time it changes, from the poller all pages share."""
        last: Any = None
        async with poller.subscribe(ended) as page:
            while True:
                state = await page.next_state()
                if state != last:
                    yield event(state, "state")
                    last = state

    async def state(request: Request) -> Response:
        status = request.query_params.get("status", "")
        label = request.query_params.get("label", "")
        if not status and not label:
            return sse(state_events(None))
        ended = [str(name) for name in ENDED_STATUSES]
        if status and status not in ended:
            return bad_request(f"status {status!r} is not an ended status ({', '.join(ended)})")
        key, sep, value = label.partition("=")
        if label and not (sep and key):
            return bad_request(f"label {label!r} is not KEY=VALUE")
        return sse(state_events(ended_filter([status] if status else ended, {key: value} if label else None)))

    async def follow_events(session: str, since_seq: int) -> AsyncIterator[bytes]:
        """The session's rows after since_seq to its end; after a lost daemon, asked
        again from the last row sent, so none comes twice and none is missed."""
        lost = False
        while True:
            try:
                async with daemon.connect() as connection:
                    if lost:
                        yield event({"daemon": "up"}, "daemon")
                        lost = False
                    async for message in connection.stream("follow", session=session, since_seq=since_seq):
                        row = message.get("row")
                        if row is not None:
                            since_seq = row["seq"]
                            yield event(row, "row", row["seq"])
                yield event({"ended": True}, "end")
                return
            except RemoteError as error:
                yield event({"code": error.code, "message": error.message}, "refused")
                return
            except (DaemonUnavailable, ConnectionError) as error:
                if not lost:
                    yield event({"daemon": "down", "error": str(error)}, "daemon")
                    lost = True
                await anyio.sleep(RECONNECT_INTERVAL)

    async def follow(request: Request) -> Response:
        resume = request.headers.get("last-event-id") or request.query_params.get("since_seq") or "0"
        if not (resume.isascii() and resume.isdigit()):  # "²" is a digit to isdigit(), not to int()
            return bad_request(f"since_seq {resume!r} is not a seq")
        return sse(follow_events(request.path_params["session"], int(resume)))

    async def act(request: Request) -> Response:
        action = request.path_params["action"]
        session = request.path_params["session"]
        args: dict[str, Any]
        if action in ("send", "resize"):
            body = await json_body(request)
            if body is TOO_LARGE:
                return bad_request(f"{action}'s body is over {MAX_MESSAGE_BYTES} bytes", 413, "too_large")
            if not isinstance(body, dict):
                return bad_request(f"{action} needs a JSON object (of at most {MAX_MESSAGE_BYTES} bytes)")
        if action == "send":
            text = body.get("text")
            newline = body.get("newline", True)
            if not isinstance(text, str) or not isinstance(newline, bool):
                return bad_request("send needs a text string (and newline, true or false)")
            # The input box sends a line; a terminal widget sends its keys as typed.
            cmd, args = "send", {"data": text + "\n" if newline else text}
        elif action == "resize":
            # The terminal widget's size, as its box allows: the daemon checks the range.
            cols, rows = body.get("cols"), body.get("rows")
            if not (type(cols) is int and type(rows) is int):
                return bad_request("resize needs cols and rows, whole numbers")
            cmd, args = "resize", {"cols": cols, "rows": rows}
        elif action in ACTIONS:
            cmd, args = action, ACTIONS[action]
        else:
            return bad_request(f"no action {action!r}", 404)
        return await answer(cmd, session=session, **args)

    async def screen(request: Request) -> Response:
        """What draws a tty session's terminal as it is now, and the seq to follow from."""
        return await answer("screen", session=request.path_params["session"])

    async def answer(cmd: str, **args: Any) -> Response:
        """The daemon's result of one request, or its refusal, as JSON."""
        try:
            result = await daemon.request(cmd, **args)
        except RemoteError as error:
            return JSONResponse({"error": {"code": error.code, "message": error.message}}, 409)
        except (DaemonUnavailable, ConnectionError) as error:
            return JSONResponse({"error": {"code": "unavailable", "message": str(error)}}, 503)
        return JSONResponse({"result": result})

    return Starlette(
        lifespan=lifespan,
        routes=[
            Route("/", index),
            Route("/api/state", state),
            Route("/api/sessions/{session}/follow", follow),
            Route("/api/sessions/{session}/screen", screen),
            Route("/api/sessions/{session}/{action}", act, methods=["POST"]),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ],
    )
