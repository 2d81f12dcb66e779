"""Training faults with real processes and real files: kill -9 and SIGTERM mid-epoch, a
loss that becomes non-finite, a disk that fills up or turns read-only during a save, and a
process stopped between the files of a save. In every case the last completed checkpoint
stays intact and loadable, the status says what happened, and the run can be resumed."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from trainer import RunConfig, TrainerError, fit, load_run
from trainer import checkpoints
from trainer import runs as runs_mod
from trainer.liveness import proc_stat, process_start
from trainer.runs import read_status_dead_as_failed, read_status_raw
from trainer.train import NonFiniteLoss

from .conftest import ROOT, assert_one_line_error, cli, trainer_env

SAVED = ("model.safetensors", "optim.safetensors", "train_state.json", "config.json")


def test_a_resume_removes_only_the_temp_files_of_training_writes(tmp_path):
    from trainer import fileio

    ours = [tmp_path / ".status.json.k2j4.tmp", tmp_path / ".model.safetensors.x8.tmp"]
    others = [tmp_path / ".log_px.json.a1.tmp", tmp_path / "status.json", tmp_path / "notes.tmp"]
    for p in ours + others:
        p.write_text("x")
    removed = fileio.remove_temp_files(tmp_path, runs_mod.TRAINING_FILES)
    assert sorted(removed) == sorted(p.name for p in ours)
    assert not any(p.exists() for p in ours) and all(p.exists() for p in others)


def _files(d: Path, names=SAVED) -> dict[str, bytes]:
    return {n: (d / n).read_bytes() for n in names}


def _rows(d: Path) -> list[dict]:
    return runs_mod.read_metrics(d)


SLOW_DATA = "gmm2d:n=5000"  # 4,000 training points


def _start_slow_fit(out: Path, epochs: int = 3) -> subprocess.Popen:
    """A real `python -m trainer fit` with one sample per step, so that a signal can land in
    the middle of an epoch. An epoch is 4,000 steps, 2.5 s or more on a quiet 2-core machine,
    so that the heartbeat (at most once a second) reports the middle of epoch 2: with the
    449 steps of digits:test=0.75 an epoch took 0.3 s there and the trainer could finish
    between two heartbeats."""
    cmd = [sys.executable, "-m", "trainer", "fit", "--data", SLOW_DATA, "--hidden", "32",
           "--batch-size", "1", "--epochs", str(epochs), "--threads", "1", "--quiet", "--out", str(out)]
    return subprocess.Popen(cmd, cwd=ROOT, env=trainer_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _wait_mid_epoch(proc: subprocess.Popen, out: Path, timeout: float = 240) -> dict:
    """Wait until at least one epoch is saved and the trainer's heartbeat reports a batch
    of the next epoch; returns that status."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        rows = _rows(out)
        status = read_status_raw(out) or {}
        if rows and status.get("state") == "running" and status.get("epoch") == len(rows) \
                and 0 < status.get("batch", 0) < status.get("batches", 0) \
                and status.get("heartbeat", 0) > rows[-1]["wall_time"]:
            return status
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"the trainer never reached the middle of epoch 2: {read_status_raw(out)}")


def test_kill_9_mid_epoch_keeps_the_last_checkpoint_and_can_resume(tmp_path):
    out = tmp_path / "run"
    proc = _start_slow_fit(out)
    try:
        _wait_mid_epoch(proc, out)
        # While it trains, a second trainer for the same folder is refused (one job per run).
        cfg = RunConfig(data=SLOW_DATA)
        cfg.model.hidden, cfg.train.batch_size, cfg.train.epochs, cfg.train.threads = [32], 1, 3, 1
        for resume in (True, False):
            with pytest.raises(TrainerError, match=f"being trained by another process \\(pid {proc.pid}\\)"):
                fit(cfg, out, resume=resume)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL

    saved_rows = _rows(out)
    epoch = len(saved_rows)
    assert epoch >= 1
    status = read_status_dead_as_failed(out)
    assert status["state"] == "failed", status  # at once: the pid is dead, no need to wait for the heartbeat
    assert "stopped without finishing" in status["message"] and "resume" in status["message"]
    run = load_run(out)  # the last completed epoch's checkpoint, intact
    assert json.loads((out / "train_state.json").read_text())["epoch"] == epoch
    assert all(torch.isfinite(p).all() for p in run.model.state_dict().values())
    # a kill during an atomic write leaves its temp file (nothing can prevent that); it is
    # never read as a run file, and the resume removes it
    left = list(out.glob(".*.tmp"))

    assert fit(cfg, out, resume=True) == "done"
    assert not list(out.glob(".*.tmp")), f"temp files left behind after the resume (after the kill: {left})"
    rows = _rows(out)
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert rows[:epoch] == saved_rows, "resume must keep the rows of the saved epochs"
    assert read_status_dead_as_failed(out)["state"] == "done"
    load_run(out)


def test_sigterm_mid_epoch_cancels_with_a_valid_checkpoint(tmp_path):
    out = tmp_path / "run"
    proc = _start_slow_fit(out)
    try:
        _wait_mid_epoch(proc, out)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    status = read_status_dead_as_failed(out)
    assert status["state"] == "cancelled", status
    epoch = len(_rows(out))
    assert status["epoch"] == epoch >= 1
    assert f"cancelled after epoch {epoch}" in status["message"]
    run = load_run(out)
    assert json.loads((out / "train_state.json").read_text())["epoch"] == epoch
    assert len(run.metrics) == epoch


# -- a loss that becomes non-finite --------------------------------------------------------------

def test_huge_learning_rate_fails_with_a_message_and_keeps_the_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    r = cli(capsys, "fit", "--data", "digits", "--hidden", "32", "--lr", "1e10", "--epochs", "3",
            "--threads", "1", "--quiet", "--out", out)
    assert_one_line_error(r, "non-finite", "lower the learning rate", "last good checkpoint is kept", code=1)
    status = read_status_dead_as_failed(out)
    assert status["state"] == "failed" and "non-finite" in status["message"]
    run = load_run(out)  # the checkpoint saved before the first step
    assert run.metrics == []
    assert all(torch.isfinite(p).all() for p in run.model.state_dict().values())


def test_weights_blown_up_by_the_last_step_of_an_epoch_are_never_saved(tmp_path):
    """One step per epoch and an enormous learning rate: the step that ends epoch 1 leaves
    infinite weights. They must not replace the good checkpoint."""
    out = tmp_path / "run"
    cfg = RunConfig(data="digits")
    cfg.model.hidden, cfg.train.batch_size, cfg.train.epochs, cfg.train.threads = [32], 5000, 3, 1
    cfg.train.lr = 1e39
    with pytest.raises(NonFiniteLoss, match="non-finite|NaN or infinite"):
        fit(cfg, out)
    assert read_status_dead_as_failed(out)["state"] == "failed"
    run = load_run(out)
    assert run.metrics == []
    assert json.loads((out / "train_state.json").read_text())["epoch"] == 0


def test_a_diverged_run_resumes_at_a_lower_learning_rate(runs_dir, capsys):
    """The failure message says to lower the learning rate: `fit --resume --lr` does that,
    from the last good checkpoint, records it in config.json, and a later --resume without
    --lr keeps it. A bad --lr is refused before anything is touched."""
    out = runs_dir / "bad"
    args = ["fit", "--data", "digits", "--hidden", "32", "--threads", "1", "--quiet", "--out", str(out), "--resume"]
    assert cli(capsys, *args, "--epochs", "4", "--lr", "1e10").code == 1  # diverges: failed, kept
    status = read_status_dead_as_failed(out)
    assert status["state"] == "failed" and "lower the learning rate" in status["message"]
    assert len(load_run(out).metrics) == 2
    before = {f.name: f.read_bytes() for f in out.iterdir() if f.is_file() and f.name != ".lock"}
    assert_one_line_error(cli(capsys, *args, "--epochs", "4", "--lr", "-1"), "lr")
    assert {f.name: f.read_bytes() for f in out.iterdir() if f.is_file() and f.name != ".lock"} == before

    result = cli(capsys, *args, "--epochs", "4", "--lr", "3e-4")
    assert result.code == 0, result.stderr
    run = load_run(out)
    assert read_status_dead_as_failed(out)["state"] == "done" and [r["epoch"] for r in run.metrics] == [1, 2, 3, 4]
    assert all(torch.isfinite(torch.tensor(r["test_elbo"])) for r in run.metrics)
    assert run.config.train.lr == 3e-4
    assert cli(capsys, *args, "--epochs", "5").code == 0
    assert load_run(out).config.train.lr == 3e-4 and len(load_run(out).metrics) == 5


def test_divergence_after_training_keeps_the_trained_checkpoint(runs_dir):
    """A trained run resumed with a learning rate that blows up: the trained epoch's files
    stay byte for byte."""
    out = runs_dir / "bad"
    cfg_json = json.loads((out / "config.json").read_text())
    cfg_json["train"]["lr"] = 1e10
    (out / "config.json").write_text(json.dumps(cfg_json))
    before, rows = _files(out), _rows(out)
    cfg = RunConfig.from_dict(cfg_json)
    cfg.train.epochs = 4
    with pytest.raises(NonFiniteLoss):
        fit(cfg, out, resume=True)
    assert _files(out) == before
    assert _rows(out) == rows
    status = read_status_dead_as_failed(out)
    assert status["state"] == "failed" and "lower the learning rate" in status["message"]
    assert len(load_run(out).metrics) == 2


# -- the disk fills up or turns read-only during a save ------------------------------------------

def _tiny_cfg(epochs: int = 3) -> RunConfig:
    cfg = RunConfig(data="digits")
    cfg.model.hidden, cfg.train.epochs, cfg.train.threads = [32], epochs, 1
    return cfg


class _Fault:
    """Makes one file operation fail the way a full or read-only disk does, from the
    `after`-th time it is asked for that file on."""

    def __init__(self, monkeypatch, func: str, err: int, names: tuple[str, ...], after: int):
        self.real = getattr(os, func)
        self.err, self.names, self.after, self.calls = err, names, after, 0
        self.func = func
        monkeypatch.setattr(os, func, self)

    def _hits(self, path) -> bool:
        name = Path(os.fsdecode(path)).name
        return any(name == n or name.startswith(f".{n}.") for n in self.names)

    def __call__(self, *args, **kwargs):
        target = args[1] if self.func == "replace" else args[0]
        if isinstance(target, (str, bytes, os.PathLike)) and self._hits(target):
            self.calls += 1
            if self.calls > self.after:
                raise OSError(self.err, os.strerror(self.err), os.fsdecode(target))
        return self.real(*args, **kwargs)


def _after_epoch(out: Path, epoch: int, fault_factory):
    """An on_epoch callback that installs the fault once `epoch` epochs are saved."""
    def on_epoch(row):
        if row["epoch"] == epoch:
            fault_factory()
    return on_epoch


@pytest.mark.parametrize("where", ["rename-model", "rename-optim", "all-writes"])
def test_disk_full_during_a_save_keeps_the_previous_checkpoint(where, tmp_path, monkeypatch):
    out = tmp_path / "run"
    snapshot = {}

    def install():
        snapshot.update(_files(out))
        if where == "rename-model":
            _Fault(monkeypatch, "replace", errno.ENOSPC, ("model.safetensors",), 0)
        elif where == "rename-optim":
            _Fault(monkeypatch, "replace", errno.ENOSPC, ("optim.safetensors",), 0)
        else:  # every new file in the run folder, status.json included
            real_open = os.open
            monkeypatch.setattr(os, "open", lambda p, *a, **k: _raise_in(out, p, errno.ENOSPC, real_open, *a, **k))

    with pytest.raises(TrainerError) as err:
        fit(_tiny_cfg(), out, on_epoch=_after_epoch(out, 1, install))
    message = str(err.value)
    assert "No space left on device" in message and "last saved checkpoint is kept" in message
    monkeypatch.undo()  # the disk has space again

    load_run(out)
    if where == "rename-optim":  # the weights of epoch 2 were written before the fault
        assert checkpoints.read_train_state(out)["epoch"] == 2
    else:  # the epoch-1 checkpoint, byte for byte
        assert (out / "model.safetensors").read_bytes() == snapshot["model.safetensors"]
        assert checkpoints.read_train_state(out)["epoch"] == 1
    assert not list(out.glob(".*.tmp")), "a temp file was left behind"
    if where != "all-writes":  # status.json could be written: it says what happened
        status = read_status_dead_as_failed(out)
        assert status["state"] == "failed" and "No space left on device" in status["message"]
    assert fit(_tiny_cfg(), out, resume=True) == "done"
    assert [r["epoch"] for r in _rows(out)] == [1, 2, 3]


def _raise_in(folder: Path, path, err: int, real_open, *args, **kwargs):
    flags = args[0] if args else kwargs.get("flags", 0)
    if Path(os.fsdecode(path)).parent == folder and flags & os.O_CREAT:
        raise OSError(err, os.strerror(err), os.fsdecode(path))
    return real_open(path, *args, **kwargs)


def test_read_only_folder_during_a_save(tmp_path, monkeypatch):
    """The folder turns read-only (simulated: tests run as root, whom chmod does not stop)."""
    out = tmp_path / "run"
    snapshot = {}

    def install():
        snapshot.update(_files(out))
        real_open = os.open
        monkeypatch.setattr(os, "open", lambda p, *a, **k: _raise_in(out, p, errno.EROFS, real_open, *a, **k))

    with pytest.raises(TrainerError, match="Read-only file system.*last saved checkpoint is kept"):
        fit(_tiny_cfg(), out, on_epoch=_after_epoch(out, 1, install))
    monkeypatch.undo()
    assert _files(out) == snapshot
    assert not list(out.glob(".*.tmp"))
    load_run(out)


def test_unwritable_run_folder_at_the_start_is_a_clear_error(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    out.mkdir()
    real_open = os.open
    monkeypatch.setattr(os, "open", lambda p, *a, **k: _raise_in(out, p, errno.EROFS, real_open, *a, **k))
    r = cli(capsys, "fit", "--data", "digits", "--hidden", "32", "--epochs", "1", "--threads", "1",
            "--quiet", "--out", out)
    assert_one_line_error(r, "Read-only file system")


# -- the process stops between the files of one save ---------------------------------------------------

class _Crash(BaseException):
    """Stands for the process dying at this point (kill -9, power cut)."""


@pytest.mark.parametrize("crash_at", [1, 2, 3, 4])
def test_a_crash_between_the_files_of_a_save_leaves_a_resumable_run(crash_at, runs_dir, monkeypatch):
    """Resume a 2-epoch run to 3 epochs and stop the process at the crash_at-th file
    operation of the epoch-3 save (1 optimizer to .next, 2 weights, 3 .next -> optim,
    4 train_state.json). The weights load, and resuming gives a complete run."""
    out = runs_dir / "bad"
    real_replace = os.replace
    calls = {"n": 0}

    def replace(src, dst):
        if Path(os.fsdecode(dst)).name in ("optim.safetensors.next", "model.safetensors",
                                           "optim.safetensors", "train_state.json"):
            calls["n"] += 1
            if calls["n"] == crash_at:
                raise _Crash()
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(_Crash):
        fit(_tiny_cfg(epochs=3), out, resume=True)
    monkeypatch.undo()
    assert read_status_raw(out)["state"] == "failed"  # said by the process on its way down
    load_run(out)
    assert checkpoints.read_train_state(out)["epoch"] == (2 if crash_at <= 2 else 3)

    assert fit(_tiny_cfg(epochs=4), out, resume=True) == "done"
    assert [r["epoch"] for r in _rows(out)] == [1, 2, 3, 4]
    # the same weights as a run that was never interrupted: the optimizer state resumed
    # from belonged to the saved weights
    ref = runs_dir / "ref"
    shutil.copytree(runs_dir / "good", ref)
    assert fit(_tiny_cfg(epochs=4), ref, resume=True) == "done"
    assert (out / "model.safetensors").read_bytes() == (ref / "model.safetensors").read_bytes()
    assert (out / "optim.safetensors").read_bytes() == (ref / "optim.safetensors").read_bytes()


# -- reading a `running` status back -------------------------------------------------------------

def _status(d: Path, **fields) -> None:
    d.mkdir(parents=True, exist_ok=True)
    (d / "status.json").write_text(json.dumps({"state": "running", "epoch": 3, "epochs": 10, **fields}))


def test_a_running_status_is_believed_only_while_its_process_lives(tmp_path):
    import socket

    me, host, now = os.getpid(), socket.gethostname(), time.time()
    start = process_start(me)
    cases = {
        "alive": (dict(pid=me, pid_start=start, host=host, heartbeat=now), "running"),
        "heartbeat stale": (dict(pid=me, pid_start=start, host=host, heartbeat=now - 1000), "failed"),
        "no heartbeat": (dict(pid=me, pid_start=start, host=host), "failed"),
        "pid reused by another process": (dict(pid=me, pid_start=(start or 0) + 1, host=host, heartbeat=now), "failed"),
        "another machine, fresh": (dict(pid=999_999_999, host="elsewhere", heartbeat=now), "running"),
        "another machine, stale": (dict(pid=999_999_999, host="elsewhere", heartbeat=now - 1000), "failed"),
    }
    for name, (fields, expected) in cases.items():
        _status(tmp_path / "case", **fields)
        status = read_status_dead_as_failed(tmp_path / "case")
        assert status["state"] == expected, (name, status)
        if expected == "failed":
            assert "resume" in status["message"], status

    # a process that exited but was never reaped (a zombie) is dead, and so is a reaped one
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 60
    while proc_stat(child.pid)[0] != "Z" and time.monotonic() < deadline:
        time.sleep(0.05)
    _status(tmp_path / "zombie", pid=child.pid, pid_start=process_start(child.pid), host=host,
            heartbeat=time.time())
    assert read_status_dead_as_failed(tmp_path / "zombie")["state"] == "failed"
    child.wait()
    assert read_status_dead_as_failed(tmp_path / "zombie")["state"] == "failed"
