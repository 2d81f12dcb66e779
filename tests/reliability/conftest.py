"""Fixtures for the reliability suite: a small trained run to damage (copied per test),
and two ways to run the command line: in this process (fast, the real `main`, its exit
status and its stderr) and as a real subprocess (for the cases where the process itself
matters: signals, a pickle that must never run)."""

from __future__ import annotations

import os
import pickletools
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import ROOT


class MakesMarker:
    """A pickle payload: loading `pickle.dumps(MakesMarker(path))` would run `touch path`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def assert_pickle_would_touch(payload: bytes, marker: Path) -> None:
    """Control, without loading the pickle: its opcodes (pickletools) import os.system and call
    it on `touch marker`, so the tests that find no marker show that nothing loaded it."""
    ops = list(pickletools.genops(payload))
    words = {w for op, arg, _ in ops if isinstance(arg, str) for w in arg.split()}  # GLOBAL: "posix system"
    strings = [arg for _, arg, _ in ops if isinstance(arg, str)]
    assert "system" in words and words & {"os", "posix"}, strings
    assert f"touch {marker}" in strings and any(op.name == "REDUCE" for op, _, _ in ops), strings


@pytest.fixture(autouse=True)
def _restore_signal_handlers():
    """The CLI's `fit` installs SIGTERM/SIGINT handlers; run in this process, it must not
    leave them behind for the rest of the test session."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    yield
    for s, handler in saved.items():
        signal.signal(s, handler)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """digits, mlp with one hidden layer of 32, 2 epochs, one thread: a real run folder."""
    from trainer import RunConfig, fit

    out = tmp_path_factory.mktemp("tiny") / "tiny"
    cfg = RunConfig(data="digits")
    cfg.model.hidden = [32]
    cfg.train.epochs, cfg.train.threads = 2, 1
    assert fit(cfg, out) == "done"
    return out


@pytest.fixture()
def runs_dir(tmp_path, tiny_run) -> Path:
    """A runs folder holding two copies of the tiny run: `good` (never touched by a test)
    and `bad` (for the test to damage)."""
    root = tmp_path / "runs"
    root.mkdir()
    for name in ("good", "bad"):
        shutil.copytree(tiny_run, root / name, ignore=shutil.ignore_patterns(".lock"))
    return root


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str


def cli(capsys, *args: str) -> CliResult:
    """`python -m trainer ARGS` through the real entry point, in this process."""
    from trainer.__main__ import main

    capsys.readouterr()
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return CliResult(code, out.out, out.err)


def cli_process(*args: str, timeout: float = 300) -> CliResult:
    """`python -m trainer ARGS` as its own process."""
    p = subprocess.run([sys.executable, "-m", "trainer", *map(str, args)], cwd=ROOT, capture_output=True,
                       text=True, timeout=timeout, env=trainer_env())
    return CliResult(p.returncode, p.stdout, p.stderr)


def trainer_env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def assert_one_line_error(result: CliResult, *fragments: str, code: int = 2) -> None:
    """Exit status `code` (2: bad input; 1: a run that failed while training), exactly one
    line on stderr starting with 'error:', no traceback, naming each fragment (any case)."""
    assert result.code == code, (result.code, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment.lower() in lines[0].lower(), (fragment, lines[0])


def assert_usable(capsys, run_dir: Path) -> None:
    """The run still loads, evaluates (CLI exit 0, finite ELBO) and samples."""
    import json
    import math

    from trainer import load_run

    run = load_run(run_dir)
    assert len(run.metrics) == run.config.train.epochs
    # --no-quadrature: the quadrature log p(x) (a grid of decodes per test sample, seconds per
    # call) is not what is checked here; tests/trainer/test_trainer_posterior.py checks it
    r = cli(capsys, "eval", run_dir, "--k", "5", "--json", "--threads", "1", "--no-quadrature")
    assert r.code == 0, r.stderr
    assert math.isfinite(json.loads(r.stdout)["elbo"])


@pytest.fixture
def jobs_root(tmp_path):
    """An empty runs folder for the app's jobs; any job still there afterwards is cancelled."""
    from explorer.services import jobs

    root = tmp_path / "runs"
    root.mkdir()
    yield root
    for d in root.iterdir():  # never leave a job behind
        if (d / jobs.JOB_FILE).exists():
            jobs.cancel(d, wait_s=5)
