"""Run folders on disk: atomic writes, status and heartbeat, validated loading.

A run folder holds
  config.json        every setting (RunConfig), the data spec, seed and package versions
  model.safetensors  the weights, nothing else (safetensors never runs code)
  optim.safetensors  Adam's state and the RNG states, for --resume
  train_state.json   epoch and step of the saved checkpoint
  metrics.jsonl      one JSON line per epoch
  status.json        state (queued/running/done/failed/cancelled), epoch of epochs, pid,
                     heartbeat time, message

Every write goes to a temp file in the same folder, is fsynced, then renamed over the
target, so a crash never leaves a half-written file. Loading checks keys, shapes, dtypes
and finiteness against the model rebuilt from config.json; nothing is ever unpickled.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .config import RunConfig
from .errors import TrainerError
from .model import VAE, build_model

STATES = ("queued", "running", "done", "failed", "cancelled")
HEARTBEAT_STALE_S = 30.0  # a running job whose heartbeat is older than this has died


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically: temp file in the same folder, fsync, rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:  # make the rename itself durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, allow_nan=False) + "\n").encode())


def append_jsonl(path: Path, obj: Any) -> None:
    """Append one line and fsync. A crash can at worst cut the last line, which readers skip."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(obj, allow_nan=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_json(path: Path, what: str) -> Any:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TrainerError(f"{path}: missing {what}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise TrainerError(f"{path}: cannot read {what} ({type(e).__name__})") from None
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        raise TrainerError(f"{path}: {what} is not valid JSON") from None


def read_metrics(run_dir: Path) -> list[dict]:
    """The readable lines of metrics.jsonl (a cut-off last line is skipped); [] if none."""
    path = Path(run_dir) / "metrics.jsonl"
    rows = []
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(row, dict):
                    rows.append(row)
    except OSError:
        return []
    return rows


# -- status --------------------------------------------------------------------------------

def write_status(run_dir: Path, state: str, **fields: Any) -> dict:
    assert state in STATES, state
    old = read_status(run_dir) or {}
    status = {**old, **fields, "state": state, "heartbeat": time.time()}
    atomic_write_json(Path(run_dir) / "status.json", status)
    return status


def read_status(run_dir: Path) -> dict | None:
    """status.json as a dict, or None if there is none or it is unreadable. A `running`
    status whose heartbeat is stale (its process died) is reported as failed."""
    try:
        status = json.loads((Path(run_dir) / "status.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(status, dict) or status.get("state") not in STATES:
        return None
    beat = status.get("heartbeat")
    if status["state"] == "running" and (not isinstance(beat, (int, float))
                                         or time.time() - beat > HEARTBEAT_STALE_S):
        if not _pid_alive(status.get("pid")):
            status = {**status, "state": "failed",
                      "message": "the training process stopped without finishing (no heartbeat): resume or retrain it"}
    return status


def _pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# -- checkpoints -----------------------------------------------------------------------------

def save_checkpoint(run_dir: Path, model: VAE, optimizer_state: dict[str, torch.Tensor] | None,
                    train_state: dict) -> None:
    """Write weights (and optimizer/RNG state for --resume), each file atomically.
    train_state.json is written last: it names the epoch the two files belong to."""
    run_dir = Path(run_dir)
    weights = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    atomic_write_bytes(run_dir / "model.safetensors", st_save(weights))
    if optimizer_state is not None:
        atomic_write_bytes(run_dir / "optim.safetensors", st_save(optimizer_state))
    atomic_write_json(run_dir / "train_state.json", train_state)


def load_config(run_dir: Path) -> RunConfig:
    return RunConfig.from_dict(read_json(Path(run_dir) / "config.json", "config.json"))


def load_safetensors(path: Path, what: str) -> dict[str, torch.Tensor]:
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise TrainerError(f"{path}: missing {what}: the run has no saved checkpoint yet") from None
    except OSError as e:
        raise TrainerError(f"{path}: cannot read {what} ({type(e).__name__})") from None
    try:
        return st_load(data)
    except (SafetensorError, ValueError, RuntimeError, OverflowError) as e:
        raise TrainerError(f"{path}: {what} is damaged or not a safetensors file ({str(e)[:80]})") from None


def load_model(run_dir: Path, cfg: RunConfig | None = None) -> VAE:
    """Rebuild the model named in config.json and load its weights, checking each tensor."""
    run_dir = Path(run_dir)
    cfg = cfg or load_config(run_dir)
    if not cfg.data_shape:
        raise TrainerError(f"{run_dir}/config.json: data_shape is missing: the run never started")
    model = build_model(cfg.model, cfg.data_shape)
    path = run_dir / "model.safetensors"
    tensors = load_safetensors(path, "model.safetensors")
    expected = model.state_dict()
    missing, extra = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or extra:
        detail = (f"missing {', '.join(missing)[:80]}" if missing else "") + \
                 ("; " if missing and extra else "") + (f"unexpected {', '.join(extra)[:80]}" if extra else "")
        raise TrainerError(f"{path}: weights do not match the architecture in config.json ({detail})")
    for k, ref in expected.items():
        t = tensors[k]
        if t.shape != ref.shape:
            raise TrainerError(f"{path}: tensor {k} has shape {list(t.shape)}, expected {list(ref.shape)}")
        if t.dtype != ref.dtype:
            raise TrainerError(f"{path}: tensor {k} has dtype {t.dtype}, expected {ref.dtype}")
        if not torch.isfinite(t).all():
            raise TrainerError(f"{path}: tensor {k} holds NaN or infinite values")
    model.load_state_dict(tensors)
    model.eval()
    return model


def check_run_dir_name(run_dir: str | Path) -> Path:
    """Refuse names that cannot be a plain folder (NUL/control characters, too long)."""
    s = str(run_dir)
    if not s or any(ord(c) < 32 or ord(c) == 127 for c in s):
        raise TrainerError("run folder name contains control characters: use letters, digits, '-' and '_'")
    if len(Path(s).name) > 100:
        raise TrainerError("run folder name is longer than 100 characters")
    return Path(s)


def finite_or_none(v: float) -> float | None:
    return v if isinstance(v, (int, float)) and math.isfinite(v) else None
