"""slotctl mcp: the MCP server on stdio, driven by the MCP SDK's own client and by a bare
JSON-RPC client written from the specification, against real daemons."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import psutil
import trio
from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp.types import CallToolResult

from supervisor.cli.mcp import INSTALL_HINT
from supervisor.errors import CliExit
from supervisor.protocol import PS_REPLY_MAX
from tests.harness import DaemonHandle, wait_for
from tests.helpers import py

TOOLS = {
    "list_sessions": {"status", "labels", "limit"},
    "start_session": {"argv", "cwd", "env", "labels", "priority", "tty"},
    "read_output": {"session", "tail_lines", "since_seq", "skip_bytes", "stream", "max_bytes"},
    "send_input": {"session", "text", "newline"},
    "wait_session": {"session", "until", "timeout_s"},
    "stop_session": {"session", "force"},
    "cancel_session": {"session"},
    "session_info": {"session", "tail_lines", "max_bytes"},
}
REQUIRED = {"start_session": ["argv"], "list_sessions": []}
ASKS = (
    "import sys\n"
    "sys.stdout.write('Continue? [y/N] '); sys.stdout.flush()\n"
    "answer = sys.stdin.readline().strip()\n"
    "print('the answer was', answer)\n"
)
# A session that exits with CODE once the file GATE exists.
GATED = "import os, sys, time\nwhile not os.path.exists({gate!r}): time.sleep(0.02)\nsys.exit({code})"


def server_argv(daemon: DaemonHandle) -> list[str]:
    return [sys.executable, "-m", "supervisor", "--socket", str(daemon.socket), "mcp"]


@asynccontextmanager
async def mcp_client(daemon: DaemonHandle) -> AsyncIterator[ClientSession]:
    """The SDK's client, with `slotctl mcp` as its server subprocess (its stderr in a file)."""
    argv = server_argv(daemon)
    params = StdioServerParameters(command=argv[0], args=argv[1:], cwd=daemon.root)
    # A file, not pytest's captured stderr: the subprocess needs a descriptor.
    with (daemon.root / "mcp.log").open("w") as errlog:
        async with stdio_client(params, errlog=errlog) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            yield session


async def call(client: ClientSession, tool: str, **arguments: Any) -> dict[str, Any]:
    """A tool's structured result, which must not be an error."""
    result = await client.call_tool(tool, arguments)
    assert not result.is_error, text_of(result)
    assert result.structured_content is not None
    return result.structured_content


def text_of(result: CallToolResult) -> str:
    return "".join(getattr(block, "text", "") for block in result.content)


def mcp_server_process() -> psutil.Process:
    """The `slotctl mcp` this test started (a child of the test's own process)."""
    return wait_for(
        lambda: next((p for p in psutil.Process().children() if p.cmdline()[-1:] == ["mcp"]), None),
        what="slotctl mcp running",
    )


def connected_to_daemon(process: psutil.Process) -> bool:
    """Whether it holds a Unix socket: its stdio are pipes, so that is the daemon's."""
    return bool(process.net_connections(kind="unix"))


async def test_the_tools_are_listed_with_input_and_output_schemas(daemon):
    """slotctl mcp lists the eight tools, each with the protocol's argument names and an output schema of an object."""
    async with mcp_client(daemon) as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
    assert set(tools) == set(TOOLS)
    for name, arguments in TOOLS.items():
        schema = tools[name].input_schema
        assert set(schema["properties"]) == arguments, name
        assert schema.get("required", []) == REQUIRED.get(
            name, ["session", "text"] if name == "send_input" else ["session"]
        )
        assert tools[name].output_schema is not None and tools[name].output_schema["type"] == "object", name
        assert tools[name].description
    assert set(tools["read_output"].output_schema["properties"]) >= {"text", "next_seq", "left_out_bytes"}
    assert tools["wait_session"].input_schema["properties"]["until"]["enum"] == ["ended", "checkpoint"]
    assert tools["stop_session"].annotations.destructive_hint


async def test_an_agent_answers_a_checkpoint_prompt(make_daemon):
    """Through MCP a session asking `Continue? [y/N]` is waited for until its checkpoint, answered with send_input, waited for to its end, and read_output shows the answer."""
    daemon = make_daemon(checkpoint_pattern=r"Continue\? \[y/N\]")
    async with mcp_client(daemon) as client:
        started = await call(client, "start_session", argv=py(ASKS), labels={"by": "agent"})
        assert started["status"] == "running" and started["labels"] == {"by": "agent"}
        assert started["cwd"] == str(daemon.root)  # the server's own directory
        session = started["id"]
        waited = await call(client, "wait_session", session=session[:8], until="checkpoint", timeout_s=30)
        assert waited["reached"] == "checkpoint" and not waited["timed_out"]
        assert waited["session"]["status"] == "waiting_checkpoint"
        assert (await call(client, "send_input", session=session, text="y")) == {"sent": 2}
        waited = await call(client, "wait_session", session=session, until="ended", timeout_s=30)
        assert waited["reached"] == "ended" and waited["session"]["status"] == "completed"
        assert waited["session"]["exit_code"] == 0
        output = await call(client, "read_output", session=session, stream="stdout")
        assert output["text"] == "Continue? [y/N] the answer was y\n"
        assert output["left_out_bytes"] == 0 and output["status"] == "completed"
        everything = await call(client, "read_output", session=session)
        assert "[slotd] exit code 0\n" in everything["text"] and "y\n" in everything["text"]
        info = await call(client, "session_info", session=session, tail_lines=2)
        assert info["last_lines"].endswith("the answer was y\n[slotd] exit code 0\n")
        listed = await call(client, "list_sessions", labels={"by": "agent"})
        assert [s["id"] for s in listed["sessions"]] == [session]


async def test_large_output_is_cut_at_max_bytes_and_next_seq_reads_the_rest(daemon):
    """A 5 MB output comes cut to max_bytes with a marker saying how much was left out, and next_seq with skip_bytes reads exactly the rest."""
    line = "x" * 99 + "\n"
    code = f"import sys\nfor i in range(50000): sys.stdout.write({line!r})"
    async with mcp_client(daemon) as client:
        session = (await call(client, "start_session", argv=py(code)))["id"]
        await call(client, "wait_session", session=session, timeout_s=60)
        first = await call(client, "read_output", session=session, stream="stdout")
        kept, marker = first["text"].split("\n[slotd: cut at 16384 bytes;")
        assert len(kept.encode()) <= 16384 and kept.endswith("\n")
        assert first["left_out_bytes"] == 5_000_000 - len(kept.encode())
        assert f"{first['left_out_bytes']} more bytes left out" in marker
        assert f"since_seq={first['next_seq']} and skip_bytes={first['next_skip_bytes']}" in marker
        rest = await call(
            client,
            "read_output",
            session=session,
            stream="stdout",
            since_seq=first["next_seq"],
            skip_bytes=first["next_skip_bytes"],
            max_bytes=8 * 1024 * 1024,
        )
        assert rest["left_out_bytes"] == 0
        assert kept + rest["text"] == line * 50000
        tail = await call(client, "read_output", session=session, stream="stdout", tail_lines=1000, max_bytes=1000)
        assert (
            tail["text"] == "[slotd: 99000 earlier bytes of these 1000 lines left out (max_bytes=1000)]\n" + line * 10
        )
        assert tail["left_out_bytes"] == 99_000
        assert tail["next_seq"] == rest["next_seq"]  # the transcript's last row: read on after it


async def test_a_cut_never_splits_a_character(daemon):
    """Output without newlines, in two-byte characters, read 1001 bytes at a time, comes whole characters each time and joins to the whole."""
    async with mcp_client(daemon) as client:
        session = (await call(client, "start_session", argv=py("print('é' * 3000, end='')")))["id"]
        await call(client, "wait_session", session=session, timeout_s=30)
        pages, since_seq, skip_bytes = [], 0, 0
        while True:
            page = await call(
                client,
                "read_output",
                session=session,
                stream="stdout",
                since_seq=since_seq,
                skip_bytes=skip_bytes,
                max_bytes=1001,
            )
            text = page["text"].split("\n[slotd: cut at")[0]
            assert "\ufffd" not in text and len(text.encode()) <= 1001
            pages.append(text)
            if not page["left_out_bytes"]:
                break
            since_seq, skip_bytes = page["next_seq"], page["next_skip_bytes"]
    assert "".join(pages) == "é" * 3000 and len(pages) == 6


async def test_a_bad_session_id_is_a_tool_error_with_not_found(daemon):
    """A tool naming no session returns a tool error carrying not_found and the daemon's message, and the server serves on."""
    async with mcp_client(daemon) as client:
        for tool, arguments in (
            ("read_output", {}),
            ("session_info", {}),
            ("wait_session", {"timeout_s": 1}),
            ("send_input", {"text": "y"}),
            ("stop_session", {}),
        ):
            result = await client.call_tool(tool, {"session": "nosuchid", **arguments})
            assert result.is_error, tool
            assert result.structured_content == {
                "code": "not_found",
                "message": "no session with id or prefix 'nosuchid'",
            }
            assert text_of(result) == "not_found: no session with id or prefix 'nosuchid'"
        assert (await call(client, "list_sessions"))["sessions"] == []


async def test_a_refused_request_carries_the_protocols_error_code(daemon):
    """A request the daemon refuses (a cancel of a running session) is a tool error with its code, invalid_state."""
    async with mcp_client(daemon) as client:
        session = (await call(client, "start_session", argv=py("import time; time.sleep(30)")))["id"]
        result = await client.call_tool("cancel_session", {"session": session})
        assert result.is_error and result.structured_content["code"] == "invalid_state"
        stopped = await call(client, "stop_session", session=session, force=True)
        assert stopped["id"] == session
        assert (await call(client, "wait_session", session=session, timeout_s=30))["session"]["status"] == "killed"


async def test_wait_session_carries_on_across_a_daemon_restart(daemon):
    """A wait_session whose daemon is SIGKILLed and started again reconnects and returns the session's end."""
    session = daemon.start_session(py(GATED.format(gate=str(daemon.root / "go"), code=7)))
    async with mcp_client(daemon) as client:
        server = mcp_server_process()
        waited: dict[str, Any] = {}

        async def wait() -> None:
            waited.update(await call(client, "wait_session", session=session["id"][:8], timeout_s=60))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(wait)
            await trio.to_thread.run_sync(lambda: wait_for(lambda: connected_to_daemon(server), what="wait sent"))
            await trio.to_thread.run_sync(daemon.kill9)
            await trio.to_thread.run_sync(daemon.start)
            await trio.to_thread.run_sync(lambda: wait_for(lambda: connected_to_daemon(server), what="wait sent again"))
            (daemon.root / "go").touch()
    assert waited["reached"] == "ended" and not waited["timed_out"]
    assert waited["session"]["status"] == "failed" and waited["session"]["exit_code"] == 7


async def test_wait_session_times_out_saying_so(daemon):
    """wait_session returns once timeout_s has passed, with timed_out true and the session as it is."""
    session = daemon.start_session(py(GATED.format(gate=str(daemon.root / "never"), code=0)))
    async with mcp_client(daemon) as client:
        waited = await call(client, "wait_session", session=session["id"], timeout_s=0.3)
    assert waited["timed_out"] and waited["reached"] is None and waited["session"]["status"] == "running"


async def test_the_transcript_and_the_session_list_are_resources(daemon):
    """A session's transcript reads as slotd://sessions/{id}/transcript, and the session list as slotd://sessions."""
    session = daemon.start_session(py("print('hello from the session')"))
    daemon.wait_ended(session["id"])
    async with mcp_client(daemon) as client:
        templates = (await client.list_resource_templates()).resource_templates
        assert [t.uri_template for t in templates] == ["slotd://sessions/{id}/transcript"]
        transcript = await client.read_resource(f"slotd://sessions/{session['id']}/transcript")
        assert "hello from the session\n" in transcript.contents[0].text
        listing = json.loads((await client.read_resource("slotd://sessions")).contents[0].text)
    assert [s["id"] for s in listing["sessions"]] == [session["id"]]


async def test_a_daemon_that_is_not_running_is_a_tool_error(make_daemon):
    """With no daemon on its socket, slotctl mcp still starts, and a tool call is an error saying nothing listens there."""
    daemon = make_daemon(start=False)
    async with mcp_client(daemon) as client:
        result = await client.call_tool("list_sessions", {})
    assert result.is_error and result.structured_content["code"] == "unavailable"
    assert f"nothing listens on {daemon.socket}" in result.structured_content["message"]
    assert "--socket named it" in result.structured_content["message"]
    async with mcp_client(daemon) as client:
        with trio.fail_after(30):  # not its timeout_s: a daemon never there is said at once
            waited = await client.call_tool("wait_session", {"session": "0" * 8, "timeout_s": 3600})
    assert waited.is_error and waited.structured_content["code"] == "unavailable"


async def test_listing_and_tail_arguments_are_bounded(daemon):
    """list_sessions' limit and read_output's tail_lines have upper bounds in their schemas, and a call past them is refused."""
    async with mcp_client(daemon) as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
        assert tools["list_sessions"].input_schema["properties"]["limit"]["maximum"] == PS_REPLY_MAX
        tail = tools["read_output"].input_schema["properties"]["tail_lines"]["anyOf"][0]
        assert tail["maximum"] == 10000
        result = await client.call_tool("list_sessions", {"limit": 10**9})
    assert result.is_error


def test_a_bare_json_rpc_client_can_use_it(daemon):
    """A client written from the MCP specification (JSON-RPC lines on stdio, no SDK) initializes, lists the tools and calls them."""
    server = subprocess.Popen(
        server_argv(daemon), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=daemon.root
    )
    assert server.stdin is not None and server.stdout is not None

    def send(message: dict[str, Any]) -> None:
        server.stdin.write(json.dumps({"jsonrpc": "2.0", **message}).encode() + b"\n")
        server.stdin.flush()

    def ask(request_id: int, method: str, params: dict[str, Any]) -> dict[str, Any]:
        send({"id": request_id, "method": method, "params": params})
        reply = json.loads(server.stdout.readline())
        assert reply["jsonrpc"] == "2.0" and reply["id"] == request_id, reply
        return reply["result"]

    try:
        hello = ask(
            1,
            "initialize",
            {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "bare", "version": "1"}},
        )
        assert hello["protocolVersion"] == "2025-06-18"
        assert hello["serverInfo"]["name"] == "slotd" and "tools" in hello["capabilities"]
        send({"method": "notifications/initialized"})
        tools = ask(2, "tools/list", {})["tools"]
        assert {tool["name"] for tool in tools} == set(TOOLS)
        assert all(tool["outputSchema"]["type"] == "object" for tool in tools)
        started = ask(3, "tools/call", {"name": "start_session", "arguments": {"argv": py("print(6 * 7)")}})
        assert started["isError"] is False
        session = started["structuredContent"]["id"]
        assert session in started["content"][0]["text"]
        ended = ask(4, "tools/call", {"name": "wait_session", "arguments": {"session": session, "timeout_s": 30}})
        assert ended["structuredContent"]["session"]["status"] == "completed"
        output = ask(5, "tools/call", {"name": "read_output", "arguments": {"session": session, "stream": "stdout"}})
        assert output["structuredContent"]["text"] == "42\n"
        refused = ask(6, "tools/call", {"name": "session_info", "arguments": {"session": "zz"}})
        assert refused["isError"] is True and refused["structuredContent"]["code"] == "not_found"
    finally:
        server.stdin.close()
        returncode = server.wait(10)
        server.stdout.close()
    assert returncode == 0  # stdin closed: it stops by itself


def test_without_the_sdk_slotctl_mcp_says_what_to_install(daemon):
    """Where the MCP SDK is not installed, slotctl mcp exits 2 naming the extra to install."""
    hide_the_sdk = "import sys; sys.modules['mcp'] = None; from supervisor.cli import main; main()"
    result = subprocess.run(
        [sys.executable, "-c", hide_the_sdk, "--socket", str(daemon.socket), "mcp"],
        capture_output=True,
        cwd=Path(__file__).resolve().parent.parent,
        timeout=30,
    )
    assert result.returncode == CliExit.USAGE
    assert INSTALL_HINT in result.stderr.decode()
    assert "pip install 'slotd[mcp]'" in INSTALL_HINT
