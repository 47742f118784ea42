"""slotctl dashboard in a real headless Chromium (Debian's chromium and chromium-driver,
through Selenium; no browser download): what a person sees and clicks."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisor.wire import decode_data
from tests.harness import DEADLINE, DaemonHandle, wait_for
from tests.helpers import Dashboard, py

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="the browser tests need Chromium and its driver: apt-get install chromium chromium-driver",
)
# The bound: a line the session prints is on the page within this long.
LINE_SHOWN_WITHIN = 1.0

if CHROMIUM and CHROMEDRIVER:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.support.select import Select


@pytest.fixture
def browser(daemon: DaemonHandle) -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM or ""
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    options.add_argument(f"--user-data-dir={daemon.root / 'chromium'}")
    options.add_argument("--window-size=1400,860")
    with (daemon.root / "chromedriver.log").open("w") as log:
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER, log_output=log), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def board(daemon: DaemonHandle) -> Iterator[Dashboard]:
    dashboard = Dashboard(daemon)
    try:
        yield dashboard
    finally:
        dashboard.stop()


@pytest.fixture
def page(board: Dashboard, browser: WebDriver) -> WebDriver:
    """The dashboard, opened through the URL it printed."""
    browser.get(board.url)
    wait_for(lambda: "daemon up" in browser.find_element(By.ID, "daemon").text, what="the state stream")
    return browser


def session_row(browser: WebDriver, table: str, session_id: str):
    rows = browser.find_elements(By.CSS_SELECTOR, f'#{table} tr[data-session="{session_id}"]')
    return rows[0] if rows else None


def output_text(browser: WebDriver) -> str:
    return browser.find_element(By.ID, "output").text


def test_the_page_lists_a_running_session_and_its_stop_button_stops_it(daemon, page):
    """A running session appears in the live table without a reload; its view's stop button ends it."""
    session = daemon.start_session(py("import time; time.sleep(60)"), labels={"agent": "a1"})
    row = wait_for(lambda: session_row(page, "live", session["id"]), what="the session's row")
    assert "running" in row.text and "agent=a1" in row.text
    row.click()
    page.find_element(By.CSS_SELECTOR, '#actions button[data-action="stop"]').click()
    assert daemon.wait_ended(session["id"])["status"] == "killed"
    wait_for(lambda: session_row(page, "ended", session["id"]), what="the session among the ended")


def test_a_row_stays_the_same_element_while_states_arrive_and_its_age_moves_on(daemon, page):
    """Rows are not made anew by states that change nothing they show (a click would be lost between them), yet their age advances."""
    session = daemon.start_session(py("import time; time.sleep(60)"))
    row = wait_for(lambda: session_row(page, "live", session["id"]), what="the session's row")
    age = row.find_element(By.CSS_SELECTOR, "td.age").text
    time.sleep(2.5)  # ten states and more, each with a new uptime and ingest lag
    assert row.get_attribute("data-session") == session["id"]  # stale, were it replaced
    assert row.find_element(By.CSS_SELECTOR, "td.age").text != age
    daemon.request("kill", session=session["id"])


def test_a_line_the_session_prints_shows_within_a_second_without_a_reload(daemon, page):
    """Once the session view is open, a line printed by the session is on the page within 1 s."""
    gate = daemon.root / "gate"
    session = daemon.start_session(
        py(
            f"import os, time\nprint('ready', flush=True)\n"
            f"while not os.path.exists({str(gate)!r}): time.sleep(0.01)\nprint('\\x1b[31mthe red line\\x1b[0m', flush=True)\n"
            "time.sleep(60)"
        )
    )
    wait_for(lambda: session_row(page, "live", session["id"]), what="the session's row").click()
    wait_for(lambda: "ready" in output_text(page), what="the first line")
    gate.touch()
    shown = time.monotonic()
    wait_for(lambda: "the red line" in output_text(page), timeout=DEADLINE, interval=0.01, what="the printed line")
    assert time.monotonic() - shown < LINE_SHOWN_WITHIN
    red = page.find_elements(By.CSS_SELECTOR, "#output span.ansi-31")
    assert red and red[0].text == "the red line"  # the escape became a colour, not text
    daemon.request("kill", session=session["id"])


def test_input_typed_into_the_box_reaches_a_waiting_session(daemon, page):
    """A line typed into the input box and sent with Enter is what the session reads."""
    session = daemon.start_session(py("print('got', input())"))
    wait_for(lambda: session_row(page, "live", session["id"]), what="the session's row").click()
    box = page.find_element(By.ID, "input")
    box.send_keys("hello there\n")
    assert daemon.wait_ended(session["id"])["status"] == "completed"
    assert daemon.stdout_bytes(session["id"]) == b"got hello there\n"
    wait_for(lambda: "got hello there" in output_text(page), what="the answer on the page")


def test_a_tty_sessions_output_is_drawn_by_the_terminal_widget_which_sends_keys(daemon, page):
    """A tty session's view is an xterm.js terminal showing its output, and keys typed into it reach the session."""
    session = daemon.start_session(
        py("print('\\x1b[32mgreen on a tty\\x1b[0m', flush=True); print('read', input())"), tty=True
    )
    wait_for(lambda: session_row(page, "live", session["id"]), what="the session's row").click()
    wait_for(lambda: "green on a tty" in terminal_text(page), what="the output in the terminal")
    assert not page.find_element(By.ID, "output").is_displayed()
    page.find_element(By.CSS_SELECTOR, "#terminal .xterm-helper-textarea").send_keys("typed\n")
    assert daemon.wait_ended(session["id"])["status"] == "completed"
    wait_for(lambda: "read typed" in terminal_text(page), what="the answer in the terminal")


def terminal_text(browser: WebDriver) -> str:
    rows = browser.find_elements(By.CSS_SELECTOR, "#terminal .xterm-rows")
    return rows[0].text if rows else ""


def terminal_lines(browser: WebDriver) -> list[str]:
    """Every line the page's terminal holds, its scrollback included."""
    return browser.execute_script(
        "const buffer = current.tty.terminal.buffer.active; const lines = [];"
        "for (let i = 0; i < buffer.length; i++) lines.push(buffer.getLine(i).translateToString(true));"
        "return lines;"
    )


def terminal_size(browser: WebDriver) -> tuple[int, int]:
    cols, rows = browser.execute_script("return [current.tty.terminal.cols, current.tty.terminal.rows]")
    return cols, rows


def test_a_tty_session_opened_late_is_drawn_from_its_screen_at_the_widgets_size(daemon, page):
    """A tty session's page opened after it redrew shows its current screen only, and the session takes the widget's size, also when the window changes."""
    session = daemon.start_session(
        py(
            "import os, sys\nfor i in range(200): print('old line', i)\n"
            "sys.stdout.write('\\x1b[2J\\x1b[5;10HREADY'); sys.stdout.flush()\n"
            "while True:\n    input()\n    cols, rows = os.get_terminal_size(0)\n    print(f'size {rows} {cols}', flush=True)"
        ),
        tty=True,
    )
    wait_for(
        lambda: "READY" in decode_data(daemon.request("screen", session=session["id"])).decode(),
        what="the session's redraw",
    )
    wait_for(lambda: session_row(page, "live", session["id"]), what="the session's row").click()
    wait_for(lambda: "READY" in terminal_text(page), what="the screen in the terminal")
    lines = terminal_lines(page)
    assert lines[len(lines) - terminal_size(page)[1] + 4] == " " * 9 + "READY"
    assert not any("old line" in line for line in lines)  # not even in the scrollback

    def follows_the_widget() -> tuple[int, int] | None:
        cols, rows = terminal_size(page)
        shown = daemon.session(session["id"])
        return (cols, rows) if (shown["tty_cols"], shown["tty_rows"]) == (cols, rows) else None

    cols, rows = wait_for(follows_the_widget, what="the session at the widget's size")
    assert (cols, rows) != (80, 24)  # the default, which the box is not
    keys = page.find_element(By.CSS_SELECTOR, "#terminal .xterm-helper-textarea")
    keys.send_keys("\n")
    wait_for(lambda: f"size {rows} {cols}" in terminal_text(page), what="the size the session sees")
    page.set_window_size(1000, 600)
    smaller = wait_for(lambda: (size := follows_the_widget()) != (cols, rows) and size, what="the new size")
    keys.send_keys("\n")
    wait_for(lambda: f"size {smaller[1]} {smaller[0]}" in terminal_text(page), what="the new size in the session")
    daemon.request("kill", session=session["id"])


def test_a_screenshot_of_the_page_shows_sessions_and_output(daemon, page, tmp_path):
    """The page with live, queued and ended sessions and one session's coloured output makes a PNG screenshot
    (written to $SLOTD_DASHBOARD_SCREENSHOT when set: README's docs/dashboard.png is made so)."""
    daemon.start_session(py("raise SystemExit(2)"), labels={"agent": "a2"})
    build = daemon.start_session(
        py(
            "import time\nfor i in range(1, 6): print(f'\\x1b[32mok\\x1b[0m step {i} of 5', flush=True)\n"
            "print('\\x1b[33mwarning:\\x1b[0m 2 tests skipped', flush=True)\ntime.sleep(60)"
        ),
        labels={"agent": "a1", "task": "build"},
    )
    daemon.start_session(py("import time; time.sleep(60)"), labels={"agent": "a3"})
    daemon.request("drain")
    daemon.start_session(py("pass"), labels={"agent": "a4"}, priority=5)
    wait_for(
        lambda: session_row(page, "queued", "") is None and page.find_elements(By.CSS_SELECTOR, "#queued tbody tr")
    )
    wait_for(lambda: session_row(page, "live", build["id"]), what="the build's row").click()
    wait_for(lambda: "2 tests skipped" in output_text(page), what="the build's output")
    wait_for(lambda: page.find_elements(By.CSS_SELECTOR, "#ended tbody tr"), what="the ended session")
    path = Path(os.environ.get("SLOTD_DASHBOARD_SCREENSHOT") or tmp_path / "dashboard.png")
    assert page.save_screenshot(str(path))
    assert path.read_bytes().startswith(b"\x89PNG")


def test_the_restart_button_opens_the_new_session(daemon, page):
    """Restart from an ended session's view starts a new session with the same command and shows its output."""
    session = daemon.start_session(py("print('run once', flush=True)"))
    daemon.wait_ended(session["id"])
    wait_for(lambda: session_row(page, "ended", session["id"]), what="the session's row").click()
    wait_for(lambda: "run once" in output_text(page), what="the first run's output")
    page.find_element(By.CSS_SELECTOR, '#actions button[data-action="restart"]').click()
    title = wait_for(
        lambda: (text := page.find_element(By.ID, "view-title").text) != session["id"][:8] and text,
        what="the new session's view",
    )
    wait_for(lambda: "run once" in output_text(page), what="the new run's output")
    runs = [listed for listed in daemon.request("ps", all=True) if listed["id"].startswith(title)]
    assert len(runs) == 1 and runs[0]["argv"] == session["argv"]


def click_action(browser: WebDriver, action: str) -> None:
    browser.find_element(By.CSS_SELECTOR, f'#actions button[data-action="{action}"]').click()


def view_status(browser: WebDriver) -> str:
    return browser.find_element(By.ID, "view-status").text


def test_the_kill_button_kills_a_session_that_ignores_stop(daemon, page):
    """Kill from a running session's view ends it at once (SIGKILL), even one that ignores SIGTERM; the view says killed."""
    session = daemon.start_session(
        py(
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(60)"
        )
    )
    wait_for(lambda: session_row(page, "live", session["id"]), what="the session's row").click()
    wait_for(lambda: "up" in output_text(page), what="its output")
    click_action(page, "kill")
    assert daemon.wait_ended(session["id"], timeout=2)["status"] == "killed"
    wait_for(lambda: view_status(page) == "killed", what="the view's status")


def test_the_cancel_button_takes_a_queued_session_out_of_the_queue(daemon, page):
    """Cancel from a queued session's view ends it as cancelled: it leaves the queue table for the ended one."""
    daemon.request("drain")
    session = daemon.start_session(py("print('never')"))
    wait_for(lambda: session_row(page, "queued", session["id"]), what="the queued row").click()
    click_action(page, "cancel")
    assert daemon.wait_ended(session["id"])["status"] == "cancelled"
    wait_for(lambda: session_row(page, "ended", session["id"]), what="the session among the ended")
    assert session_row(page, "queued", session["id"]) is None
    assert view_status(page) == "cancelled"


def test_the_pause_and_resume_buttons_stop_and_continue_a_session(daemon, page):
    """Pause stops a running session's output and shows paused; resume lets it go on and shows running."""
    session = daemon.start_session(
        py("import itertools, time\nfor i in itertools.count(): print('tick', i, flush=True); time.sleep(0.05)")
    )
    wait_for(lambda: session_row(page, "live", session["id"]), what="the session's row").click()
    wait_for(lambda: "tick 2" in output_text(page), what="its ticks")
    click_action(page, "pause")
    daemon.wait_status(session["id"], "paused")
    wait_for(lambda: view_status(page) == "paused", what="the view saying paused")
    held = daemon.stdout_bytes(session["id"])
    wait_for(lambda: daemon.session(session["id"])["status"] == "paused" and daemon.stdout_bytes(session["id"]) == held)
    click_action(page, "resume")
    daemon.wait_status(session["id"], "running")
    wait_for(lambda: view_status(page) == "running", what="the view saying running")
    wait_for(lambda: len(daemon.stdout_bytes(session["id"])) > len(held), what="ticks after the resume")
    daemon.request("kill", session=session["id"])


def ended_ids(browser: WebDriver) -> set[str]:
    """The sessions the ended table lists, read at once (each state redraws its rows)."""
    return set(
        browser.execute_script(
            "return Array.from(document.querySelectorAll('#ended tbody tr'), (tr) => tr.dataset.session)"
        )
    )


def test_the_ended_list_filters_by_status_and_label(daemon, page):
    """Choosing a status, then typing a label, narrows the ended table to the sessions that match both, without a reload."""
    failed_a = daemon.start_session(py("raise SystemExit(3)"), labels={"team": "a"})
    failed_b = daemon.start_session(py("raise SystemExit(3)"), labels={"team": "b"})
    completed_a = daemon.start_session(py("pass"), labels={"team": "a"})
    everyone = {failed_a["id"], failed_b["id"], completed_a["id"]}
    for session in (failed_a, failed_b, completed_a):
        daemon.wait_ended(session["id"])
    wait_for(lambda: ended_ids(page) == everyone, what="every ended session listed")
    Select(page.find_element(By.ID, "filter-status")).select_by_visible_text("failed")
    wait_for(lambda: ended_ids(page) == {failed_a["id"], failed_b["id"]}, what="the failed ones only")
    page.find_element(By.ID, "filter-label").send_keys("team=a\n")
    wait_for(lambda: ended_ids(page) == {failed_a["id"]}, what="the failed one of team a only")
    Select(page.find_element(By.ID, "filter-status")).select_by_visible_text("any status")
    wait_for(lambda: ended_ids(page) == {failed_a["id"], completed_a["id"]}, what="team a's, whatever their status")


def test_a_banner_says_the_daemon_is_down_and_goes_when_it_is_back(daemon, page):
    """With the daemon stopped the page shows a banner saying so; once it is back the banner goes and new sessions are listed, without a reload."""
    banner = page.find_element(By.ID, "banner")
    assert not banner.is_displayed()
    daemon.kill9()
    wait_for(lambda: banner.is_displayed(), what="the banner")
    assert "daemon" in banner.text and str(daemon.socket) in banner.text
    daemon.start()
    wait_for(lambda: not banner.is_displayed(), what="the banner to go")
    session = daemon.start_session(py("import time; time.sleep(60)"))
    wait_for(lambda: session_row(page, "live", session["id"]), what="a session started since")


def test_an_open_page_carries_on_after_the_dashboard_restarts(daemon, board, page):
    """A page open while its dashboard restarts on the same address says it lost it, then lists and acts again, without a reload."""
    banner = page.find_element(By.ID, "banner")
    board.stop()
    wait_for(lambda: banner.is_displayed() and "Lost the dashboard" in banner.text, what="the banner")
    again = Dashboard(daemon, board.listen)
    try:
        wait_for(lambda: not banner.is_displayed(), what="the banner to go")
        session = daemon.start_session(py("import time; time.sleep(60)"))
        wait_for(lambda: session_row(page, "live", session["id"]), what="a session started since").click()
        click_action(page, "pause")  # the page's CSRF token still holds
        daemon.wait_status(session["id"], "paused")
        daemon.request("kill", session=session["id"])
    finally:
        again.stop()
