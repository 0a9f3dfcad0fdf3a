"""Whether a `running` run still has a process behind it.

A run's process writes `runs.heartbeat_at` every `HEARTBEAT_S` seconds from a thread of
its own (so a long model load or a blocking batch does not stop it). A `running` row is
stale when its heartbeat is older than `STALE_AFTER_S`, or at once when its owner ran on
this host and that process is gone (a SIGKILL leaves no other trace).
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable
from datetime import UTC, datetime

HEARTBEAT_S = 5.0
"""Seconds between two heartbeats of a running run."""

STALE_AFTER_S = 60.0
"""A heartbeat older than this means nobody runs the run any more."""


def owner_id() -> str:
    """`host:pid` of this process."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    return True


def is_live(
    owner: str | None, heartbeat_at: datetime | None, *, now: datetime | None = None
) -> bool:
    """Whether the process that marked a run `running` is (probably) still running it."""
    if heartbeat_at is None:  # written before heartbeats existed: trust nothing
        return False
    if heartbeat_at.tzinfo is None:  # SQLite hands back naive UTC datetimes
        heartbeat_at = heartbeat_at.replace(tzinfo=UTC)
    age = ((now or datetime.now(UTC)) - heartbeat_at).total_seconds()
    if age > STALE_AFTER_S:
        return False
    host, _, pid = (owner or "").rpartition(":")
    if host == socket.gethostname() and pid.isdigit():
        return _pid_alive(int(pid))
    return True


class Heartbeat:
    """Calls `beat()` every `interval_s` seconds in a daemon thread until `stop()`."""

    def __init__(self, beat: Callable[[], None], *, interval_s: float | None = None) -> None:
        self._beat = beat
        self._interval = HEARTBEAT_S if interval_s is None else interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="ttc-heartbeat")

    def start(self) -> Heartbeat:
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._beat()
            except Exception:  # a busy or unreachable store: the next beat tries again
                continue

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self._interval + 5)
