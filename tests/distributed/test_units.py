"""The pieces of multi-process training that need no second process: how a global batch is
shared out, the command line, and config.json's world_size."""

from __future__ import annotations

import json

import pytest
import torch

from tests.distributed.conftest import run_trainer
from trainer import RunConfig, TrainerError
from trainer.distributed import share, strip_nproc


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
