"""The first start runs before the app's pages import torch (issue 18): its module imports
no torch, and a page watching a job about to end sees it end as soon as status.json says so."""

from __future__ import annotations

import subprocess
import sys
import threading

from tests.e2e.harness import ROOT
from trainer.runs import write_status


def test_the_first_start_imports_no_torch():
    code = ("import sys; import explorer.views.first_start as f; import explorer.services.jobs; "
            "f.default_config().validate(); print(sorted(m for m in ('torch', 'sklearn') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_finished_within_sees_the_end_and_waits_no_longer_than_asked(tmp_path):
    from explorer.views import common

    trainer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        write_status(tmp_path, "running", pid=trainer.pid, epoch=9, epochs=10)
        assert not common.finished_within(tmp_path, 0.2)  # still running: False after the timeout
        done = threading.Timer(0.3, lambda: write_status(tmp_path, "done", epoch=10, epochs=10))
        done.start()
        assert common.finished_within(tmp_path, 30.0)  # True: it saw "done", not the timeout
        done.join()
    finally:
        trainer.kill()
        trainer.wait()
