"""A run folder on disk: its status and heartbeat, its metrics, its lock, its settings.

A run folder holds
  config.json        every setting (RunConfig), the data spec, seed and package versions
  model.safetensors  the weights, nothing else (safetensors never runs code)  } checkpoints.py
  optim.safetensors  Adam's state and the RNG states, for --resume             } writes and
  train_state.json   epoch and step of the saved checkpoint                    } loads these
  metrics.jsonl      one JSON line per epoch
  data.json          the data's names: name (the file's own), feature_names, label_name,
                     label_names, class_names (read_data_info)
  standardize.json   the columns' means and scales, when the run standardises (preprocess.py)
  status.json        state (queued/running/done/failed/cancelled), epoch of epochs, pid,
                     heartbeat time, message
  .lock              held (flock) by the one process training into the folder

Every write is atomic (fileio: temp file in the same folder, fsync, rename), so a crash
never leaves a half-written file. Whether the process a status names is still alive is
liveness.process_alive; what may name a run folder is run_names.
"""

from __future__ import annotations

import errno
import fcntl
import json
import math
import os
import socket
import time
from pathlib import Path
from typing import Any

from .config import RunConfig
from .errors import TrainerError
from .fileio import atomic_write_json, read_json
from .liveness import process_alive, process_start

STATES = ("queued", "running", "done", "failed", "cancelled")
HEARTBEAT_STALE_S = 120.0  # a running job silent for longer than this is reported as failed
INFORMATIONAL = ("data_shape", "versions")  # RunConfig fields a run fills in when it starts


# -- settings and metrics --------------------------------------------------------------------

def load_config(run_dir: Path) -> RunConfig:
    """config.json, every field checked; the one-line error names the file."""
    path = Path(run_dir) / "config.json"
    return _config_from(path, read_json(path, "config.json"))


def load_settings_file(path: Path) -> RunConfig:
    """A run's settings from a file in config.json's format (`fit --config FILE`; e.g. the
    config.json of another run). Its informational fields, data_shape and versions, are
    ignored: a run fills them in. Raises TrainerError naming the file."""
    path = Path(path)
    raw = read_json(path, "--config file")
    if isinstance(raw, dict):
        raw = {k: v for k, v in raw.items() if k not in INFORMATIONAL}
    return _config_from(path, raw)


def _config_from(path: Path, raw: Any) -> RunConfig:
    try:
        return RunConfig.from_dict(raw)
    except TrainerError as e:
        raise TrainerError(f"{path}: {e}") from None


# What a training process writes atomically into its run folder (fileio): a resume removes
# the temp files a killed one left of these (fileio.remove_temp_files)
TRAINING_FILES = ("config.json", "status.json", "train_state.json", "metrics.jsonl", "model.safetensors",
                  "optim.safetensors.next", "data.json", "standardize.json", "linear_path.json",
                  "latent_snapshots.safetensors")
DATA_INFO = "data.json"  # the names of the run's data (trainer.data.Dataset.names)
_DATA_INFO_LISTS = ("feature_names", "label_names", "class_names")


def read_data_info(run_dir: Path) -> dict:
    """data.json: {"name": str, "feature_names": [...], "label_name": str or None,
    "label_names": [...], "class_names": [...]}; {} for a run without it (trained before
    names were kept). Raises TrainerError for a damaged file."""
    path = Path(run_dir) / DATA_INFO
    if not path.exists():
        return {}
    info = read_json(path, DATA_INFO)
    ok = (isinstance(info, dict) and isinstance(info.get("name", ""), str)
          and (info.get("label_name") is None or isinstance(info.get("label_name"), str))
          and all(isinstance(info.get(k, []), list) and all(isinstance(v, str) for v in info.get(k, []))
                  for k in _DATA_INFO_LISTS))
    if not ok:
        raise TrainerError(f"{path}: damaged: expected name, feature_names, label_name, label_names, class_names")
    return info


def read_metrics(run_dir: Path) -> list[dict]:
    """The readable lines of metrics.jsonl (a cut-off or garbled line is skipped); [] if none."""
    path = Path(run_dir) / "metrics.jsonl"
    rows = []
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                try:
                    row = json.loads(line)
                except (ValueError, RecursionError):
                    continue
                if isinstance(row, dict):
                    rows.append(row)
    except OSError:
        return []
    return rows


# -- status --------------------------------------------------------------------------------

def write_status(run_dir: Path, state: str, durable: bool = True, **fields: Any) -> dict:
    """Merge `fields` into status.json with the new state and a fresh heartbeat. When a pid
    is given, the host and the process's start time are recorded with it, so that a reader
    can tell a dead (or reused) pid from the live trainer. durable=False: replaced atomically
    but not fsynced (progress while running: the next write supersedes it)."""
    if state not in STATES:
        raise ValueError(f"unknown run state {state!r}")
    if "pid" in fields:
        fields["host"] = socket.gethostname()
        fields["pid_start"] = process_start(fields["pid"])
    old = read_status_raw(run_dir) or {}
    status = {**old, **fields, "state": state, "heartbeat": time.time()}
    atomic_write_json(Path(run_dir) / "status.json", status, durable)
    return status


def read_status_raw(run_dir: Path) -> dict | None:
    """status.json as written, or None if there is none or it is unreadable."""
    try:
        status = json.loads((Path(run_dir) / "status.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    return status if isinstance(status, dict) else None


def read_status_dead_as_failed(run_dir: Path) -> dict | None:
    """status.json as a dict, or None if there is none or it is unreadable, with a dead
    job reported as failed (the file itself is not changed; read_status_raw reads it as is).

    A `running` status whose process is gone (dead pid on this host, a zombie, or the pid
    now belongs to another process) or whose heartbeat is older than HEARTBEAT_STALE_S is
    reported as `failed` with a message saying so: the run can be resumed or retrained."""
    status = read_status_raw(run_dir)
    if status is None or status.get("state") not in STATES:
        return None
    if status["state"] != "running":
        return status
    beat = status.get("heartbeat")
    age = time.time() - beat if isinstance(beat, (int, float)) and math.isfinite(beat) else math.inf
    pid = status.get("pid")
    same_host = status.get("host") in (None, socket.gethostname())
    if pid is not None and same_host and not process_alive(pid, status.get("pid_start")):
        why = f"the training process (pid {pid}) stopped without finishing"
    elif age > HEARTBEAT_STALE_S:
        why = f"the training process sent no heartbeat for {age:.0f} s" if age != math.inf else \
            "the training process left no heartbeat"
    else:
        return status
    return {**status, "state": "failed",
            "message": f"{why}: resume it (python -m trainer fit --resume) or retrain it"}


class RunLock:
    """An exclusive lock on a run folder, held by the one process that trains into it.

    Taken with flock on `<run>/.lock`: the operating system releases it when the process
    ends, however it ends (kill -9 included), so a crash never leaves a stale lock behind.
    A second trainer for the same folder (a second click, a second tab, a --resume while
    the run is still training) gets a TrainerError instead of writing beside the first.

        with RunLock(out, create=True):
            ...train...
    """

    def __init__(self, run_dir: Path, create: bool = False):
        self.run_dir = Path(run_dir)
        self.create = create  # make the folder if it is missing (a new run)
        self.fd: int | None = None

    def __enter__(self) -> "RunLock":
        if self.create:
            try:
                self.run_dir.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise TrainerError(f"cannot create the run folder {self.run_dir} ({e.strerror or e})") from None
        elif not self.run_dir.is_dir():
            raise TrainerError(f"{self.run_dir}: no such run folder")
        try:
            fd = os.open(self.run_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise TrainerError(f"cannot write to the run folder {self.run_dir} ({e.strerror or e})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise TrainerError(f"cannot lock the run folder {self.run_dir} ({e.strerror or e})") from None
            pid = (read_status_raw(self.run_dir) or {}).get("pid")
            who = f" (pid {pid})" if isinstance(pid, int) else ""
            raise TrainerError(f"{self.run_dir} is being trained by another process{who}: "
                               "wait for it to finish or cancel it first") from None
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor releases the flock
            self.fd = None
