"""slotctl dashboard: its security (token, cookie, Host, CSRF, CSP), its streams and its
actions, through a real HTTP client against a real dashboard process and a real daemon."""

from __future__ import annotations

import os
import pwd
import stat
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest

from supervisor.errors import CliExit
from tests.harness import DEADLINE, DaemonHandle, wait_for
from tests.helpers import CountingRelay, Dashboard, events, py


@pytest.fixture
def dashboard(daemon: DaemonHandle) -> Iterator[Dashboard]:
    board = Dashboard(daemon)
    yield board
    board.stop()


def test_the_token_url_gives_a_strict_httponly_cookie_that_opens_the_page(dashboard):
    """The printed URL answers with a redirect setting an HttpOnly SameSite=Strict cookie, which then opens the page."""
    with httpx.Client(base_url=dashboard.base) as client:
        first = client.get(dashboard.url)
        assert first.status_code == 303 and first.headers["location"] == "/"
        cookie = first.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie
        # Named for the port: a browser sends it to every dashboard on this host.
        assert cookie.startswith(f"slotd_dashboard_{urlsplit(dashboard.base).port}=")
        page = client.get("/")
        assert page.status_code == 200 and "slotd dashboard" in page.text
        assert "default-src 'none'" in page.headers["content-security-policy"]
        scripts = page.headers["content-security-policy"].split("script-src", 1)[1].split(";", 1)[0]
        assert scripts.strip() == "'self'"  # no inline script, no eval, nothing from elsewhere
        assert page.headers["referrer-policy"] == "no-referrer"


def test_without_the_token_the_page_and_its_streams_are_refused(dashboard):
    """No cookie, or a wrong token, gets 401 for the page, the state stream and the assets, with the security headers."""
    with httpx.Client(base_url=dashboard.base) as client:
        for path in ("/", "/?token=wrong", "/api/state", "/static/dashboard.js"):
            response = client.get(path)
            assert response.status_code == 401, path
            assert "token" in response.text
            assert "content-security-policy" in response.headers
        client.cookies.set(f"slotd_dashboard_{urlsplit(dashboard.base).port}", "wrong")
        assert client.get("/").status_code == 401


def test_a_foreign_host_header_is_refused_even_with_the_cookie(dashboard):
    """A request whose Host names another name (DNS rebinding) is refused with 403; localhost is let through."""
    with dashboard.client() as client:
        port = urlsplit(dashboard.base).port
        refused = client.get("/", headers={"host": f"evil.example:{port}"})
        assert refused.status_code == 403 and "evil.example" in refused.text
        assert client.get("/", headers={"host": f"127.0.0.1:{port + 1}"}).status_code == 403
        assert client.get("/", headers={"host": f"localhost:{port}"}).status_code == 200


def test_a_post_without_the_csrf_token_is_refused_and_with_it_stops_the_session(daemon, dashboard):
    """A stop POSTed with the cookie alone is refused (403) and the session runs on; with the CSRF token it stops."""
    session = daemon.start_session(py("import time; time.sleep(60)"))
    daemon.wait_status(session["id"], "running")
    with dashboard.client() as client:
        refused = client.post(f"/api/sessions/{session['id']}/stop")
        assert refused.status_code == 403 and "CSRF" in refused.text
        wrong = client.post(f"/api/sessions/{session['id']}/stop", headers={"x-csrf-token": "wrong"})
        assert wrong.status_code == 403
        assert daemon.session(session["id"])["status"] == "running"
        stopped = client.post(f"/api/sessions/{session['id']}/stop", headers={"x-csrf-token": dashboard.csrf(client)})
        assert stopped.status_code == 200, stopped.text
    assert daemon.wait_ended(session["id"])["status"] == "killed"


def test_hostile_tokens_cookies_and_bodies_are_refused_not_answered_with_500(daemon, dashboard):
    """Non-ASCII tokens, cookies and CSRF headers, another site's malformed cookie, bad or huge JSON and an odd Last-Event-ID get 4xx, never 500."""
    session = daemon.start_session(py("import time; time.sleep(60)"))
    with httpx.Client(base_url=dashboard.base) as stranger:
        assert stranger.get("/?token=%C3%A9").status_code == 401
        assert (
            stranger.get(
                "/", headers={"cookie": f"slotd_dashboard_{urlsplit(dashboard.base).port}=\u00e9".encode("latin-1")}
            ).status_code
            == 401
        )
    with dashboard.client() as client:
        # Another local app's cookie that the standard library's parser rejects.
        assert client.get("/", headers={"cookie": "bad<k=1; " + cookie_of(client)}).status_code == 200
        csrf = dashboard.csrf(client)
        act = f"/api/sessions/{session['id']}/send"
        assert (
            client.post(act, headers={"x-csrf-token": "\u00e9".encode("latin-1")}, json={"text": "x"}).status_code
            == 403
        )
        for body in (b"{not json", b"[" * 100_000, b"\xff\xfe"):
            answer = client.post(act, headers={"x-csrf-token": csrf}, content=body)
            assert answer.status_code == 400, (body[:20], answer.text)
        # Read to its end before the answer, so the client sees it (and the connection
        # serves on): ten in a row on one connection.
        for _ in range(10):
            answer = client.post(act, headers={"x-csrf-token": csrf}, content=b'{"text": "' + b"x" * (2 << 20) + b'"}')
            assert answer.status_code == 413, answer.text
            assert answer.json()["error"]["code"] == "too_large"
        for resume in ("\u00b2", "-1", "x"):
            answer = client.get(
                f"/api/sessions/{session['id']}/follow", headers={"last-event-id": resume.encode("latin-1")}
            )
            assert answer.status_code == 400, resume
    assert daemon.session(session["id"])["status"] == "running"
    daemon.request("kill", session=session["id"])


def cookie_of(client: httpx.Client) -> str:
    """The client's cookies as a Cookie header."""
    return "; ".join(f"{name}={value}" for name, value in client.cookies.items())


def test_an_action_the_daemon_refuses_is_answered_with_its_error(daemon, dashboard):
    """Cancelling a session that is not queued answers 409 with the daemon's error code and message."""
    session = daemon.start_session(py("import time; time.sleep(60)"))
    daemon.wait_status(session["id"], "running")
    with dashboard.client() as client:
        refused = client.post(f"/api/sessions/{session['id']}/cancel", headers={"x-csrf-token": dashboard.csrf(client)})
    assert refused.status_code == 409
    assert refused.json()["error"]["code"] == "invalid_state"


def test_input_sent_from_the_page_reaches_a_waiting_session(daemon, dashboard):
    """Text POSTed to send, with the CSRF token, is the line the session reads."""
    session = daemon.start_session(py("print('got', input())"))
    daemon.wait_status(session["id"], "running")
    with dashboard.client() as client:
        sent = client.post(
            f"/api/sessions/{session['id']}/send", headers={"x-csrf-token": dashboard.csrf(client)}, json={"text": "hi"}
        )
        assert sent.status_code == 200, sent.text
    assert daemon.wait_ended(session["id"])["status"] == "completed"
    assert daemon.stdout_bytes(session["id"]) == b"got hi\n"


def test_the_state_stream_pushes_a_session_started_after_it_opened(daemon, dashboard):
    """The state stream, once open, pushes a new state that lists a session started afterwards."""
    with dashboard.client() as client, client.stream("GET", "/api/state") as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        stream = events(response)
        name, _, first = next(stream)
        assert name == "state" and first["daemon"] == "up"
        session = daemon.start_session(py("import time; time.sleep(60)"))
        for _, _, state in stream:
            if any(listed["id"] == session["id"] for listed in state["ps"]["sessions"]):
                assert "slots" in state["info"] or state["info"]
                break


def test_follow_sends_rows_with_their_seq_and_resumes_after_last_event_id(daemon, dashboard):
    """A session's follow stream sends each row with its seq as the event id, and from Last-Event-ID sends only later rows."""
    session = daemon.start_session(py("for i in range(3): print('line', i, flush=True)"))
    daemon.wait_ended(session["id"])
    path = f"/api/sessions/{session['id']}/follow"
    with dashboard.client() as client:
        with client.stream("GET", path) as response:
            everything = list(events(response))
        rows = [(event_id, data) for name, event_id, data in everything if name == "row"]
        assert everything[-1][0] == "end"
        assert [int(event_id) for event_id, _ in rows] == [data["seq"] for _, data in rows]
        printed = "".join(data["data"] for _, data in rows if data["stream"] == "stdout")
        assert printed == "line 0\nline 1\nline 2\n"
        middle = rows[len(rows) // 2][1]["seq"]
        with client.stream("GET", path, headers={"last-event-id": str(middle)}) as response:
            later = [data["seq"] for name, _, data in events(response) if name == "row"]
        assert later == [data["seq"] for _, data in rows if data["seq"] > middle]


def test_listen_must_be_an_ip_address_and_port(daemon):
    """A --listen that is not IP:PORT is a usage error naming the value."""
    result = daemon.cli("dashboard", "--listen", "somewhere:http")
    assert result.returncode == CliExit.USAGE
    assert "somewhere:http" in result.stderr.decode()


def test_follow_goes_on_after_the_daemon_restarts_with_no_row_twice_or_missing(daemon, dashboard):
    """A follow stream open while the daemon is SIGKILLed and restarted says so, then sends the rest, each row once."""
    gate = daemon.root / "gate"
    session = daemon.start_session(
        py(
            f"import os, time\nprint('before', flush=True)\nwhile not os.path.exists({str(gate)!r}): time.sleep(0.02)\nprint('after')"
        )
    )
    with dashboard.client() as client, client.stream("GET", f"/api/sessions/{session['id']}/follow") as response:
        stream = events(response)
        seen: list[dict] = []
        names: list[str] = []
        for name, _, data in stream:
            names.append(name)
            if name == "row":
                seen.append(data)
                if data["stream"] == "stdout":
                    break
        daemon.kill9()
        daemon.start()
        gate.touch()
        for name, _, data in stream:
            names.append(name)
            if name == "row":
                seen.append(data)
            if name == "end":
                break
    assert "daemon" in names  # the loss was told to the page
    seqs = [row["seq"] for row in seen]
    assert seqs == sorted(set(seqs))
    assert "".join(row["data"] for row in seen if row["stream"] == "stdout") == "before\nafter\n"


def test_a_non_loopback_listen_address_is_warned_about(daemon):
    """--listen on an address that is not loopback starts with a warning saying so."""
    board = Dashboard(daemon, listen="0.0.0.0:0")
    try:
        log = daemon.root / "dashboard.log"
        assert wait_for(lambda: "not loopback" in log.read_text(), what="the warning")
    finally:
        board.stop()


def test_the_state_stream_filters_ended_sessions_by_status_and_label(daemon, dashboard):
    """With status and label filters, the state's ended list holds only the ended sessions matching both."""
    failed = daemon.start_session(py("raise SystemExit(3)"), labels={"team": "a"})
    other_team = daemon.start_session(py("raise SystemExit(3)"), labels={"team": "b"})
    completed = daemon.start_session(py("pass"), labels={"team": "a"})
    for session in (failed, other_team, completed):
        daemon.wait_ended(session["id"])
    with dashboard.client() as client:
        with client.stream("GET", "/api/state", params={"status": "failed", "label": "team=a"}) as response:
            _, _, state = next(events(response))
        assert [session["id"] for session in state["ended"]] == [failed["id"]]
        refused = client.get("/api/state", params={"status": "running"})
        assert refused.status_code == 400 and "'running'" in refused.json()["error"]["message"]


def test_the_dashboard_starts_without_a_daemon_and_shows_it_once_it_is_up(make_daemon):
    """Started before the daemon, the state stream says the daemon is down, then pushes its state once it starts."""
    daemon = make_daemon(start=False)
    board = Dashboard(daemon)
    try:
        with board.client() as client, client.stream("GET", "/api/state") as response:
            stream = events(response)
            _, _, first = next(stream)
            assert first["daemon"] == "down" and str(daemon.socket) in first["error"]
            daemon.start()
            _, _, then = next(stream)
            assert then["daemon"] == "up" and then["ps"]["sessions"] == []
    finally:
        board.stop()


def test_the_token_outlives_a_restart_so_an_open_pages_cookie_still_works(daemon, dashboard):
    """A dashboard restarted on the same address takes the token kept in its 0600 file, so the old cookie and CSRF token work."""
    session = daemon.start_session(py("import time; time.sleep(60)"))
    daemon.wait_status(session["id"], "running")
    kept = daemon.socket.parent / "dashboard.token"
    assert kept.read_text().strip() == dashboard.token
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    with dashboard.client() as client:
        csrf = dashboard.csrf(client)
        dashboard.stop()
        again = Dashboard(daemon, dashboard.listen)
        try:
            assert again.token == dashboard.token
            assert client.get("/").status_code == 200
            paused = client.post(f"/api/sessions/{session['id']}/pause", headers={"x-csrf-token": csrf})
            assert paused.status_code == 200, paused.text
        finally:
            again.stop()
    assert daemon.session(session["id"])["status"] == "paused"


def test_new_token_replaces_the_kept_one_and_the_old_cookie_stops_working(daemon, dashboard):
    """`dashboard --new-token` writes a new token to the file, and a cookie of the old one is refused."""
    with dashboard.client() as client:
        dashboard.stop()
        renewed = Dashboard(daemon, dashboard.listen, "--new-token")
        try:
            assert renewed.token != dashboard.token
            assert (daemon.socket.parent / "dashboard.token").read_text().strip() == renewed.token
            assert client.get("/").status_code == 401
        finally:
            renewed.stop()


@pytest.mark.parametrize("owner, mode", [("root", 0o644), ("nobody", 0o600)])
def test_a_token_file_of_the_wrong_mode_or_owner_is_refused_not_used(daemon, owner, mode):
    """A kept token file that others may read, or that another user owns, stops the dashboard with a message naming it."""
    kept = daemon.socket.parent / "dashboard.token"
    kept.write_text("A" * 43 + "\n")
    os.chown(kept, pwd.getpwnam(owner).pw_uid, -1)
    kept.chmod(mode)
    result = daemon.cli("dashboard", timeout=DEADLINE)
    assert result.returncode == CliExit.USAGE
    message = result.stderr.decode()
    assert str(kept) in message and f"owner {owner}, mode {mode:04o}" in message and "--new-token" in message
    assert b"http://" not in result.stdout
    assert kept.read_text() == "A" * 43 + "\n"


def test_resize_from_the_page_sizes_a_tty_session_and_screen_draws_it(daemon, dashboard):
    """A resize POST gives a tty session the widget's size (a non-number is refused), and screen returns what draws it."""
    session = daemon.start_session(py("import sys; sys.stdout.write('drawn'); sys.stdout.flush(); input()"), tty=True)
    daemon.wait_status(session["id"], "running")
    with dashboard.client() as client:
        headers = {"x-csrf-token": dashboard.csrf(client)}
        path = f"/api/sessions/{session['id']}"
        refused = client.post(f"{path}/resize", headers=headers, json={"cols": "wide", "rows": 30})
        assert refused.status_code == 400 and "cols and rows" in refused.text
        sized = client.post(f"{path}/resize", headers=headers, json={"cols": 101, "rows": 31})
        assert sized.status_code == 200, sized.text
        assert wait_for(lambda: (shown := daemon.session(session["id"]))["tty_cols"] == 101 and shown)["tty_rows"] == 31
        screen = wait_for(lambda: "drawn" in (got := client.get(f"{path}/screen").json()["result"])["data"] and got)
        assert screen["through"] >= 1
    daemon.request("kill", session=session["id"])


def test_a_browser_leaving_a_follow_stream_closes_its_daemon_connection(daemon, dashboard):
    """When the browser drops a session's follow stream, the daemon's count of connections comes back to what it was."""
    session = daemon.start_session(py("import time; print('up', flush=True); time.sleep(60)"))
    daemon.wait_status(session["id"], "running")

    def others() -> int:
        """The daemon's connections but the one asking (counted by the daemon: exact)."""
        return daemon.request("info")["connections"] - 1

    wait_for(lambda: others() == 0, what="the test's own connections to close")
    with dashboard.client() as client:
        with client.stream("GET", f"/api/sessions/{session['id']}/follow") as response:
            # Held: a dropped events() generator closes the HTTP stream, as the browser leaving would.
            stream = events(response)
            next(stream)  # a row came: the dashboard's follow is open on the daemon
            assert others() == 1
            next(stream)  # and stays open
            assert others() == 1
        wait_for(lambda: others() == 0, what="the follow's daemon connection to close")


def test_a_non_loopback_dashboard_lets_in_only_its_address_localhost_and_allowed_names(daemon):
    """Listening on 0.0.0.0 with --allow-host, the Hosts let in are the listen address, localhost and those names, each with the port."""
    board = Dashboard(daemon, "0.0.0.0:0", "--allow-host", "Dash.Example", "--allow-host", "10.1.2.3")
    try:
        port = urlsplit(board.base).port
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=DEADLINE) as client:
            opened = client.get(f"/?token={board.token}", headers={"host": f"dash.example:{port}"})
            assert opened.status_code == 303
            for host in ("0.0.0.0", "localhost", "dash.example", "DASH.EXAMPLE", "10.1.2.3"):
                assert client.get("/", headers={"host": f"{host}:{port}"}).status_code == 200, host
            for host in (f"evil.example:{port}", f"dash.example:{port + 1}", f"127.0.0.1:{port}", "dash.example"):
                refused = client.get("/", headers={"host": host})
                assert refused.status_code == 403 and host in refused.text, host
    finally:
        board.stop()


def test_allow_host_must_be_a_host_name_or_address(daemon):
    """An --allow-host that is not a bare host name or IP address is a usage error naming it."""
    for value in ("http://dash.example", "dash.example:8765", "bad_name"):
        result = daemon.cli("dashboard", "--allow-host", value)
        assert result.returncode == CliExit.USAGE, value
        assert repr(value) in result.stderr.decode()


def test_two_open_pages_share_one_poll_of_the_daemon(daemon):
    """With two pages' state streams open, the daemon is asked for `info` once per state the pages are sent, not twice."""
    relay = CountingRelay(daemon, daemon.root / "relay.sock")
    board = Dashboard(daemon, "127.0.0.1:0", "--socket", str(relay.path))
    try:
        with board.client() as client:
            assert relay.count("ps") == relay.count("info") == 0  # no page open, nothing asked
            with client.stream("GET", "/api/state") as first, client.stream("GET", "/api/state") as second:
                one, two = events(first), events(second)
                next(two)  # both pages are open and served
                next(one)
                asked = relay.count("info")
                polls = 8  # each poll is a new state (info's uptime moves), sent to both pages
                for _ in range(polls):
                    next(one)
                next(two)  # read too: its stream is as open as the first's
                assert relay.count("info") - asked <= polls + 1
    finally:
        board.stop()
        relay.close()
