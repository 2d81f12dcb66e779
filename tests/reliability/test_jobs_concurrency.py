"""Concurrent users of the app's training jobs (explorer.services.jobs) with real processes:
two presses of Train for the same run start exactly one job (from two threads of one server
and from two app processes); at most VAE_MAX_JOBS jobs (default 1) train at once and the
others wait in a visible queue and start by themselves; an app that restarts while a job
runs finds it and follows its progress to the end."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from explorer.services import jobs
from trainer import RunConfig, load_run
from trainer.runs import read_metrics

from .conftest import ROOT, trainer_env

pytestmark = pytest.mark.slow
WAIT_S = 240  # generous: the CPU is shared


def _cfg(epochs: int, seed: int = 0, data: str = "digits:test=0.75") -> RunConfig:
    cfg = RunConfig(data=data)
    cfg.model.hidden, cfg.train.epochs, cfg.train.seed, cfg.train.batch_size = [16], epochs, seed, 32
    return cfg


def _processes_for(run_dir: Path) -> list[tuple[int, list[str]]]:
    """Live processes whose command line names run_dir as --out: (pid, argv)."""
    out = []
    target = str(run_dir)
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = [a.decode(errors="replace") for a in (proc / "cmdline").read_bytes().split(b"\0") if a]
        except OSError:
            continue
        if "--out" in argv and argv[argv.index("--out") + 1:][:1] == [target] and jobs.pid_alive(int(proc.name)):
            out.append((int(proc.name), argv))
    return out


def _training(run_dir: Path) -> bool:
    """A `python -m trainer fit` process (not one waiting in the queue) trains run_dir."""
    return any("explorer.services.job_slot" not in argv for _, argv in _processes_for(run_dir))


def _wait(condition, what: str, timeout: float = WAIT_S):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def root(jobs_root):
    return jobs_root


def test_two_presses_of_train_in_one_server_start_one_job(root):
    """Two tabs are two threads of the same Streamlit server: both press Train at once."""
    barrier, results = threading.Barrier(2), []

    def press():
        barrier.wait()
        try:
            results.append(("started", jobs.start(root, "same", _cfg(10_000), threads=1)))
        except jobs.JobBusy as e:
            results.append(("busy", str(e)))

    threads = [threading.Thread(target=press) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(r[0] for r in results) == ["busy", "started"], results
    run_dir = root / "same"
    _wait(lambda: _training(run_dir), "the job to start")
    time.sleep(1.0)
    assert len(_processes_for(run_dir)) == 1, _processes_for(run_dir)
    assert [p.name for p in root.iterdir() if not p.name.startswith(".")] == ["same"]


PRESS = """
import sys, time
sys.path.insert(0, {root!r})
from explorer.services import jobs
from trainer import RunConfig
cfg = RunConfig(data="digits:test=0.75")
cfg.model.hidden, cfg.train.epochs, cfg.train.batch_size = [16], 10000, 32
while time.time() < {at}:
    time.sleep(0.001)
try:
    jobs.start({runs!r}, "same", cfg, threads=1)
    print("started")
except jobs.JobBusy as e:
    print("busy", e)
"""


def test_two_app_processes_pressing_train_start_one_job(root):
    """Two app servers on the same runs folder, pressing Train at the same instant."""
    at = time.time() + 15  # both have imported everything by then
    script = PRESS.format(root=str(ROOT), runs=str(root), at=at)
    procs = [subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, env=trainer_env(), text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    outs = [p.communicate(timeout=WAIT_S) for p in procs]
    assert time.time() > at, "a process pressed before the agreed instant: raise the delay"
    firsts = sorted(out.strip().split()[0] if out.strip() else err[-300:] for out, err in outs)
    assert firsts == ["busy", "started"], outs
    run_dir = root / "same"
    _wait(lambda: _training(run_dir), "the job to start")
    assert len(_processes_for(run_dir)) == 1


def test_jobs_beyond_the_limit_wait_in_a_visible_queue(root, monkeypatch):
    monkeypatch.delenv("VAE_MAX_JOBS", raising=False)
    assert jobs.max_concurrent_jobs() == 1  # the default on this 2-core machine
    a = jobs.start(root, "a", _cfg(10_000, seed=1), threads=1)
    b = jobs.start(root, "b", _cfg(10_000, seed=2), threads=1)
    c = jobs.start(root, "c", _cfg(10_000, seed=3), threads=1)
    _wait(lambda: jobs.job_state(a).state == "running", "a to run")
    time.sleep(1.0)  # the queue does not move while a holds the only slot
    assert [jobs.job_state(d).state for d in (a, b, c)] == ["running", "queued", "queued"]
    assert jobs.queue_position(a) is None
    assert jobs.queue_position(b) == (1, 2) and jobs.queue_position(c) == (2, 2)
    assert _training(a) and not _training(b) and not _training(c)
    assert all(len(_processes_for(d)) == 1 for d in (a, b, c))  # b and c wait in job_slot

    # the queue is visible in the app: the Train page following b says where it stands
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("VAE_RUNS_DIR", str(root))
    monkeypatch.setenv("VAE_AUTOSTART", "0")
    monkeypatch.setenv("VAE_APP_THREADS", "1")
    at = AppTest.from_file(str(ROOT / "explorer" / "app.py"), default_timeout=120)
    at.query_params["view"] = "train"
    at.session_state["_last_job"] = "b"
    at.run()
    assert not at.exception
    assert any("waits in the training queue: position 1 of 2" in i.value for i in at.info), [i.value for i in at.info]

    # c is cancelled while it waits: it never trains, and b stays first
    jobs.cancel(c)
    assert jobs.job_state(c).state == "cancelled" and not _processes_for(c)
    assert jobs.queue_position(b) == (1, 1)

    # a finishes (cancelled here): b starts by itself, with nobody pressing anything
    jobs.cancel(a)
    _wait(lambda: jobs.job_state(b).state == "running", "b to start after a")
    assert jobs.read_job(b)["slot"] == 0 and jobs.queue_position(b) is None
    assert jobs.read_job(b)["pid"] == _processes_for(b)[0][0], "the queued process became the trainer"
    assert _training(b) and not _training(a)


def test_the_limit_is_configurable(root, monkeypatch):
    monkeypatch.setenv("VAE_MAX_JOBS", "2")
    runs = [jobs.start(root, name, _cfg(10_000, seed=i), threads=1) for i, name in enumerate(("x", "y", "z"))]
    _wait(lambda: all(jobs.job_state(d).state == "running" for d in runs[:2]), "x and y to run together")
    assert jobs.job_state(runs[2]).state == "queued" and jobs.queue_position(runs[2]) == (1, 1)
    assert sorted(jobs.read_job(d)["slot"] for d in runs[:2]) == [0, 1]


APP_THAT_DIES = """
import os, sys
sys.path.insert(0, {root!r})
from explorer.services import jobs
from trainer import RunConfig
cfg = RunConfig(data="digits:test=0.75")
cfg.model.hidden, cfg.train.epochs, cfg.train.batch_size = [16], {epochs}, 32
jobs.start({runs!r}, "survivor", cfg, threads=1)
os.kill(os.getpid(), 9)  # the app dies the hard way right after pressing Train
"""


def test_a_restarted_app_reattaches_to_a_running_job(root, monkeypatch):
    """The app dies (kill -9) right after pressing Train; a new app process finds the job,
    shows its progress as it moves, and can still cancel it."""
    from streamlit.testing.v1 import AppTest

    epochs = 10_000
    old_app = subprocess.run([sys.executable, "-c", APP_THAT_DIES.format(root=str(ROOT), runs=str(root), epochs=epochs)],
                             cwd=ROOT, env=trainer_env(), capture_output=True, text=True, timeout=WAIT_S)
    assert old_app.returncode == -9, old_app.stderr
    run_dir = root / "survivor"
    pid = jobs.read_job(run_dir)["pid"]

    # this process is the new app: it never started the job and holds no handle on it
    assert pid not in jobs._PROCS
    _wait(lambda: jobs.job_state(run_dir).state == "running" and read_metrics(run_dir), "the job to progress")
    monkeypatch.setenv("VAE_RUNS_DIR", str(root))
    monkeypatch.setenv("VAE_AUTOSTART", "0")
    monkeypatch.setenv("VAE_APP_THREADS", "1")
    at = AppTest.from_file(str(ROOT / "explorer" / "app.py"), default_timeout=120)
    at.query_params["view"] = "train"
    at.run()
    assert not at.exception
    progress = [p.proto.text for p in at.get("progress")]
    assert any("survivor" in t and f"of {epochs}" in t for t in progress), progress

    first = jobs.job_state(run_dir).epoch
    _wait(lambda: jobs.job_state(run_dir).epoch >= first + 2, "the progress to move on")
    at.button(key="cancel_training").click().run(timeout=120)
    assert not at.exception
    js = jobs.job_state(run_dir)
    assert js.state == "cancelled" and not jobs.pid_alive(pid)
    assert len(load_run(run_dir).metrics) >= first + 2
