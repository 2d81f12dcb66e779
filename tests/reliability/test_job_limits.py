"""A crowd pressing Train (issue 17), with real job processes: at most VAE_MAX_QUEUED jobs are
queued or training in the runs folder and VAE_MAX_JOBS_PER_SESSION per browser session; a
press beyond either is refused with a message (QueueFull, a JobBusy) and leaves nothing
behind; every press is accounted for. The trainer runs at a lower priority than the server,
and the threads of several jobs leave the server a core."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from explorer.services import jobs
from trainer import RunConfig

pytestmark = pytest.mark.slow
WAIT_S = 240  # generous: the CPU is shared


def _cfg(seed: int) -> RunConfig:
    cfg = RunConfig(data="digits:test=0.75")
    cfg.model.hidden, cfg.train.epochs, cfg.train.seed, cfg.train.batch_size = [16], 10_000, seed, 32
    return cfg


def _wait(condition, what: str, timeout: float = WAIT_S):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _nice(pid: int) -> int:
    """The nice value of a process (/proc/PID/stat, field 19)."""
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16])


@pytest.fixture
def root(jobs_root, monkeypatch):
    """The runs folder with tight limits: 1 job at a time, 3 queued, 1 per session."""
    monkeypatch.setenv("VAE_MAX_JOBS", "1")
    monkeypatch.setenv("VAE_MAX_QUEUED", "3")
    monkeypatch.setenv("VAE_MAX_JOBS_PER_SESSION", "1")
    monkeypatch.delenv("VAE_JOB_NICE", raising=False)
    return jobs_root


def test_eight_people_pressing_train_at_once_fill_the_queue_and_the_rest_are_told(root):
    presses, barrier, results = 8, threading.Barrier(8), {}

    def press(i: int):
        barrier.wait()
        try:
            jobs.start(root, f"p{i}", _cfg(seed=i), threads=1, session=f"session-{i}")
            results[i] = ("started", "")
        except jobs.QueueFull as e:
            results[i] = ("refused", str(e))

    threads = [threading.Thread(target=press, args=(i,)) for i in range(presses)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    started = sorted(i for i, (what, _) in results.items() if what == "started")
    refused = {i: msg for i, (what, msg) in results.items() if what == "refused"}
    assert len(results) == presses, "every press has an answer: nothing is lost"
    assert len(started) == jobs.max_queued_jobs() == 3, results
    for msg in refused.values():
        assert "training queue is full" in msg and "press Train again" in msg, msg
    # A refused press leaves no run folder; a started one has its job record and its session.
    names = sorted(p.name for p in root.iterdir() if not p.name.startswith("."))
    assert names == [f"p{i}" for i in started]
    assert sorted(job["session"] for _, job in jobs.active_jobs(root)) == [f"session-{i}" for i in started]
    # Exactly VAE_MAX_JOBS of them train; the others wait in the visible queue.
    dirs = [root / f"p{i}" for i in started]
    _wait(lambda: any(jobs.job_state(d).state == "running" for d in dirs), "a job to run")
    time.sleep(1.0)
    states = sorted(jobs.job_state(d).state for d in dirs)
    assert states == ["queued", "queued", "running"], states
    assert sorted(jobs.queue_position(d) for d in dirs if jobs.queue_position(d)) == [(1, 2), (2, 2)]
    # The trainer runs at a lower priority than this (server) process.
    running = next(d for d in dirs if jobs.job_state(d).state == "running")
    assert _nice(jobs.job_state(running).pid) == _nice(os.getpid()) + 5

    # Room again once a job has ended: the next press is taken.
    jobs.cancel(running)
    jobs.start(root, "late", _cfg(seed=100), threads=1, session="session-late")
    assert (root / "late" / jobs.JOB_FILE).exists()


def test_one_session_may_queue_one_job_at_a_time(root):
    jobs.start(root, "mine", _cfg(seed=1), threads=1, session="alice")
    with pytest.raises(jobs.QueueFull, match=r"you already have 1 job\(s\) queued or training \(mine"):
        jobs.start(root, "mine-again", _cfg(seed=2), threads=1, session="alice")
    assert not (root / "mine-again").exists()
    jobs.start(root, "theirs", _cfg(seed=3), threads=1, session="bob")  # another person may
    jobs.cancel(root / "mine")
    jobs.start(root, "mine-next", _cfg(seed=4), threads=1, session="alice")  # after it ended, again
    # Jobs started outside a browser session (the command line, a bench) count only globally.
    jobs.start(root, "cli", _cfg(seed=5), threads=1)
    with pytest.raises(jobs.QueueFull, match="training queue is full"):
        jobs.start(root, "cli-2", _cfg(seed=6), threads=1)
    assert not (root / "cli-2").exists()


@pytest.mark.parametrize("cores,max_jobs,threads", [(2, 1, 1), (2, 2, 1), (5, 2, 2), (9, 2, 4), (8, 4, 1)])
def test_several_jobs_share_the_cores_the_server_leaves(monkeypatch, cores, max_jobs, threads):
    monkeypatch.delenv("VAE_TRAIN_THREADS", raising=False)
    monkeypatch.setenv("VAE_MAX_JOBS", str(max_jobs))
    assert jobs.train_threads(cores) == threads
    assert threads * max_jobs <= max(cores - 1, max_jobs)  # one core left, unless a job each takes them all
