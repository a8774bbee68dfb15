"""The audit trail: append-only JSON lines of security-relevant events.

Who connected (association accepted or rejected, with AE title and address), what
they sent (instances received per study), what left the node (results delivered),
and who used the HTTP API (the token's name, the method, the path, the answer). No
patient data: UIDs, AE titles, addresses, counts and reasons only.

Every process of the node appends to the same file. Each event is one `write` on a
descriptor opened with O_APPEND, which the kernel keeps whole, so lines from
different processes never interleave. Lines are not fsynced one by one: the trail
records what happened; the data it speaks of is made durable where it is stored.
"""

from __future__ import annotations

import json
import os
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

log = structlog.get_logger("radnode.audit")
_lock = threading.Lock()
_fd: int | None = None
_path: Path | None = None


def configure_audit(path: Path | None) -> None:
    """Open the trail at `path` for this process (None: no trail)."""
    global _fd, _path
    with _lock:
        if _fd is not None:
            os.close(_fd)
            _fd = None
        _path = path
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            _fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)


def audit(event: str, **fields: Any) -> None:
    """Append one event to the trail (nothing when none is configured)."""
    if _fd is None:
        return
    now = time.time()
    record = {
        "at": datetime.fromtimestamp(now, UTC).isoformat(timespec="milliseconds"),
        "event": event,
        "pid": os.getpid(),
        **fields,
    }
    line = (json.dumps(record, default=str, separators=(",", ":")) + "\n").encode()
    with _lock:
        if _fd is None:
            return
        try:
            os.write(_fd, line)
        except OSError as exc:  # a full disk must not change what the node answers
            log.error("audit_write_failed", path=str(_path), reason=exc.strerror or str(exc))


def audit_path() -> Path | None:
    """Where this process writes its trail."""
    return _path
