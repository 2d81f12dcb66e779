"""Fixtures for multi-process training and data read from disk in batches.

Several processes are started the way a user starts them: `python -m trainer fit --nproc 2`
(which runs torchrun, gloo on CPU), each with one torch thread. The reference is one process
with the same settings, trained in this process."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import ROOT
from trainer import RunConfig, checkpoints, fit

# digits: 1,438 training samples; 125 per batch leaves a last batch of 63, which two
# processes split unevenly (32 + 31)
FIT_ARGS = ["--data", "digits", "--hidden", "32", "--batch-size", "125", "--epochs", "2", "--threads", "1"]


def reference_config() -> RunConfig:
    """FIT_ARGS as a RunConfig."""
    cfg = RunConfig(data="digits")
    cfg.model.hidden = [32]
    cfg.train.batch_size, cfg.train.epochs, cfg.train.threads = 125, 2, 1
    return cfg


@dataclass
class Proc:
    code: int
    stdout: str
    stderr: str


def trainer_env(**extra: str) -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **extra}


def trainer_cmd(*args) -> list[str]:
    return [sys.executable, "-m", "trainer", *map(str, args)]


def run_trainer(*args, timeout: float = 300, **env: str) -> Proc:
    """`python -m trainer ARGS` as its own process (its own process group, killed on timeout)."""
    p = subprocess.Popen(trainer_cmd(*args), cwd=ROOT, env=trainer_env(**env), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, 9)
        out, err = p.communicate()
        raise AssertionError(f"python -m trainer {' '.join(map(str, args))} did not finish in {timeout}s:\n{err}")
    return Proc(p.returncode, out, err)


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    """A run's weights, checked and loaded by the trainer's own loader (nothing unpickled)."""
    return checkpoints.load_model(run_dir).state_dict()


def assert_weights_close(a: dict, b: dict, atol: float = 1e-5) -> float:
    """Same keys and shapes, values within atol (float rounding of sums taken in another
    order); returns the largest difference."""
    assert a.keys() == b.keys()
    worst = 0.0
    for k in a:
        assert a[k].shape == b[k].shape, k
        worst = max(worst, float((a[k] - b[k]).abs().max()))
    assert worst <= atol, f"largest weight difference {worst:.3g} > {atol}"
    return worst


@pytest.fixture(scope="session")
def one_process_run(tmp_path_factory) -> Path:
    """The reference: FIT_ARGS trained by one process (in this one)."""
    out = tmp_path_factory.mktemp("ref") / "one"
    assert fit(reference_config(), out) == "done"
    return out


@pytest.fixture(scope="session")
def digits_npy(tmp_path_factory) -> Path:
    """The built-in digits, values and layout as the trainer loads them (float32, (N, 1, 8, 8)),
    saved as a .npy: trained from it, a run sees exactly the built-in data set's numbers."""
    from trainer.data import DATASETS

    x = DATASETS["digits"].load("digits").x  # (1797, 1, 8, 8) float32 in [0, 1], before the train/test split
    path = tmp_path_factory.mktemp("npy") / "digits.npy"
    np.save(path, x)
    return path
