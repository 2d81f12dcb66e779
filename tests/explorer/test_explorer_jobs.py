"""Training jobs as real `python -m trainer fit` processes on tiny data (one thread each)."""

from __future__ import annotations

import os
import signal
import time

import pytest

from explorer.services import jobs
from trainer import RunConfig, TrainerError
from trainer.runs import read_metrics

pytestmark = pytest.mark.slow


def tiny(epochs: int, data: str = "gmm2d:n=300", seed: int = 0) -> RunConfig:
    cfg = RunConfig(data=data)
    cfg.model.hidden = [16]
    cfg.train.epochs, cfg.train.batch_size, cfg.train.seed = epochs, 64, seed
    return cfg


def wait_for(predicate, timeout: float = 90.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def test_fit_command_is_what_the_trainer_parses():
    from trainer.__main__ import build_parser

    cfg = tiny(7)
    cfg.model.sigma_dec, cfg.train.beta, cfg.train.lr, cfg.train.kl_warmup = 0.25, 4.0, 3e-4, 2
    a = build_parser().parse_args(jobs.fit_command(cfg, "/tmp/x", threads=1)[3:])
    assert (a.data, a.hidden, a.latent_dim, a.sigma_dec, a.beta, a.lr, a.kl_warmup, a.epochs, a.threads) == \
        ("gmm2d:n=300", [16], 2, 0.25, 4.0, 3e-4, 2, 7, 1)


def test_a_job_runs_to_done_in_its_own_process(tmp_path):
    run_dir = jobs.start(tmp_path, "done-run", tiny(2), threads=1)
    pid = jobs.read_job(run_dir)["pid"]
    assert pid != os.getpid() and os.getpgid(pid) == pid  # its own process group
    assert wait_for(lambda: jobs.job_state(run_dir).state == "done")
    js = jobs.job_state(run_dir)
    assert (js.epoch, js.epochs, js.fraction, js.message) == (2, 2, 1.0, "")
    assert [r["epoch"] for r in read_metrics(run_dir)] == [1, 2]
    assert (run_dir / "train.log").exists() and wait_for(lambda: not jobs.pid_alive(pid), 30)
    with pytest.raises(TrainerError, match="already exists"):
        jobs.start(tmp_path, "done-run", tiny(2), threads=1)


def test_start_dedupes_and_cancel_stops_the_process_group(tmp_path):
    run_dir = jobs.start(tmp_path, "long", tiny(100000), threads=1)
    pid = jobs.read_job(run_dir)["pid"]
    try:
        with pytest.raises(jobs.JobBusy, match="already training"):
            jobs.start(tmp_path, "long", tiny(100000), threads=1)  # same run: a second click
        with pytest.raises(jobs.JobBusy, match="long"):
            jobs.start(tmp_path, "twin", tiny(100000), threads=1)  # same settings, other name: a second tab
        assert not (tmp_path / "twin").exists()
        assert wait_for(lambda: len(read_metrics(run_dir)) >= 1)  # the trainer is really training
        js = jobs.job_state(run_dir)
        assert js.state == "running" and js.eta_s is not None and js.eta_s > 0
    finally:
        final = jobs.cancel(run_dir)
    assert final.state == "cancelled" and "cancelled after epoch" in final.message
    assert not jobs.pid_alive(pid)
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)  # nothing of the group is left
    # a cancelled run keeps its last epoch's checkpoint; a new run with other settings starts fine
    assert (run_dir / "model.safetensors").exists()
    other = jobs.start(tmp_path, "other", tiny(1, seed=1), threads=1)
    assert wait_for(lambda: not jobs.job_state(other).active)
    assert jobs.job_state(other).state == "done"


def test_a_failing_job_reports_the_trainers_message(tmp_path):
    run_dir = jobs.start(tmp_path, "bad", tiny(2, data=str(tmp_path / "missing.npz")), threads=1)
    assert wait_for(lambda: not jobs.job_state(run_dir).active)
    js = jobs.job_state(run_dir)
    assert js.state == "failed" and "no such file" in js.message and "\n" not in js.message


def test_a_killed_job_is_failed_not_running(tmp_path):
    run_dir = jobs.start(tmp_path, "killed", tiny(100000), threads=1)
    pid = jobs.read_job(run_dir)["pid"]
    os.killpg(pid, signal.SIGKILL)
    assert wait_for(lambda: not jobs.pid_alive(pid))
    js = jobs.job_state(run_dir)
    assert js.state == "failed" and "stopped without finishing" in js.message
    assert jobs.cancel(run_dir).state == "failed"  # nothing left to cancel


def test_names():
    assert jobs.check_name("digits-2d_v1.0") == "digits-2d_v1.0"
    for bad in ("", "../x", "a/b", "uploads", ".hidden", "x" * 81, "sp ace"):
        with pytest.raises(TrainerError):
            jobs.check_name(bad)


def test_suggest_name_and_unused_seed(tmp_path):
    cfg = tiny(1)
    assert jobs.suggest_name(tmp_path, cfg) == "gmm2d-2d"
    (tmp_path / "gmm2d-2d").mkdir()
    assert jobs.suggest_name(tmp_path, cfg) == "gmm2d-2d-2"
    cfg.train.beta, cfg.train.seed = 4.0, 3
    assert jobs.suggest_name(tmp_path, cfg) == "gmm2d-2d-beta4-seed3"
    assert jobs.unused_seed(tmp_path, cfg) == 4


@pytest.mark.parametrize("cores,threads", [(1, 1), (2, 1), (3, 2), (4, 3), (5, 4), (64, 4)])
def test_a_job_leaves_a_core_for_the_app_and_takes_at_most_4(monkeypatch, cores, threads):
    monkeypatch.delenv("VAE_TRAIN_THREADS", raising=False)
    assert jobs.train_threads(cores) == threads


def test_vae_train_threads_sets_a_jobs_threads(monkeypatch):
    monkeypatch.setenv("VAE_TRAIN_THREADS", "3")
    assert jobs.train_threads(2) == 3
    monkeypatch.setenv("VAE_TRAIN_THREADS", "zero")  # not a count: the default rule
    assert jobs.train_threads(2) == 1
