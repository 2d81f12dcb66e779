"""Two training processes (torch.distributed, gloo on CPU) train the weights one process
trains with the same global batch and seed; they stop together; rank 0 alone writes.

Each test starts `python -m trainer fit --nproc 2` (torchrun) as a user does."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import time

import pytest
import torch

from tests.conftest import ROOT
from tests.distributed.conftest import (FIT_ARGS, assert_weights_close, reference_config, run_trainer,
                                        trainer_cmd, trainer_env, weights)
from trainer import checkpoints, load_dataset, load_run, runs
from trainer.config import RunConfig

pytestmark = pytest.mark.slow

TIMING_KEYS = {"epoch_time_s", "samples_per_s", "wall_time"}


def assert_rows_close(rows_a: list[dict], rows_b: list[dict]) -> None:
    """Same epochs and steps; every metric equal up to float rounding."""
    assert [(r["epoch"], r["step"]) for r in rows_a] == [(r["epoch"], r["step"]) for r in rows_b]
    for a, b in zip(rows_a, rows_b):
        assert a.keys() == b.keys()
        for k in a.keys() - TIMING_KEYS:
            if isinstance(a[k], float):
                assert math.isclose(a[k], b[k], rel_tol=1e-6, abs_tol=1e-6), (k, a[k], b[k])
            else:
                assert a[k] == b[k], k


def test_the_last_batch_splits_unevenly():
    """The settings of these tests cover the hard case: a last global batch of odd size."""
    cfg = reference_config()
    n = len(load_dataset(cfg.data, cfg.train.seed).x_train)
    assert (n % cfg.train.batch_size) % 2 == 1, n


def test_two_processes_train_the_weights_of_one(one_process_run, tmp_path):
    out = tmp_path / "two"
    p = run_trainer("fit", *FIT_ARGS, "--out", out, "--nproc", "2")
    assert p.code == 0, p.stderr
    assert "Traceback" not in p.stderr
    assert p.stderr.count(f"done: {out}") == 1, p.stderr  # rank 0 reports, once

    assert_weights_close(weights(out), weights(one_process_run), atol=1e-5)
    rows_two, rows_one = runs.read_metrics(out), runs.read_metrics(one_process_run)
    assert_rows_close(rows_two, rows_one)
    assert rows_two[-1]["test_elbo"] > rows_two[0]["test_elbo"]  # it did learn

    cfg_two = json.loads((out / "config.json").read_text())
    cfg_one = json.loads((one_process_run / "config.json").read_text())
    assert cfg_two["train"].pop("world_size") == 2 and cfg_one["train"].pop("world_size") == 1
    for c in (cfg_two, cfg_one):
        c.pop("versions")
    assert cfg_two == cfg_one
    assert RunConfig.from_dict(json.loads((out / "config.json").read_text())).train.world_size == 2
    # only rank 0 wrote: the same files as one process, and the status names it
    assert sorted(f.name for f in out.iterdir()) == sorted(f.name for f in one_process_run.iterdir())
    status = runs.read_status_dead_as_failed(out)
    assert status["state"] == "done" and status["epoch"] == 2


def test_resume_with_two_processes_from_a_memory_mapped_file(one_process_run, digits_npy, tmp_path):
    """Data read in batches from disk under two processes, stopped after one epoch and
    resumed: the ranks other than 0 get the weights, Adam state and generators from rank 0."""
    out = tmp_path / "mapped"
    args = [a if a != "digits" else f"{digits_npy}:mmap=1" for a in FIT_ARGS]
    first = run_trainer("fit", *args, "--epochs", "1", "--out", out, "--nproc", "2")
    assert first.code == 0, first.stderr
    assert checkpoints.read_train_state(out)["epoch"] == 1
    second = run_trainer("fit", *args, "--epochs", "2", "--out", out, "--nproc", "2", "--resume")
    assert second.code == 0, second.stderr
    assert checkpoints.read_train_state(out)["epoch"] == 2
    # the same numbers as the built-in digits in one process, uninterrupted
    assert_weights_close(weights(out), weights(one_process_run), atol=1e-5)
    assert_rows_close(runs.read_metrics(out), runs.read_metrics(one_process_run))


def _wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_sigterm_to_rank_0_cancels_every_rank_with_a_valid_checkpoint(tmp_path):
    """What the app's Cancel does: SIGTERM to the process status.json names (rank 0). The
    stop flag is all-reduced, so every rank stops after the same step."""
    out = tmp_path / "cancel"
    cmd = trainer_cmd("fit", "--data", "digits", "--hidden", "32", "--batch-size", "16", "--epochs", "1000",
                      "--threads", "1", "--out", out, "--nproc", "2")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=trainer_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        _wait_for(lambda: runs.read_metrics(out), 240, "the first epoch")
        rank0 = runs.read_status_dead_as_failed(out)["pid"]
        assert rank0 != proc.pid  # the worker, not the launcher
        os.kill(rank0, signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    status = runs.read_status_dead_as_failed(out)
    assert status["state"] == "cancelled", status
    epoch = checkpoints.read_train_state(out)["epoch"]
    assert epoch >= 1 and len(runs.read_metrics(out)) == epoch
    load_run(out)  # the checkpoint is whole


def test_a_non_finite_loss_stops_every_rank(tmp_path):
    out = tmp_path / "nan"
    p = run_trainer("fit", *FIT_ARGS, "--lr", "1e10", "--epochs", "3", "--out", out, "--nproc", "2")
    assert p.code == 1, p.stderr
    assert "Traceback" not in p.stderr
    errors = [line for line in p.stderr.splitlines() if line.startswith("error: ")]
    assert errors and all("non-finite" in line for line in errors), p.stderr
    status = runs.read_status_dead_as_failed(out)
    assert status["state"] == "failed" and "non-finite" in status["message"]


def test_an_error_on_rank_0_reaches_the_other_ranks(one_process_run, tmp_path):
    """Rank 0 refuses to overwrite a run; rank 1, waiting for rank 0's settings, stops too
    (no hang), and the run folder is untouched."""
    out = tmp_path / "taken"
    shutil.copytree(one_process_run, out, ignore=shutil.ignore_patterns(".lock"))
    def files():  # .lock: runs.RunLock's lock file, created by whoever tries the folder
        return {f.name: f.read_bytes() for f in out.iterdir() if f.name != ".lock"}

    before = files()
    t0 = time.monotonic()
    p = run_trainer("fit", *FIT_ARGS, "--out", out, "--nproc", "2", timeout=180)
    assert p.code == 2, p.stderr
    assert "Traceback" not in p.stderr
    errors = [line for line in p.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "already holds a run" in errors[0], p.stderr
    assert time.monotonic() - t0 < 170
    assert files() == before


# -- CUDA: only where GPUs are present ---------------------------------------------------------------

@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")
def test_cuda_one_process_trains(tmp_path):
    out = tmp_path / "cuda"
    p = run_trainer("fit", *FIT_ARGS, "--device", "cuda", "--out", out)
    assert p.code == 0, p.stderr
    assert json.loads((out / "config.json").read_text())["versions"]["device"] == "cuda"
    rows = runs.read_metrics(out)
    assert all(math.isfinite(r["test_elbo"]) for r in rows) and rows[-1]["test_elbo"] > rows[0]["test_elbo"]
    load_run(out)  # GPU weights load on the CPU


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")
def test_a_cuda_run_resumes_on_the_gpu_and_on_the_cpu(tmp_path):
    """Resumed on the GPU, a run goes on as if uninterrupted (the CUDA noise state restored);
    resumed on the CPU, it goes on with the saved weights and Adam state and new noise."""
    straight, gpu, cpu = tmp_path / "straight", tmp_path / "gpu", tmp_path / "cpu"
    assert run_trainer("fit", *FIT_ARGS, "--epochs", "3", "--device", "cuda", "--out", straight).code == 0
    first = run_trainer("fit", *FIT_ARGS, "--device", "cuda", "--out", gpu)
    assert first.code == 0, first.stderr
    shutil.copytree(gpu, cpu)
    on_gpu = run_trainer("fit", "--resume", "--epochs", "3", "--device", "cuda", "--threads", "1", "--out", gpu)
    assert on_gpu.code == 0, on_gpu.stderr
    assert_rows_close(runs.read_metrics(gpu), runs.read_metrics(straight))
    assert_weights_close(weights(gpu), weights(straight), atol=1e-5)
    on_cpu = run_trainer("fit", "--resume", "--epochs", "3", "--device", "cpu", "--threads", "1", "--out", cpu)
    assert on_cpu.code == 0, on_cpu.stderr
    rows = runs.read_metrics(cpu)
    assert [r["epoch"] for r in rows] == [1, 2, 3] and math.isfinite(rows[-1]["test_elbo"])
    assert abs(rows[-1]["test_elbo"] - runs.read_metrics(straight)[-1]["test_elbo"]) < 1.0


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs (nccl), this machine has fewer")
def test_two_gpus_train_the_weights_of_one_gpu(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    assert run_trainer("fit", *FIT_ARGS, "--device", "cuda", "--out", one).code == 0
    p = run_trainer("fit", *FIT_ARGS, "--device", "cuda", "--out", two, "--nproc", "2")
    assert p.code == 0, p.stderr
    assert_weights_close(weights(two), weights(one), atol=1e-4)
