"""Run folders on disk: atomic writes, status and heartbeat, validated loading.

A run folder holds
  config.json        every setting (RunConfig), the data spec, seed and package versions
  model.safetensors  the weights, nothing else (safetensors never runs code)
  optim.safetensors  Adam's state and the RNG states, for --resume
  train_state.json   epoch and step of the saved checkpoint
  metrics.jsonl      one JSON line per epoch
  status.json        state (queued/running/done/failed/cancelled), epoch of epochs, pid,
                     heartbeat time, message
  .lock              held (flock) by the one process training into the folder

Every write goes to a temp file in the same folder, is fsynced, then renamed over the
target, so a crash never leaves a half-written file. Loading checks keys, shapes, dtypes
and finiteness against the model rebuilt from config.json; nothing is ever unpickled, and
nothing is allocated before the file's header has been checked against the architecture.
"""

from __future__ import annotations

import errno
import fcntl
import json
import math
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as st_save

from .config import RunConfig
from .errors import TrainerError
from .model import VAE, build_model

STATES = ("queued", "running", "done", "failed", "cancelled")
HEARTBEAT_STALE_S = 120.0  # a running job silent for longer than this is reported as failed
MAX_JSON_BYTES = 10 * 2**20  # config.json, train_state.json, status.json are tiny; refuse huge ones


# -- atomic writes -------------------------------------------------------------------------

def atomic_write_bytes(path: Path, data: bytes, durable: bool = True) -> None:
    """Write `data` to `path` atomically: temp file in the same folder, fsync, rename.
    On any failure (disk full, read-only folder) the temp file is removed and the old file
    at `path` is untouched; the OSError propagates.

    durable=False leaves out the two fsyncs: the file is still replaced atomically (a killed
    process leaves the old or the new file, never a part), but a power cut may lose it until
    a later fsync (see sync_checkpoint)."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise OSError(e.errno, e.strerror, str(path)) from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError):  # name the file we meant to write, not the temp file
            raise OSError(e.errno, e.strerror, str(path)) from None
        raise
    if durable:
        _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    """Make the renames in `folder` durable (best effort: not every file system allows it)."""
    try:
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def atomic_write_json(path: Path, obj: Any, durable: bool = True) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, allow_nan=False) + "\n").encode(), durable)


def append_jsonl(path: Path, obj: Any) -> None:
    """Append one line and fsync. A crash can at worst cut the last line, which readers
    skip; the next append then starts on a fresh line so that it is not glued to it."""
    line = (json.dumps(obj, allow_nan=True) + "\n").encode()
    with open(path, "a+b") as f:
        if f.seek(0, os.SEEK_END) > 0:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                line = b"\n" + line
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def read_json(path: Path, what: str) -> Any:
    path = Path(path)
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_JSON_BYTES + 1)
    except FileNotFoundError:
        raise TrainerError(f"{path}: missing {what}") from None
    except OSError as e:
        raise TrainerError(f"{path}: cannot read {what} ({e.strerror or type(e).__name__})") from None
    if len(raw) > MAX_JSON_BYTES:
        raise TrainerError(f"{path}: {what} is larger than {MAX_JSON_BYTES // 2**20} MB: it is not a file this program wrote")
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise TrainerError(f"{path}: {what} is not UTF-8 text") from None
    except (ValueError, RecursionError):
        raise TrainerError(f"{path}: {what} is not valid JSON") from None


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

def write_status(run_dir: Path, state: str, **fields: Any) -> dict:
    """Merge `fields` into status.json with the new state and a fresh heartbeat. When a pid
    is given, the host and the process's start time are recorded with it, so that a reader
    can tell a dead (or reused) pid from the live trainer."""
    if state not in STATES:
        raise ValueError(f"unknown run state {state!r}")
    if "pid" in fields:
        fields["host"] = socket.gethostname()
        fields["pid_start"] = _process_start(fields["pid"])
    old = read_status_raw(run_dir) or {}
    status = {**old, **fields, "state": state, "heartbeat": time.time()}
    atomic_write_json(Path(run_dir) / "status.json", status)
    return status


def read_status_raw(run_dir: Path) -> dict | None:
    try:
        status = json.loads((Path(run_dir) / "status.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    return status if isinstance(status, dict) else None


def read_status(run_dir: Path) -> dict | None:
    """status.json as a dict, or None if there is none or it is unreadable.

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


def _proc_stat(pid: int) -> list[str] | None:
    """Fields 3.. of /proc/<pid>/stat (state first), or None where there is no /proc."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[-1].split()


def _process_start(pid: Any) -> int | None:
    """The process's start time in clock ticks since boot (Linux), to detect pid reuse."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return None
    fields = _proc_stat(pid)
    try:
        return int(fields[19]) if fields else None
    except (IndexError, ValueError):
        return None


def process_alive(pid: Any, start: Any = None) -> bool:
    """Whether `pid` is a live process (not a zombie) and, if `start` is known, the same
    process that wrote the status (not a later one that reused the pid). The one liveness
    check: explorer.services.job_slot.alive is this check for start=None, copied there only
    because a queued job must not import torch (tests/reliability/test_liveness.py
    checks that both agree)."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    except OverflowError:
        return False
    fields = _proc_stat(pid)
    if fields:
        if fields[0] == "Z":  # exited, not yet reaped by its parent
            return False
        if isinstance(start, int) and _process_start(pid) not in (None, start):
            return False
    return True


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


# -- checkpoints -----------------------------------------------------------------------------

OPTIM_NEXT = "optim.safetensors.next"  # the optimizer state of a save in progress
# torch.Generator.get_state(): a CPU generator's (Mersenne Twister) state, and a CUDA
# generator's (Philox: its seed and offset, two 64-bit integers, as ATen's CUDAGeneratorImpl
# writes them). Both are uint8 tensors on the CPU, and set_state takes them back so.
CPU_GENERATOR_STATE_BYTES = torch.Generator().get_state().numel()
CUDA_GENERATOR_STATE_BYTES = 16


def save_checkpoint(run_dir: Path, model: VAE, optimizer_state: dict[str, torch.Tensor] | None,
                    train_state: dict, durable: bool = True) -> None:
    """Write weights (and optimizer/RNG state for --resume), each file atomically.
    durable=False skips the fsyncs (see atomic_write_bytes; sync_checkpoint does them later).

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
    _fsync_dir(run_dir)


def load_config(run_dir: Path) -> RunConfig:
    """config.json, every field checked; the one-line error names the file."""
    path = Path(run_dir) / "config.json"
    raw = read_json(path, "config.json")
    try:
        return RunConfig.from_dict(raw)
    except TrainerError as e:
        raise TrainerError(f"{path}: {e}") from None


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


def check_run_dir_name(run_dir: str | Path) -> Path:
    """Refuse paths that cannot be a plain run folder (NUL/control characters, a last part
    longer than 100 characters). Run *names* chosen in the app go through
    trainer.safety.safe_run_path, which also keeps them inside the runs folder."""
    s = str(run_dir)
    if not s or any(ord(c) < 32 or 127 <= ord(c) < 160 for c in s):
        raise TrainerError("run folder name contains control characters: use letters, digits, '-' and '_'")
    if len(Path(s).name) > 100:
        raise TrainerError("run folder name is longer than 100 characters")
    return Path(s)


def finite_or_none(v: float) -> float | None:
    return v if isinstance(v, (int, float)) and math.isfinite(v) else None
