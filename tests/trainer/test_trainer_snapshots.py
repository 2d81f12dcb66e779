"""Latent snapshots (trainer/snapshots.py): the test set's posterior means saved every few
epochs by fit's callback, bounded in size, readable back, without changing what is trained."""

from __future__ import annotations

import json

import numpy as np

from trainer import RunConfig, fit, load_run, snapshots


def small_cfg(epochs: int) -> RunConfig:
    cfg = RunConfig(data="digits")
    cfg.model.hidden = [32]
    cfg.train.epochs, cfg.train.threads = epochs, 1
    return cfg


def test_fit_saves_the_codes_every_few_epochs(tmp_path, monkeypatch):
    monkeypatch.setattr(snapshots, "MAX_SNAPSHOTS", 5)
    fit(small_cfg(12), tmp_path / "run")
    epochs, mu = snapshots.read(tmp_path / "run")
    assert snapshots.every_for(12) == 3
    assert epochs.tolist() == [0, 3, 6, 9, 12]
    run = load_run(tmp_path / "run")
    x = run.load_data().x_test
    assert mu.shape == (5, len(x), 2) and mu.dtype == np.float32
    assert np.array_equal(mu[-1], run.encode(x).mu.numpy())  # the last one: the final encoder's means
    assert not np.allclose(mu[0], mu[-1])  # the codes moved while it trained
    assert [p.name for p in (tmp_path / "run").iterdir() if "snapshot" in p.name] == [snapshots.FILENAME]

    # resumed past the bound: still at most MAX_SNAPSHOTS, the first and the newest kept
    cfg = small_cfg(30)
    fit(cfg, tmp_path / "run", resume=True)
    epochs, mu = snapshots.read(tmp_path / "run")
    assert len(epochs) <= 5 and epochs[0] == 0 and epochs[-1] == 30 and np.all(np.diff(epochs) > 0)
    assert np.array_equal(mu[-1], load_run(tmp_path / "run").encode(x).mu.numpy())


def test_snapshots_are_bounded_and_change_no_number_of_the_training(tmp_path, monkeypatch):
    monkeypatch.setattr(snapshots, "MAX_SAMPLES", 50)
    fit(small_cfg(3), tmp_path / "with")
    epochs, mu = snapshots.read(tmp_path / "with")
    assert mu.shape == (4, 50, 2)
    monkeypatch.setattr(snapshots.Recorder, "after_epoch", lambda self, epoch: None)
    fit(small_cfg(3), tmp_path / "without")
    assert snapshots.read(tmp_path / "without") is None

    def rows(run):
        return [{k: v for k, v in json.loads(line).items() if k not in ("wall_time", "epoch_time_s", "samples_per_s")}
                for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
    assert rows("with") == rows("without")
    assert (tmp_path / "with" / "model.safetensors").read_bytes() == (tmp_path / "without" / "model.safetensors").read_bytes()


def test_a_damaged_file_is_no_snapshots(tmp_path):
    (tmp_path / snapshots.FILENAME).write_bytes(b"not safetensors")
    assert snapshots.read(tmp_path) is None
    assert snapshots.read(tmp_path / "missing") is None
