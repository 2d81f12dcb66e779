"""The training queue: wait for a free slot, then become the trainer.

    python -m explorer.services.job_slot RUNS_DIR LIMIT -- python -m trainer fit ... --out RUN_DIR

jobs.start launches every job through this module. It waits until its job is the oldest
queued job of the runs folder and one of LIMIT slot locks (`RUNS_DIR/.slots/<i>.lock`,
flock) is free, records the slot in the run's job.json, and then *execs* the trainer: the
process, its pid and the slot lock it holds stay the same, so the lock is released exactly
when the trainer ends, however it ends (kill -9 included). Waiting needs no app: queued
jobs start one after another even with every browser tab closed, and an app that restarts
finds them by reading the run folders.

The trainer runs at a lower CPU priority than the server (job_nice(): $VAE_JOB_NICE, default
5: on a busy core the server's reruns get about three times the trainer's share), so that
several jobs, or one job's threads, never take the cores the app's users wait on (issue 17).
Priority changes no number the trainer computes.

It imports no torch (only the trainer's torch-free modules: trainer.liveness, its process
check, and trainer.fileio, its atomic writes), so a waiting job costs almost nothing.
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
import time
from pathlib import Path

from trainer.fileio import atomic_write_json
from trainer.liveness import process_alive

SLOTS = ".slots"  # under the runs folder
JOB_FILE = "job.json"  # jobs.JOB_FILE
POLL_S = 0.25  # how often a waiting job looks again


def job_nice() -> int:
    """How much lower the trainer's priority is than the server's: $VAE_JOB_NICE, default 5
    (0 to 19; 0 keeps the server's)."""
    try:
        return min(19, max(0, int(os.environ.get("VAE_JOB_NICE", "5"))))
    except ValueError:
        return 5


def _read_json(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def waiting_jobs(root: Path) -> list[str]:
    """Names of the runs whose job waits for a slot, oldest first: launched (job.json has a
    pid and a start time), alive, not yet holding a slot, and not started by the trainer."""
    waiting = []
    root = Path(root)
    for d in root.iterdir() if root.is_dir() else []:
        job = _read_job(d)
        if job is None or "slot" in job or not isinstance(job.get("started"), (int, float)):
            continue
        status = _read_json(d / "status.json") or {}
        if status.get("state", "queued") != "queued" or not process_alive(job.get("pid")):
            continue
        waiting.append((job["started"], d.name))
    return [name for _, name in sorted(waiting)]


def _read_job(run_dir: Path) -> dict | None:
    return _read_json(run_dir / JOB_FILE) if run_dir.is_dir() else None


def try_slot(root: Path, limit: int) -> tuple[int, int] | None:
    """Take a free slot lock: (its descriptor, its number), or None if all `limit` are held."""
    folder = Path(root) / SLOTS
    folder.mkdir(exist_ok=True)
    for i in range(max(1, limit)):
        fd = os.open(folder / f"{i}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue
        return fd, i
    return None


def _record_slot(run_dir: Path, slot: int) -> None:
    """Add the slot to job.json (atomically: temp file, fsync, rename)."""
    job = _read_job(run_dir) or {}
    job.update(slot=slot, slot_at=time.time())
    atomic_write_json(run_dir / JOB_FILE, job)


def wait_for_slot(root: Path, run_dir: Path, limit: int) -> int:
    """Block until this run is first in the queue and a slot is free; returns the held
    slot lock's descriptor (inheritable, so that it survives exec)."""
    me = run_dir.name
    while True:
        queue = waiting_jobs(root)
        if queue and queue[0] == me:
            got = try_slot(root, limit)
            if got is not None:
                fd, slot = got
                _record_slot(run_dir, slot)
                os.set_inheritable(fd, True)
                return fd
        time.sleep(POLL_S)


def main(argv: list[str]) -> int:
    if len(argv) < 5 or argv[2] != "--" or "--out" not in argv:
        print("usage: python -m explorer.services.job_slot RUNS_DIR LIMIT -- COMMAND ... --out RUN_DIR",
              file=sys.stderr)
        return 2
    root, limit, command = Path(argv[0]), int(argv[1]), argv[3:]
    run_dir = Path(command[command.index("--out") + 1])
    wait_for_slot(root, run_dir, limit)
    try:
        os.nice(job_nice())
    except OSError:  # not permitted here: train at the server's priority
        pass
    os.execv(command[0], command)  # the trainer takes over this process, slot lock included
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
