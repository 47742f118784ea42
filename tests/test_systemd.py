"""slotd under a real systemd, booted privately in a PID and mount namespace (SPEC §6)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import psutil
import pytest

from supervisor.client import Client
from supervisor.store import Reader
from tests.harness import wait_for
from tests.helpers import assert_numbers_exactly_once, system_text

REPO = Path(__file__).resolve().parent.parent
SYSTEMD = Path("/lib/systemd/systemd")
SYSTEM_UNIT = REPO / "systemd" / "system" / "slotd.service"
USER_UNIT = REPO / "systemd" / "slotd.service"
SLOTD = Path(sys.executable).parent / "slotd"
README = REPO / "README.md"


def why_no_private_systemd() -> str | None:
    if os.geteuid() != 0:
        return "booting a private systemd needs root"
    for tool in ("unshare", "nsenter", "mount"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if not SYSTEMD.exists():
        return f"no systemd at {SYSTEMD}"
    for path in (REPO, Path(sys.prefix), Path(sys.executable).resolve()):
        if str(path).startswith("/tmp/"):
            return f"{path} is under /tmp, which the private systemd replaces with a tmpfs of its own"
    return None


needs_systemd = pytest.mark.skipif(why_no_private_systemd() is not None, reason=str(why_no_private_systemd()))


class PrivateSystemd:
    """A systemd as PID 1 of its own PID namespace, with private /tmp, /run and /var/lib.

    Each directory in `writable` gets a copy-on-write layer of its own, so that what an
    install writes there (a virtualenv in /opt, a unit in /etc/systemd/system) stays
    in this test's directory, seen only inside the namespace.
    """

    def __init__(self, root: Path, writable: Sequence[str] = ()) -> None:
        self.varlib = root / "varlib"
        self.varlib.mkdir()
        self.log = root / "systemd.log"
        overlays = ""
        for number, directory in enumerate(writable):
            layer = root / f"layer{number}"
            (layer / "upper").mkdir(parents=True)
            (layer / "work").mkdir()
            options = f"lowerdir={directory},upperdir={layer}/upper,workdir={layer}/work"
            overlays += f"mount -t overlay overlay -o '{options}' '{directory}'\n"
        # /tmp first and always: systemd-tmpfiles empties /tmp at boot. /var/lib is this
        # test's own directory (bound before /tmp is covered, as are the layers), so state
        # stays in tmp_path.
        script = (
            "set -e\n"
            f"mount --bind '{self.varlib}' /var/lib\n"
            f"{overlays}"
            "mount -t tmpfs tmpfs /tmp\n"
            "mount -t tmpfs tmpfs /run\n"
            f"exec env container=other {SYSTEMD} --system --unit=basic.target\n"
        )
        with open(self.log, "wb") as log:
            self.unshare = subprocess.Popen(
                [
                    "unshare",
                    "--pid",
                    "--fork",
                    "--mount",
                    "--mount-proc",
                    "--propagation",
                    "private",
                    "sh",
                    "-c",
                    script,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        try:
            self.pid = wait_for(self._systemd_pid, what="systemd to start")
            wait_for(
                lambda: self.ctl("is-system-running", check=False).stdout.strip() in (b"running", b"degraded"),
                timeout=60,
                interval=0.1,
                what="the private systemd to finish booting",
            )
        except BaseException:
            self.close()
            raise

    def _systemd_pid(self) -> int | None:
        if self.unshare.poll() is not None:
            raise AssertionError(f"unshare exited {self.unshare.returncode}: {self.log.read_text()[-2000:]}")
        children = psutil.Process(self.unshare.pid).children()
        return children[0].pid if children else None

    def run(self, *command: str, check: bool = True, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """Run a command inside the namespaces."""
        return subprocess.run(
            ["nsenter", "-t", str(self.pid), "-m", "-p", *command],
            capture_output=True,
            check=check,
            timeout=120,
            env=env,
        )

    def ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.run("systemctl", "--no-pager", *args, check=check)

    def show(self, unit: str, prop: str) -> str:
        return self.ctl("show", "-p", prop, "--value", unit).stdout.decode().strip()

    def path(self, inside: str) -> Path:
        """A path inside the namespace, as seen from here."""
        return Path(f"/proc/{self.pid}/root{inside}")

    def install(self, unit_text: str, dropin: str) -> None:
        units = self.path("/run/systemd/system")
        (units / "slotd.service").write_text(unit_text)
        (units / "slotd.service.d").mkdir(exist_ok=True)
        (units / "slotd.service.d" / "test.conf").write_text(dropin)
        self.ctl("daemon-reload")

    def journal(self) -> str:
        return self.run("journalctl", "--no-pager", "-o", "cat", "-u", "slotd", check=False).stdout.decode(
            errors="replace"
        )

    def close(self) -> None:
        """Stop systemd; if it will not go, kill it, which ends every process in its namespace."""
        if self.unshare.poll() is None and getattr(self, "pid", None):
            self.ctl("exit", check=False)
            try:
                self.unshare.wait(20)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, 9)
        if self.unshare.poll() is None:
            self.unshare.kill()
        self.unshare.wait(20)


class Service:
    """slotd installed as the system unit in a private systemd, with its sessions."""

    def __init__(self, systemd: PrivateSystemd, config: str = "", dropin: str = "") -> None:
        self.systemd = systemd
        self.marker = f"slotd-test-{uuid.uuid4()}"
        self.config_dir = systemd.varlib / "slotd-conf"
        self.config_dir.mkdir(exist_ok=True)
        self.write_config(config)
        systemd.install(
            SYSTEM_UNIT.read_text(),
            "[Service]\nExecStart=\n"
            f"ExecStart={SLOTD}\n"
            "Environment=SLOTD_CONFIG=/var/lib/slotd-conf/config.toml\n" + dropin,
        )

    def write_config(self, text: str) -> None:
        (self.config_dir / "config.toml").write_text("stop_timeout = 1.0\n" + text)

    @property
    def database(self) -> Path:
        return self.systemd.varlib / "slotd" / "slotd.db"

    def client(self) -> Client:
        return Client(self.systemd.path("/run/slotd/slotd.sock"), timeout=30)

    def request(self, cmd: str, **args):
        with self.client() as client:
            return client.request(cmd, **args)

    def main_pid(self) -> int:
        return int(self.systemd.show("slotd", "MainPID"))

    def wait_active(self, old_main_pid: int | None = None) -> int:
        def ready():
            if self.systemd.show("slotd", "ActiveState") != "active":
                return None
            pid = self.main_pid()
            return pid if pid and pid != old_main_pid else None

        return wait_for(ready, timeout=60, interval=0.1, what="slotd active again")

    def start_numbers(self, seconds: float, code: int = 0) -> str:
        """A session printing numbered lines for `seconds`, then exiting with `code`."""
        program = (
            "import sys, time\n"
            "end = time.monotonic() + float(sys.argv[1])\n"
            "i = 0\n"
            "while time.monotonic() < end:\n"
            "    print(i, flush=True); i += 1; time.sleep(0.002)\n"
            "print('done', i, flush=True)\n"
            "sys.exit(int(sys.argv[2]))\n"
        )
        return self.request(
            "start", argv=[sys.executable, "-c", program, str(seconds), str(code), self.marker], cwd="/"
        )["id"]

    def start_flowing(self, count: int, seconds: float) -> list[str]:
        """Start slotd and `count` numbered-line sessions, once output flows from each."""
        self.systemd.ctl("start", "slotd")
        sessions = [self.start_numbers(seconds) for _ in range(count)]
        for session_id in sessions:
            wait_for(lambda s=session_id: self.session(s).transcript_bytes > 1000, what="output flowing")
        return sessions

    def session_processes(self) -> list[psutil.Process]:
        """Processes of this test's sessions still running, found by the marker in their argv."""
        found = []
        for process in psutil.process_iter(["cmdline"]):
            if self.marker in (process.info["cmdline"] or []):
                try:
                    if process.status() != psutil.STATUS_ZOMBIE:
                        found.append(process)
                except psutil.NoSuchProcess:
                    pass
        return found

    def session(self, session_id: str):
        reader = Reader(self.database)
        try:
            return reader.get_session(session_id)
        finally:
            reader.close()


def booted(root: Path, writable: Sequence[str] = ()) -> Iterator[PrivateSystemd]:
    instance = PrivateSystemd(root, writable)
    try:
        yield instance
    finally:
        instance.close()


@pytest.fixture
def systemd(tmp_path: Path) -> Iterator[PrivateSystemd]:
    yield from booted(tmp_path)


@pytest.fixture
def systemd_to_install_into(tmp_path: Path) -> Iterator[PrivateSystemd]:
    """A private systemd whose /opt, /etc/systemd/system and /usr/local/bin take an install's writes."""
    yield from booted(tmp_path, writable=("/opt", "/etc/systemd/system", "/usr/local/bin"))


def readme_block(containing: str) -> str:
    """The one sh code block of the README that contains `containing`."""
    blocks = [b for b in re.findall(r"^```sh\n(.*?)^```", README.read_text(), re.S | re.M) if containing in b]
    assert len(blocks) == 1, f"{len(blocks)} sh blocks of the README contain {containing!r}"
    return blocks[0]


def operator_environment() -> dict[str, str]:
    """A root shell's environment: nothing of this test's Python or slotd, and a python3 >= 3.11 first on PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "SLOTD_", "XDG_", "VIRTUAL_ENV"))}
    env["PATH"] = f"{Path(sys.base_prefix) / 'bin'}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    return env


def wait_session_ended(service: Service, session_id: str, timeout: float = 60.0):
    return wait_for(
        lambda: (s := service.session(session_id)) is not None and s.is_ended and s,
        timeout=timeout,
        what=f"session {session_id[:8]} to end",
    )


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
@pytest.mark.parametrize("unit", [SYSTEM_UNIT, USER_UNIT], ids=["system", "user"])
def test_units_pass_systemd_analyze_verify(unit: Path, tmp_path: Path):
    """Both units pass systemd-analyze verify (with ExecStart pointing at this slotd)."""
    installed = tmp_path / "slotd.service"
    text = unit.read_text()
    for default in ("/opt/slotd/bin/slotd", "%h/.local/bin/slotd"):
        text = text.replace(f"ExecStart={default}", f"ExecStart={SLOTD}")
    installed.write_text(text)
    result = subprocess.run(["systemd-analyze", "verify", str(installed)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr


@needs_systemd
@pytest.mark.skipif("overlay" not in Path("/proc/filesystems").read_text(), reason="no overlayfs to hold the install")
def test_the_readmes_system_install_runs_the_unit_on_its_virtualenv(systemd_to_install_into):
    """The README's system-service install, run verbatim, puts slotd and its licence in /opt/slotd; the unit runs it and slotctl reaches it."""
    systemd = systemd_to_install_into
    # The namespace has a /tmp of its own: copy the checkout where it can see it (this
    # also keeps the build's files out of the real checkout).
    ignore = shutil.ignore_patterns(".*", "build", "*.egg-info", "__pycache__", "state")
    shutil.copytree(REPO, systemd.varlib / "checkout", ignore=ignore)
    steps = readme_block("systemd/system/slotd.service")
    env = operator_environment()
    install = systemd.run("sh", "-ec", f"cd /var/lib/checkout\n{steps}", check=False, env=env)
    output = (install.stdout + install.stderr).decode(errors="replace")
    assert install.returncode == 0, output[-3000:] + systemd.journal()

    main_pid = systemd.show("slotd", "MainPID")
    assert re.search(rf"^pid: +{main_pid}$", output, re.M), output  # slotctl info's answer
    cmdline = systemd.run("cat", f"/proc/{main_pid}/cmdline").stdout.split(b"\0")
    assert cmdline[:2] == [b"/opt/slotd/bin/python3", b"/opt/slotd/bin/slotd"]
    assert systemd.show("slotd", "UnitFileState") == "enabled"
    [metadata] = systemd.path("/opt/slotd").glob("lib/python3*/site-packages/slotd-*.dist-info/METADATA")
    assert "License-Expression: MIT" in metadata.read_text().splitlines()
    assert (metadata.parent / "licenses" / "LICENSE").read_text() == (REPO / "LICENSE").read_text()
    # A session's shim is `python -m supervisor.shim` of the installed package.
    session = systemd.run("slotctl", "run", "--", "echo", "hi", env=env | {"SLOTD_SOCKET": "/run/slotd/slotd.sock"})
    assert session.stdout == b"hi\n"


@needs_systemd
def test_start_is_ready_only_after_reconcile_and_shows_its_status(systemd):
    """systemctl start returns once sessions that ended while the daemon was down are settled, and status shows slots and queue."""
    service = Service(systemd)
    systemd.ctl("start", "slotd")
    session_id = service.start_numbers(1.5, code=7)
    wait_for(lambda: service.session(session_id).pid, what="command started")
    systemd.ctl("stop", "slotd")  # on_shutdown = "keep": the session goes on without it
    wait_for(lambda: not service.session_processes(), what="the session to end while slotd is down")
    assert service.session(session_id).status == "running"

    systemd.ctl("start", "slotd")
    settled = service.session(session_id)  # read the moment start returned
    assert (settled.status, settled.exit_code) == ("failed", 7)
    assert_numbers_exactly_once(service.database, session_id)
    journal = systemd.journal()
    assert journal.index('"event": "reconciled"') < journal.rindex('"event": "ready"')
    wait_for(lambda: "slots busy" in systemd.show("slotd", "StatusText"), what="a STATUS line")
    assert "0 queued" in systemd.show("slotd", "StatusText")
    assert "Status:" in systemd.ctl("status", "slotd", check=False).stdout.decode()


@needs_systemd
def test_kill_9_of_the_main_pid_restarts_the_daemon_and_sessions_survive(systemd):
    """kill -9 of the main PID: systemd restarts slotd, the three sessions keep running, re-attached, and their transcripts end complete."""
    service = Service(systemd)
    sessions = service.start_flowing(3, 8.0)
    old = service.main_pid()
    systemd.run("kill", "-9", str(old))
    assert len(service.session_processes()) == 3  # KillMode=process: only the daemon died
    service.wait_active(old)
    assert len(service.session_processes()) == 3
    for session_id in sessions:
        assert service.session(session_id).status == "running"
    for session_id in sessions:
        assert wait_session_ended(service, session_id).status == "completed"
        assert_numbers_exactly_once(service.database, session_id)
    assert "re-attached after restart" in system_text(service.database, sessions[0])


@needs_systemd
def test_systemctl_restart_loses_no_line(systemd):
    """systemctl restart keeps the sessions running and every line stored once."""
    service = Service(systemd)
    sessions = service.start_flowing(3, 6.0)
    old = service.main_pid()
    systemd.ctl("restart", "slotd")
    service.wait_active(old)
    for session_id in sessions:
        assert wait_session_ended(service, session_id).status == "completed"
        assert_numbers_exactly_once(service.database, session_id)


@needs_systemd
def test_a_stuck_daemon_is_killed_by_the_watchdog_and_sessions_survive(systemd):
    """A SIGSTOPped daemon misses its watchdog; systemd kills and restarts it, and the sessions carry on."""
    service = Service(systemd, dropin="WatchdogSec=2\nTimeoutAbortSec=2\n")
    sessions = service.start_flowing(2, 6.0)
    old = service.main_pid()
    systemd.run("kill", "-STOP", str(old))
    service.wait_active(old)
    assert "watchdog" in systemd.journal().lower()
    for session_id in sessions:
        assert wait_session_ended(service, session_id).status == "completed"
        assert_numbers_exactly_once(service.database, session_id)


@needs_systemd
def test_a_broken_config_fails_with_its_exit_status_and_is_not_restarted(systemd):
    """A config.toml with an unknown key makes the unit fail with status 78, once, without a restart loop."""
    service = Service(systemd)
    service.write_config("slots = 'three'\n")
    assert systemd.ctl("start", "slotd", check=False).returncode != 0
    assert systemd.show("slotd", "ActiveState") == "failed"
    assert systemd.show("slotd", "ExecMainStatus") == "78"
    deadline = time.monotonic() + 3  # RestartSec=1: a loop would have restarted by now
    while time.monotonic() < deadline:
        assert systemd.show("slotd", "NRestarts") == "0"
        time.sleep(0.2)
    assert "key 'slots'" in systemd.journal()


@needs_systemd
def test_systemctl_stop_with_on_shutdown_stop_leaves_no_session_process(systemd):
    """systemctl stop with on_shutdown = "stop" ends every process of every session, recorded killed."""
    service = Service(systemd, config='on_shutdown = "stop"\n')
    systemd.ctl("start", "slotd")
    sessions = [service.start_numbers(600.0) for _ in range(3)]
    wait_for(lambda: len(service.session_processes()) == 3, what="three sessions running")
    systemd.ctl("stop", "slotd")
    assert service.session_processes() == []
    for session_id in sessions:
        assert service.session(session_id).status == "killed"
