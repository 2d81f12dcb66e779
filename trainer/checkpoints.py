"""Checkpoints in a run folder: weights, optimizer and generator state, written and loaded safely.

    model.safetensors  the weights, nothing else (safetensors never runs code)
    optim.safetensors  Adam's state and the RNG states, for --resume
    train_state.json   epoch and step of the saved checkpoint

save_checkpoint writes each file atomically (fileio), in an order that leaves a resumable
checkpoint whatever interrupts it; sync_checkpoint makes a fast (not fsynced) save
durable. Loading checks keys, shapes, dtypes and finiteness against the model rebuilt
from config.json; nothing is ever unpickled, and nothing is allocated before the file's
header has been checked against the architecture.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as st_save

from . import preprocess
from .config import RunConfig
from .errors import TrainerError
from .fileio import atomic_write_bytes, atomic_write_json, fsync_dir, read_json
from .model import VAE, build_model
from .runs import load_config

OPTIM_NEXT = "optim.safetensors.next"  # the optimizer state of a save in progress
# torch.Generator.get_state(): a CPU generator's (Mersenne Twister) state, and a CUDA
# generator's (Philox: its seed and offset, two 64-bit integers, as ATen's CUDAGeneratorImpl
# writes them). Both are uint8 tensors on the CPU, and set_state takes them back so.
CPU_GENERATOR_STATE_BYTES = torch.Generator().get_state().numel()
CUDA_GENERATOR_STATE_BYTES = 16


def save_checkpoint(run_dir: Path, model: VAE, optimizer_state: dict[str, torch.Tensor] | None,
                    train_state: dict, durable: bool = True) -> None:
    """Write weights (and optimizer/RNG state for --resume), each file atomically.
    durable=False skips the fsyncs (see fileio.atomic_write_bytes; sync_checkpoint does them later).

    Non-finite weights are never written: the previous (good) checkpoint stays and
    NonFiniteLoss is raised. Both safetensors files carry the epoch and step they belong to
    in their metadata. The order makes an interruption at any point (kill -9, disk full)
    leave a resumable checkpoint:
      1. the optimizer state goes to optim.safetensors.next   (old checkpoint untouched)
      2. the weights replace model.safetensors                 (the new epoch is saved)
      3. optim.safetensors.next replaces optim.safetensors
      4. train_state.json
    load_optim_state picks whichever optimizer file matches the weights' epoch."""
    from .train import NonFiniteLoss

    run_dir = Path(run_dir)
    weights = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    bad = [k for k, v in weights.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise NonFiniteLoss(f"the weights became NaN or infinite ({', '.join(bad)[:80]}) at epoch "
                            f"{train_state.get('epoch')}: lower the learning rate; the last good checkpoint is kept")
    # one key: safetensors writes metadata keys in no fixed order, and the same run must give the same bytes
    meta = {"train_state": json.dumps({"epoch": train_state.get("epoch"), "step": train_state.get("step")})}
    if optimizer_state is not None:
        atomic_write_bytes(run_dir / OPTIM_NEXT, st_save(optimizer_state, metadata=meta), durable)
    atomic_write_bytes(run_dir / "model.safetensors", st_save(weights, metadata=meta), durable)
    if optimizer_state is not None:
        os.replace(run_dir / OPTIM_NEXT, run_dir / "optim.safetensors")
    atomic_write_json(run_dir / "train_state.json", train_state, durable)


def sync_checkpoint(run_dir: Path) -> None:
    """fsync the checkpoint files and the folder: makes a save_checkpoint(durable=False)
    survive a power cut. Files that are not there are skipped."""
    run_dir = Path(run_dir)
    for name in ("optim.safetensors", "model.safetensors", "train_state.json"):
        try:
            fd = os.open(run_dir / name, os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    fsync_dir(run_dir)


_DTYPE_NAMES = {torch.float32: "F32", torch.float64: "F64", torch.float16: "F16", torch.bfloat16: "BF16",
                torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
                torch.uint8: "U8", torch.bool: "BOOL"}


def _dtype_name(dtype: torch.dtype) -> str:
    return _DTYPE_NAMES.get(dtype, str(dtype))


def load_safetensors(path: Path, what: str,
                     expected: dict[str, tuple[tuple[int, ...] | list[tuple[int, ...]], torch.dtype]] | None = None,
                     allow_missing: bool = False) -> dict[str, torch.Tensor]:
    """Read a safetensors file without ever running code from it.

    With `expected` ({name: (shape, dtype)}, or (a list of accepted shapes, dtype)), the
    header is checked first: the same keys (or a subset, with `allow_missing`), shapes and
    dtypes; only then are tensors read, so a damaged or hostile file cannot make us allocate
    more than the architecture needs. Every tensor read is checked to be finite. Raises
    TrainerError with a one-line message."""
    path = Path(path)
    if not path.exists():
        raise TrainerError(f"{path}: missing {what}: the run has no saved checkpoint yet")
    try:
        with safe_open(str(path), framework="pt") as f:
            keys = set(f.keys())
            if expected is not None:
                missing = sorted(set(expected) - keys) if not allow_missing else []
                extra = sorted(keys - set(expected))
                if missing or extra:
                    detail = "; ".join(p for p in (
                        f"missing {', '.join(missing)[:80]}" if missing else "",
                        f"unexpected {', '.join(extra)[:80]}" if extra else "") if p)
                    raise TrainerError(f"{path}: {what} does not match the architecture in config.json ({detail})")
                for k in sorted(keys):
                    sl = f.get_slice(k)
                    shape, dtype = list(sl.get_shape()), sl.get_dtype()
                    want_shape, want_dtype = expected[k]
                    accepted = [list(w) for w in want_shape] if isinstance(want_shape, list) else [list(want_shape)]
                    if shape not in accepted:
                        want = " or ".join(str(w) for w in accepted)
                        raise TrainerError(f"{path}: tensor {k} has shape {shape}, expected {want}")
                    if dtype != _dtype_name(want_dtype):
                        raise TrainerError(f"{path}: tensor {k} has dtype {dtype}, expected {_dtype_name(want_dtype)}")
            tensors = {k: f.get_tensor(k).clone() for k in sorted(keys)}
    except TrainerError:
        raise
    except FileNotFoundError:
        raise TrainerError(f"{path}: missing {what}: the run has no saved checkpoint yet") from None
    except (SafetensorError, OSError, ValueError, RuntimeError, OverflowError, MemoryError, TypeError) as e:
        raise TrainerError(f"{path}: {what} is damaged or not a safetensors file ({str(e)[:80]})") from None
    for k, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise TrainerError(f"{path}: tensor {k} holds NaN or infinite values")
    return tensors


def safetensors_metadata(path: Path) -> dict[str, str]:
    """The metadata dict of a safetensors file ({} if none or unreadable)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception:  # noqa: BLE001 - a damaged file has no usable metadata; loading reports it
        return {}


def _skeleton(cfg: RunConfig) -> VAE:
    """The architecture of `cfg` on the meta device: names, shapes and dtypes, no memory."""
    if not cfg.data_shape:
        raise TrainerError("data_shape is missing: the run never started")
    try:
        with torch.device("meta"):
            return build_model(cfg.model, cfg.data_shape)
    except TrainerError:
        raise
    except (ValueError, RuntimeError, OverflowError, TypeError) as e:
        raise TrainerError(f"the model cannot be built for data of shape {cfg.data_shape} ({str(e)[:80]})") from None


def load_model(run_dir: Path, cfg: RunConfig | None = None) -> VAE:
    """Rebuild the model named in config.json and load its weights, checking each tensor."""
    run_dir = Path(run_dir)
    cfg = cfg or load_config(run_dir)
    try:
        skeleton = _skeleton(cfg)
    except TrainerError as e:
        raise TrainerError(f"{run_dir / 'config.json'}: {e}") from None
    expected = {k: (tuple(v.shape), v.dtype) for k, v in skeleton.state_dict().items()}
    tensors = load_safetensors(run_dir / "model.safetensors", "model.safetensors", expected)
    model = build_model(cfg.model, cfg.data_shape)  # safe now: the file holds this many weights
    model.load_state_dict(tensors)
    model.set_standardizer(preprocess.load(run_dir, model.data_dim))  # standardize.json, if the run has one
    model.eval()
    return model


def load_optim_state(run_dir: Path, model: VAE) -> dict[str, torch.Tensor]:
    """The optimizer state for --resume, checked against `model`: Adam's moments per
    parameter (adam.<i>.exp_avg / exp_avg_sq of the parameter's shape, adam.<i>.step a
    scalar) and the two generator states (rng.shuffle, rng.eps). It is read from
    optim.safetensors, or from optim.safetensors.next when a save was interrupted after
    the weights were written (see save_checkpoint). Raises TrainerError."""
    run_dir = Path(run_dir)
    path = _matching_optim_file(run_dir)
    expected: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
    for i, p in enumerate(model.parameters()):
        expected[f"adam.{i}.exp_avg"] = (tuple(p.shape), torch.float32)
        expected[f"adam.{i}.exp_avg_sq"] = (tuple(p.shape), torch.float32)
        expected[f"adam.{i}.step"] = ((), torch.float32)
    expected["rng.shuffle"] = ((CPU_GENERATOR_STATE_BYTES,), torch.uint8)
    # the noise generator is on the training device: either state may have been saved
    expected["rng.eps"] = ([(CPU_GENERATOR_STATE_BYTES,), (CUDA_GENERATOR_STATE_BYTES,)], torch.uint8)
    tensors = load_safetensors(path, "optim.safetensors", expected, allow_missing=True)
    if "rng.shuffle" not in tensors or "rng.eps" not in tensors:
        raise TrainerError(f"{path}: optim.safetensors lacks the random generator states: retrain instead of resuming")
    for i in {k.split(".")[1] for k in tensors if k.startswith("adam.")}:
        if not all(f"adam.{i}.{n}" in tensors for n in ("exp_avg", "exp_avg_sq", "step")):
            raise TrainerError(f"{path}: optim.safetensors has an incomplete state for parameter {i}: retrain instead of resuming")
    return tensors


def _saved_at(path: Path) -> tuple[int, int] | None:
    """(epoch, step) recorded in a checkpoint file's metadata, or None."""
    try:
        ts = json.loads(safetensors_metadata(path)["train_state"])
        epoch, step = ts["epoch"], ts["step"]
    except (KeyError, TypeError, ValueError, RecursionError):
        return None
    return (epoch, step) if _is_count(epoch) and _is_count(step) else None


def _matching_optim_file(run_dir: Path) -> Path:
    """The optimizer file saved with the weights now in model.safetensors."""
    current, pending = run_dir / "optim.safetensors", run_dir / OPTIM_NEXT
    weights_at = _saved_at(run_dir / "model.safetensors")
    if weights_at is None:  # a checkpoint written before epochs were recorded in the files
        return current
    for path in (current, pending):
        if path.exists() and _saved_at(path) == weights_at:
            return path
    if not current.exists() or _saved_at(current) is None:
        return current  # missing or damaged: load_safetensors says which
    raise TrainerError(f"{run_dir}: the optimizer state does not belong to the saved weights "
                       f"(epoch {weights_at[0]}): retrain, or explore the saved weights as they are")


def read_train_state(run_dir: Path) -> dict:
    """The epoch and step of the saved checkpoint. The epoch recorded inside
    model.safetensors is the truth (train_state.json is written after it, so a crash in
    between leaves it one epoch behind); train_state.json is used for older checkpoints."""
    run_dir = Path(run_dir)
    ts = read_json(run_dir / "train_state.json", "train_state.json")
    if not (isinstance(ts, dict) and _is_count(ts.get("epoch")) and _is_count(ts.get("step"))):
        raise TrainerError(f"{run_dir}/train_state.json is damaged: retrain instead of resuming")
    weights_at = _saved_at(run_dir / "model.safetensors")
    if weights_at is None:
        return {"epoch": ts["epoch"], "step": ts["step"]}
    return {"epoch": weights_at[0], "step": weights_at[1]}


def _is_count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0
