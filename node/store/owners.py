"""Lease owners: `host:pid:role` names, and whether the process behind one is gone.

A node restarted after a crash (kill -9, power loss) finds jobs and deliveries still
leased to its dead processes; when the owner ran on this host and its pid is gone,
the work is released at once instead of after the lease.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path


def this_host() -> str:
    """This machine's name as lease owners carry it (cut to fit the 64-character column)."""
    return socket.gethostname()[:40]


def pid_alive(pid: int) -> bool:
    """True when a process with this pid runs on this machine; a zombie (killed, not
    yet reaped: containers often lack an init that reaps orphans) counts as gone."""
    stat = Path(f"/proc/{pid}/stat")
    if Path("/proc/self/stat").exists():
        try:
            # "pid (command) state ...": the state follows the last parenthesis.
            state = stat.read_text().rpartition(")")[2].split()[0]
        except (OSError, IndexError):
            return False
        return state not in ("Z", "X")
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def owner_is_gone(owner: str | None, host: str) -> bool:
    """True when `owner` (host:pid:role) ran on `host` and its process no longer runs.

    Our own pid counts as gone: it can only appear in an owner written before this
    process started (a pid reused after a restart).
    """
    if not owner or not owner.startswith(f"{host}:"):
        return False
    try:
        pid = int(owner.split(":")[1])
    except (IndexError, ValueError):
        return False
    return pid == os.getpid() or not pid_alive(pid)
