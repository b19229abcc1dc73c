"""One writer per run folder: an exclusive claim held for the run's lifetime.

The claim is a file ``<folder>/.hjax-claim`` created with ``O_CREAT | O_EXCL`` (atomic on
local filesystems and on NFSv3+ / Lustre / GPFS, where ``flock`` may not work), holding the
holder's host, pid, start time and a heartbeat that a daemon thread refreshes every
:data:`HEARTBEAT_S` seconds. A second writer is refused in one line naming the holder. A claim
whose holder is provably gone (same host and its pid is dead, or a heartbeat older than
:data:`STALE_S`) is taken over, and the taker says so.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import threading
import time
import uuid

from hjax.errors import ConfigError
from hjax.io.results import write_atomic

CLAIM_NAME = ".hjax-claim"
HEARTBEAT_S = 30.0
STALE_S = 600.0       # 20 missed heartbeats: a holder on another host that stopped writing


class FolderClaimed(ConfigError):
    """Another live process holds the folder (exit code 2)."""


def _now() -> float:
    return time.time()


def _iso(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime(
        "%Y-%m-%d %H:%M:%S UTC")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:       # exists, owned by someone else
        return True
    return True


def read_claim(folder: str) -> dict | None:
    """The claim's JSON, ``{}`` for an unreadable (e.g. half-written) one, None if absent."""
    try:
        with open(os.path.join(folder, CLAIM_NAME), encoding="utf-8") as f:
            holder = json.loads(f.read())
    except FileNotFoundError:
        return None
    except (OSError, ValueError, UnicodeDecodeError):
        return {}
    return holder if isinstance(holder, dict) else {}


def holder_gone(holder: dict, now: float | None = None) -> str | None:
    """Why the holder of a claim is provably gone, or None while it may be alive."""
    now = _now() if now is None else now
    heartbeat = holder.get("heartbeat")
    if not isinstance(heartbeat, (int, float)):
        # Unreadable: a claim being written this instant, or a broken one. Judge by its age.
        return None
    if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
        if not _pid_alive(holder["pid"]):
            return f"pid {holder['pid']} on this host is no longer running"
        return None
    if now - heartbeat > STALE_S:
        return f"its heartbeat stopped {now - heartbeat:.0f} s ago"
    return None


def live_holder(folder: str) -> dict | None:
    """The claim of a live holder of ``folder`` (what a sweep checks before launching a job),
    or None when the folder is free or its holder is gone."""
    holder = read_claim(folder)
    if holder is None:
        return None
    if holder == {}:
        path = os.path.join(folder, CLAIM_NAME)
        try:     # a half-written claim younger than a heartbeat is a live writer's
            return {} if _now() - os.path.getmtime(path) < HEARTBEAT_S else None
        except OSError:
            return None
    return None if holder_gone(holder) else holder


def describe(holder: dict) -> str:
    if not holder:
        return "another process (its claim file is being written)"
    beat = holder.get("heartbeat")
    age = f", heartbeat {max(0, _now() - beat):.0f} s ago" if isinstance(beat, (int, float)) else ""
    started = holder.get("started")
    since = f" since {_iso(started)}" if isinstance(started, (int, float)) else ""
    return f"pid {holder.get('pid')} on {holder.get('host')}{since}{age}"


class FolderClaim:
    """``with FolderClaim(folder, log=...):`` holds ``folder`` for one writer.

    Raises :class:`FolderClaimed` when a live process holds it. ``log`` hears of a claim
    taken over from a holder that is gone.
    """

    def __init__(self, folder: str, log=None, command: str | None = None):
        self.folder = folder
        self.path = os.path.join(folder, CLAIM_NAME)
        self.log = log or (lambda message: None)
        self.token = uuid.uuid4().hex
        self.command = command
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.held = False

    def _content(self) -> str:
        return json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                           "started": self.started, "heartbeat": _now(),
                           "token": self.token, "command": self.command}, sort_keys=True)

    def acquire(self) -> "FolderClaim":
        os.makedirs(self.folder, exist_ok=True)
        self.started = _now()
        for _ in range(5):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = read_claim(self.folder)
                if holder is None:
                    continue                      # released meanwhile: try again
                gone = holder_gone(holder) if holder else None
                if gone is None:
                    raise FolderClaimed(
                        f"{self.folder} is being written by another run: {describe(holder)}; "
                        f"wait for it to end, or choose another --output_dir") from None
                # Take it over: move the dead claim out of the way under a unique name (only
                # one of several takers succeeds), then create ours.
                stale = f"{self.path}.stale-{self.token}"
                try:
                    os.replace(self.path, stale)
                except FileNotFoundError:
                    continue
                try:
                    with open(stale, encoding="utf-8") as f:
                        moved = json.loads(f.read())
                except (OSError, ValueError):
                    moved = {}
                if moved.get("token") != holder.get("token"):
                    # A live taker's claim, made between our read and our move: put it back.
                    try:
                        os.link(stale, self.path)
                    except OSError:
                        pass
                os.unlink(stale)
                if moved.get("token") != holder.get("token"):
                    continue
                self.log(f"note: {self.folder}: took over the claim of {describe(holder)} "
                         f"({gone})")
                continue
            with os.fdopen(fd, "w") as f:
                f.write(self._content())
            self.held = True
            self._thread = threading.Thread(target=self._beat, daemon=True,
                                            name="hjax-claim-heartbeat")
            self._thread.start()
            return self
        raise FolderClaimed(f"{self.folder}: could not claim it (other processes keep "
                            "taking it); try again")

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            holder = read_claim(self.folder)
            if not holder or holder.get("token") != self.token:
                return          # taken from us (e.g. judged stale): nothing to refresh
            try:
                write_atomic(self.path, self._content())
            except OSError:
                pass

    def release(self) -> None:
        if not self.held:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        holder = read_claim(self.folder)
        if holder and holder.get("token") == self.token:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
        self.held = False

    def __enter__(self) -> "FolderClaim":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
