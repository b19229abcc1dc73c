"""Provenance: which code, libraries and machine produced a record.

Not part of a run's identity (the same settings on another machine are the same run), but
written beside it in every record so that a table can say what produced it.
"""

from __future__ import annotations

import datetime
import functools
import importlib.metadata
import os
import platform
import socket
import subprocess

import jax

import hjax

LIBRARIES = ("jax", "jaxlib", "flax", "optax", "numpy")


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


@functools.lru_cache(maxsize=1)
def code_version() -> dict:
    """hjax's version, and the git commit of the checkout it runs from (None when not run
    from a git checkout); ``git_dirty`` is True when tracked files differ from the commit."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(hjax.__file__)))
    info = {"hjax": hjax.__version__, "git_commit": None, "git_dirty": None}
    if not os.path.exists(os.path.join(root, ".git")):
        return info
    try:
        def git(*args):
            return subprocess.run(["git", "-C", root, *args], capture_output=True, text=True,
                                  timeout=10, check=True).stdout.strip()
        info["git_commit"] = git("rev-parse", "HEAD") or None
        info["git_dirty"] = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def provenance() -> dict:
    """Code, library versions, backend, devices, host and the UTC time, as a JSON-able dict."""
    devices = jax.devices()
    return {
        **code_version(),
        **{name: _version(name) for name in LIBRARIES},
        "python": platform.python_version(),
        "backend": jax.default_backend(),
        "device_kind": devices[0].device_kind if devices else None,
        "device_count": jax.device_count(),
        "process_count": jax.process_count(),
        "process_index": jax.process_index(),      # the writer, in a multi-process run
        "host": socket.gethostname(),
        "time_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def describe_code(prov: dict) -> str:
    """'hjax 0.1.0 (abc1234)', with ', dirty' when tracked files differed from the commit."""
    commit = prov.get("git_commit")
    code = f"hjax {prov.get('hjax', '?')}"
    if commit:
        code += f" ({commit[:7]}{', dirty' if prov.get('git_dirty') else ''})"
    return code


def describe(prov: dict | None) -> str:
    """One short line for tables: 'hjax 0.1.0 (abc1234), jax 0.10.2, cpu (2 x cpu)'."""
    # Records written before provenance carry none; upgraded ones say {"recorded": false}.
    if not isinstance(prov, dict) or not prov or prov.get("recorded") is False:
        return "provenance not recorded"
    return (f"{describe_code(prov)}, jax {prov.get('jax', '?')}, {prov.get('backend', '?')} "
            f"({prov.get('device_count', '?')} x {prov.get('device_kind', '?')})")

def cpu_model() -> str | None:
    """The CPU's model name (Linux: /proc/cpuinfo), None where it cannot be read."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def load_average() -> str:
    """'1.57 / 0.62 / 0.23 (1 / 5 / 15 min)', or 'unknown' where the OS does not say."""
    try:
        return "{:.2f} / {:.2f} / {:.2f} (1 / 5 / 15 min)".format(*os.getloadavg())
    except (AttributeError, OSError):
        return "unknown"


def machine_line(devices_used: int | None = None) -> str:
    """One line for a benchmark table: CPU, cores, devices, libraries, code, and the load
    average now (timings on a shared machine depend on it). ``devices_used``: how many of
    the visible devices the timed programs ran on, when not all.

    'AMD EPYC 7B13, x86_64, 2 cores visible, 1 cpu device(s) (cpu), jax 0.10.2, Python
    3.11.7, hjax 0.1.0 (abc1234); load average 1.57 / 0.62 / 0.23 (1 / 5 / 15 min)'
    """
    prov = provenance()
    count = prov["device_count"] if devices_used is None else devices_used
    cpu = cpu_model()
    return (f"{cpu + ', ' if cpu else ''}{platform.machine()}, {os.cpu_count()} cores visible, "
            f"{count} {prov['backend']} device(s) ({prov['device_kind']}), jax {prov['jax']}, "
            f"Python {prov['python']}, {describe_code(prov)}; load average {load_average()}")
