"""Whether a process is still alive: the one liveness check of the trainer and the app.

A run's status.json names the pid of its trainer and that process's start time; a reader
uses `process_alive(pid, start)` to tell a live trainer from a dead one, a zombie, or a
later process that reused the pid. The app's training queue (explorer.services.job_slot)
runs the same check while it waits, so this module imports neither torch nor anything
that does (only the standard library).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def _is_pid(pid: Any) -> bool:
    return isinstance(pid, int) and not isinstance(pid, bool) and pid > 0


def proc_stat(pid: int) -> list[str] | None:
    """Fields 3.. of /proc/<pid>/stat (state first), or None where there is no /proc."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[-1].split()


def process_start(pid: Any) -> int | None:
    """The process's start time in clock ticks since boot (Linux), to detect pid reuse."""
    if not _is_pid(pid):
        return None
    fields = proc_stat(pid)
    try:
        return int(fields[19]) if fields else None
    except (IndexError, ValueError):
        return None


def process_alive(pid: Any, start: Any = None) -> bool:
    """Whether `pid` is a live process (not a zombie) and, if `start` is known, the same
    process that wrote the status (not a later one that reused the pid)."""
    if not _is_pid(pid):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    except OverflowError:
        return False  # larger than any pid
    fields = proc_stat(pid)
    if fields:
        if fields[0] == "Z":  # exited, not yet reaped by its parent
            return False
        if isinstance(start, int) and process_start(pid) not in (None, start):
            return False
    return True
