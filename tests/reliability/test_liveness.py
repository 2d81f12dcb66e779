"""One liveness check: trainer.runs.process_alive, and its torch-free twin in the queue
(explorer.services.job_slot.alive, which a waiting job runs without importing the trainer)
answer alike, zombies counting as finished."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from explorer.services import job_slot
from tests.conftest import ROOT
from trainer.runs import process_alive


def _state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return None


def test_both_checks_answer_alike():
    exited = subprocess.Popen([sys.executable, "-c", "pass"])
    exited.wait()  # reaped: the pid is gone
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])  # exits, never reaped until the end
    deadline = time.monotonic() + 30
    while _state(zombie.pid) != "Z" and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        assert _state(zombie.pid) == "Z"
        cases = [(os.getpid(), True), (1, True), (exited.pid, False), (zombie.pid, False), (0, False),
                 (-5, False), (2**70, False), (True, False), ("123", False), (None, False), (12.0, False)]
        for pid, expected in cases:  # a list: True and 1 are one dict key
            assert process_alive(pid) is expected, pid
            assert job_slot.alive(pid) is expected, pid
    finally:
        zombie.wait()


def test_the_queue_does_not_import_the_trainer():
    code = "import sys, explorer.services.job_slot; print('torch' in sys.modules, 'trainer' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                         check=False, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False"]
