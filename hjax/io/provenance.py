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
    import hjax
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
    import jax
    devices = jax.devices()
    return {
        **code_version(),
        **{name: _version(name) for name in LIBRARIES},
        "python": platform.python_version(),
        "backend": jax.default_backend(),
        "device_kind": devices[0].device_kind if devices else None,
        "device_count": jax.device_count(),
        "process_count": jax.process_count(),
        "host": socket.gethostname(),
        "time_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def describe(prov: dict | None) -> str:
    """One short line for tables: 'hjax 0.1.0 (abc1234), jax 0.10.2, cpu (2 x cpu)'."""
    # Records written before provenance carry none; upgraded ones say {"recorded": false}.
    if not isinstance(prov, dict) or not prov or prov.get("recorded") is False:
        return "provenance not recorded"
    commit = prov.get("git_commit")
    code = f"hjax {prov.get('hjax', '?')}"
    if commit:
        code += f" ({commit[:7]}{', dirty' if prov.get('git_dirty') else ''})"
    return (f"{code}, jax {prov.get('jax', '?')}, {prov.get('backend', '?')} "
            f"({prov.get('device_count', '?')} x {prov.get('device_kind', '?')})")
