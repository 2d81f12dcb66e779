"""One liveness check: trainer.liveness.process_alive, zombies counting as finished. The
training queue (explorer.services.job_slot, which a waiting job runs) uses that very
function, and importing the queue does not import torch."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from explorer.services import job_slot
from tests.conftest import ROOT
from trainer.liveness import process_alive


def _state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return None


def test_the_check_and_the_queues_check_answer_alike():
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
        assert job_slot.process_alive is process_alive  # the queue has no copy of its own
    finally:
        zombie.wait()


def test_the_queue_does_not_import_torch():
    # The queue imports trainer.liveness (and so the trainer package, whose names are
    # imported lazily): what a waiting job must not pay for is torch (seconds and some 200 MB).
    code = "import sys, explorer.services.job_slot; print('torch' in sys.modules, 'trainer.api' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                         check=False, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False"]


def test_the_trainer_package_imports_torch_only_for_what_needs_it():
    """`import trainer` and its torch-free modules load no torch; `from trainer import fit`
    (PEP 562: the package's names are imported on first use) still gives the real thing."""
    code = ("import sys, trainer, trainer.liveness, trainer.fileio, trainer.run_names; print('torch' in sys.modules); "
            "from trainer import RunConfig, fit; import trainer.api; "
            "print('torch' in sys.modules, fit is trainer.api.fit, RunConfig.__module__)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         check=False, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "True", "True", "trainer.config"]
