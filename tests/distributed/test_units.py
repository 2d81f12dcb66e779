"""The pieces of multi-process training that need no second process: how a global batch is
shared out, the command line, and config.json's world_size."""

from __future__ import annotations

import json

import pytest
import torch

from tests.distributed.conftest import run_trainer
from trainer import RunConfig, TrainerError
from trainer.distributed import rank_device_for, share, strip_nproc


@pytest.mark.parametrize("world", [1, 2, 3, 7])
@pytest.mark.parametrize("b", [1, 2, 5, 63, 125, 128])
def test_each_row_of_a_global_batch_goes_to_exactly_one_rank(b, world):
    rows = torch.arange(b)
    parts = [rows[slice(*share(b, world, r))] for r in range(world)]
    assert torch.equal(torch.cat(parts), rows)  # contiguous, in order, each row once
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1
    assert all(torch.equal(p, q) for p, q in zip(parts, torch.tensor_split(rows, world)))


def test_the_workers_command_line_drops_nproc():
    assert strip_nproc(["fit", "--nproc", "2", "--data", "digits", "--nproc=3", "--out", "r"]) == \
        ["fit", "--data", "digits", "--out", "r"]


def test_world_size_is_recorded_and_old_configs_still_load():
    cfg = RunConfig()
    assert cfg.to_dict()["train"]["world_size"] == 1
    old = cfg.to_dict()
    del old["train"]["world_size"]  # a config.json written before the field existed
    assert RunConfig.from_dict(json.loads(json.dumps(old))).train.world_size == 1
    bad = cfg.to_dict()
    bad["train"]["world_size"] = 0
    with pytest.raises(TrainerError, match="number of processes"):
        RunConfig.from_dict(bad)


def test_a_bad_nproc_is_a_one_line_error(tmp_path):
    p = run_trainer("fit", "--data", "digits", "--out", tmp_path / "r", "--nproc", "0", timeout=120)
    assert p.code == 2
    assert p.stderr.strip() == "error: --nproc must be between 1 and 1024"
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("name,local_world,n_gpus,expected", [
    ("cpu", 2, 4, ["cpu", "cpu"]),  # asked for: the CPU even beside GPUs
    ("auto", 2, 0, ["cpu", "cpu"]),
    ("auto", 2, 1, ["cpu", "cpu"]),  # not a GPU for each: all ranks on the CPU, never half and half
    ("auto", 2, 2, ["cuda:0", "cuda:1"]),
    ("auto", 3, 4, ["cuda:0", "cuda:1", "cuda:2"]),
    ("cuda", 2, 2, ["cuda:0", "cuda:1"]),
    ("cuda", 1, 1, ["cuda:0"]),
])
def test_each_rank_trains_on_its_own_gpu_or_all_on_the_cpu(name, local_world, n_gpus, expected):
    got = [rank_device_for(name, r, local_world, n_gpus) for r in range(local_world)]
    assert got == [torch.device(e) for e in expected]


@pytest.mark.parametrize("local_world,n_gpus,message", [
    (2, 0, "--device cuda was asked for but no CUDA GPU is available: use --device cpu"),
    (4, 2, "--device cuda with 4 processes on this machine needs a GPU for each, and it has 2: "
           "use --nproc 2, or --device cpu"),
])
def test_cuda_with_fewer_gpus_than_processes_is_refused(local_world, n_gpus, message):
    with pytest.raises(TrainerError) as e:
        rank_device_for("cuda", 0, local_world, n_gpus)
    assert str(e.value) == message


@pytest.mark.skipif(torch.cuda.device_count() >= 2, reason="this machine has a GPU for each of 2 processes")
def test_two_processes_on_cuda_without_a_gpu_each_is_a_one_line_error(tmp_path):
    """Refused in every process before they join (nobody waits for a peer), nothing written."""
    p = run_trainer("fit", "--data", "digits", "--out", tmp_path / "r", "--nproc", "2", "--device", "cuda",
                    "--threads", "1", timeout=180)
    assert p.code == 2, p.stderr
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    reason = "no CUDA GPU is available" if n == 0 else f"needs a GPU for each, and it has {n}"
    errors = [line for line in p.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and reason in errors[0], p.stderr
    assert "Traceback" not in p.stderr
    assert not (tmp_path / "r").exists()
