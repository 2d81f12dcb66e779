"""Training jobs as real `python -m trainer fit` processes on tiny data (one thread each)."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sys
import time

import pytest

from explorer.services import jobs
from trainer import ModelConfig, RunConfig, TrainConfig, TrainerError
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


def every_field_changed() -> RunConfig:
    """A config in which every field differs from RunConfig's default (checked)."""
    cfg = RunConfig(data="gmm2d:n=300,k=3",
                    model=ModelConfig(arch="conv", hidden=[16, 8], latent_dim=3, likelihood="bernoulli",
                                      sigma_dec=0.25, conv_channels=[4, 8]),
                    train=TrainConfig(epochs=7, batch_size=32, lr=3e-4, beta=4.0, kl_warmup=2, mc_samples=3,
                                      seed=11, device="cpu", threads=2, world_size=2),
                    standardize=False, data_shape=[2], versions={"torch": "0"})
    default = RunConfig()
    for section in ("model", "train"):
        for f in dataclasses.fields(getattr(cfg, section)):
            assert getattr(getattr(cfg, section), f.name) != getattr(getattr(default, section), f.name), f.name
    assert cfg.standardize != default.standardize
    assert [f.name for f in dataclasses.fields(RunConfig)] == ["data", "model", "train", "standardize", "data_shape",
                                                               "versions"]
    return cfg


def test_fit_command_is_what_the_trainer_parses(tmp_path):
    """The job's command carries every setting, also those no flag sets (conv_channels):
    the trainer resolves it (--config, the flags) to the job's config exactly, its threads
    shared out among its processes, and only the informational fields left for the run."""
    from trainer.__main__ import build_parser, fit_config, fit_processes

    cfg = every_field_changed()
    assert jobs.write_job_config(tmp_path, cfg) == tmp_path / jobs.JOB_CONFIG_FILE
    command = jobs.fit_command(cfg, tmp_path, threads=4)
    assert command[:4] == [sys.executable, "-m", "trainer", "fit"] and "--config" in command
    a = build_parser().parse_args(command[3:])
    resolved = fit_config(a)
    assert resolved.to_dict() == {**cfg.to_dict(), "data_shape": [], "versions": {}}  # threads 4 / 2 processes
    assert fit_processes(a, resolved) == 2 and (a.nproc, a.threads, a.quiet) == (2, 2, True)


def test_resume_command_carries_no_settings(tmp_path):
    """A resumed job's settings are its config.json's: the command names only the folder,
    this machine's device and threads, and a new learning rate when one is given."""
    from trainer.__main__ import build_parser

    cfg = every_field_changed()
    for lr in (None, 1e-4):
        a = build_parser().parse_args(jobs.resume_command(cfg, tmp_path, threads=4, lr=lr)[3:])
        assert (a.resume, a.out, a.config, a.nproc, a.device, a.threads, a.lr) == \
            (True, str(tmp_path), None, 2, "cpu", 2, lr)
        assert all(getattr(a, flag) is None for flag in ("data", "arch", "hidden", "latent_dim", "likelihood",
                                                         "sigma_dec", "beta", "kl_warmup", "mc_samples", "epochs",
                                                         "batch_size", "seed"))


def test_a_job_trains_exactly_the_settings_it_was_given(tmp_path):
    """A real job with every setting a one-process CPU job can change: the run's config.json
    holds them all, the informational fields filled in by the trainer."""
    cfg = RunConfig(data="digits",
                    model=ModelConfig(arch="linear", hidden=[8], latent_dim=3, likelihood="bernoulli",
                                      sigma_dec=0.5, conv_channels=[4]),
                    train=TrainConfig(epochs=2, batch_size=64, lr=2e-3, beta=0.5, kl_warmup=1, mc_samples=2,
                                      seed=3, device="cpu", threads=1))
    run_dir = jobs.start(tmp_path, "every-setting", cfg, threads=1)
    assert json.loads((run_dir / jobs.JOB_CONFIG_FILE).read_text()) == cfg.to_dict()
    assert wait_for(lambda: jobs.job_state(run_dir).state in ("done", "failed"))
    assert jobs.job_state(run_dir).state == "done", jobs.job_state(run_dir).message
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["data_shape"] == [1, 8, 8] and saved["versions"]["threads"] == "1"
    assert {**saved, "data_shape": [], "versions": {}} == cfg.to_dict()
    assert [r["epoch"] for r in read_metrics(run_dir)] == [1, 2]
    from explorer.services.runs import list_runs  # the settings file is no run and hides none

    assert [(s.name, s.state) for s in list_runs(tmp_path)] == [("every-setting", "done")]


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
