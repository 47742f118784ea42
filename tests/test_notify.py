"""sd_notify: one datagram to $NOTIFY_SOCKET, a path or an abstract socket."""

from __future__ import annotations

import os

import pytest

from supervisor import systemd
from tests.helpers import notify_receiver


@pytest.fixture
def receiver(tmp_path, monkeypatch, request):
    """A datagram socket standing in for systemd's notification socket."""
    with notify_receiver(monkeypatch, None if request.param == "abstract" else tmp_path / "notify.sock") as sock:
        sock.settimeout(5)
        yield sock


@pytest.mark.parametrize("receiver", ["path", "abstract"], indirect=True)
def test_notify_sends_the_fields_in_one_datagram(receiver):
    """notify() delivers its KEY=VALUE fields, newline-separated, to a path or an abstract socket."""
    assert systemd.notify("READY=1", "STATUS=0/3 slots busy, 0 queued") is True
    assert receiver.recv(4096) == b"READY=1\nSTATUS=0/3 slots busy, 0 queued"


def test_notify_outside_systemd_does_nothing(monkeypatch):
    """Without $NOTIFY_SOCKET, notify() sends nothing and says so."""
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert systemd.notify("READY=1") is False


def test_watchdog_interval_is_half_the_units_period_and_only_for_us():
    """WATCHDOG_USEC gives pings at half the period; a WATCHDOG_PID of another process means none."""
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "4000000"}) == 2.0
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid())}) == 2.0
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "1"}) is None
    assert systemd.watchdog_interval({}) is None
