"""The runs folder: list, summarise, open (cached) and delete run folders.

A run folder is a sub-folder of the runs folder holding the trainer's files (config.json,
model.safetensors, metrics.jsonl, status.json) and, when the app started it, job.json and
train.log. `uploads/` holds the user's uploaded data sets and is not a run.

The Runs table's log p(x) is estimated once per checkpoint and kept in the run folder:

    log_px.json   {"checkpoint": {"bytes", "mtime_ns"}, "k": K, "evaluation": {...}}

`evaluation(path)` returns it while the checkpoint is the same file (same size, same
modification time), and estimates it again (trainer.evaluate_run) once the run trained
further; `stored_evaluation(path)` only reads it, so the Runs page opens without estimating.
"""

from __future__ import annotations

import math
import os
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import streamlit as st
import torch

from trainer import Run, RunConfig, TrainerError, evaluate_run, load_run
from trainer.fileio import atomic_write_json
from trainer.likelihoods import LIKELIHOODS
from trainer.runs import load_config, read_data_info, read_metrics

from . import jobs
from .explore import EVAL_K
from .run_folders import DEFAULT_RUNS_DIR, UPLOADS, default_runs_dir, is_run_folder  # noqa: F401 (torch-free)

EVALUATION_FILE = "log_px.json"  # the Runs table's evaluation, kept per checkpoint

# The app's own torch work (encoding a test set, decoding a path) is small: one thread by
# default keeps it from competing with a training job for the cores.
torch.set_num_threads(max(1, int(os.environ.get("VAE_APP_THREADS", "1") or 1)))


@dataclass
class RunSummary:
    """One row of the Runs table. Numbers are the last epoch's test-set means, per sample, nats."""

    name: str
    path: Path
    state: str  # queued | running | done | failed | cancelled | unknown
    message: str = ""
    config: RunConfig | None = None
    epoch: int = 0
    epochs: int = 0
    final: dict = field(default_factory=dict)  # test_elbo, test_recon, test_kl, sigma_dec, active_units
    data_name: str = ""  # the data set's name to show (data.json: a file's own name, not its path)

    @property
    def trained(self) -> bool:
        """It has weights to explore (done, or stopped after at least one epoch)."""
        return (self.path / "model.safetensors").exists() and self.epoch > 0 and self.state not in jobs.ACTIVE


def runs_folder_problem(root: Path) -> str | None:
    """Why `root` cannot be the runs folder (one line saying what to do), or None if it can."""
    root = Path(root)
    if root.is_dir():
        return None
    if root.exists():
        return f"The runs folder {root} is a file, not a folder: type the folder of your runs in the sidebar."
    return (f"The runs folder {root} does not exist: check its spelling in the sidebar (Runs folder), "
            "or train a run on the Train page to create it.")


def list_runs(root: Path) -> list[RunSummary]:
    """Every run in `root`, newest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    folders = [p for p in root.iterdir() if is_run_folder(p)]
    folders.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    return [summary(p) for p in folders]


# -- summaries shared by the sessions ---------------------------------------------------------
# The sidebar lists every run on each full rerun of every page: reading each folder's config,
# job record, status and whole metrics.jsonl (2-3 ms a run) for every session. A summary is
# kept, shared by all sessions, while the files it was read from are the same ones (inode,
# size, modification time: an atomic write is a new file, an appended row a new size); that of
# a queued or running job is read again after jobs.STATE_MAX_AGE_S (a process can die without
# writing). The summaries are shared: callers only read them.
SUMMARY_FILES = ("config.json", jobs.JOB_FILE, "status.json", "metrics.jsonl", "model.safetensors", "data.json")
_summaries: dict[str, tuple[tuple, float, RunSummary]] = {}
_summaries_lock = threading.Lock()


def _files_signature(path: Path) -> tuple:
    sig = []
    for name in SUMMARY_FILES:
        try:
            st_ = os.stat(path / name)
            sig.append((st_.st_ino, st_.st_size, st_.st_mtime_ns))
        except OSError:
            sig.append(None)
    return tuple(sig)


def summary(path: Path) -> RunSummary:
    """summarize(path), shared by the sessions while the run's files are unchanged (see above)."""
    path = Path(path)
    key, sig, now = str(path.resolve()), _files_signature(path), time.monotonic()
    with _summaries_lock:
        kept = _summaries.get(key)
    if kept is not None and kept[0] == sig and (kept[2].state not in jobs.ACTIVE
                                                or now - kept[1] < jobs.STATE_MAX_AGE_S):
        return kept[2]
    value = summarize(path)
    with _summaries_lock:
        if len(_summaries) > 10_000:  # folders since deleted: drop them all, they are cheap to refill
            _summaries.clear()
        _summaries[key] = (sig, now, value)
    return value


def summarize(path: Path) -> RunSummary:
    path = Path(path)
    s = RunSummary(path.name, path, "unknown")
    try:
        s.config = load_config(path)
    except TrainerError as e:
        job = jobs.read_job(path)
        if job and isinstance(job.get("config"), dict):
            try:
                s.config = RunConfig.from_dict(job["config"])
            except TrainerError:
                pass
        if s.config is None and (path / "config.json").exists():
            s.message = str(e)
    js = jobs.job_state(path)
    # The last row alone, from the file's end: a running job appends one every epoch, and the
    # sidebar summarises it again on each full rerun of every session (issue 17: 30 ms at 3000
    # epochs); the whole file only when its end holds no readable row.
    last = jobs.last_metrics_row(path)
    if last is None:
        rows = read_metrics(path)
        last = rows[-1] if rows else None
    if js is not None:
        s.state, s.epoch, s.epochs = js.state, js.epoch, js.epochs
        s.message = js.message or s.message
    elif s.config is not None and (path / "model.safetensors").exists():
        s.state = "done"
    if s.state == "unknown" and s.message:
        s.state = "failed"
    if last is not None:
        s.epoch = max(s.epoch, int(last.get("epoch") or 0))
        s.final = {k: last.get(k) for k in ("test_elbo", "test_recon", "test_kl", "train_elbo",
                                             "sigma_dec", "active_units")}
    if not s.epochs and s.config is not None:
        s.epochs = s.config.train.epochs
    s.data_name = data_name(path, s.config)
    return s


def data_name(path: Path, config: RunConfig | None) -> str:
    """The name the run's data is shown by: data.json's (the file's own name), else the spec
    with a path cut to its last part (runs trained before names were kept)."""
    try:
        name = read_data_info(path).get("name", "")
    except TrainerError:
        name = ""
    if name or config is None:
        return name
    spec, _, options = config.data.partition(":")
    return Path(spec).name + (f":{options}" if options else "")


def checkpoint_mtime(path: Path) -> float:
    """What identifies a model's weights on disk: the checkpoint's modification time (ns)."""
    try:
        return float(os.stat(Path(path) / "model.safetensors").st_mtime_ns)
    except OSError:
        return 0.0


@st.cache_resource(max_entries=8, show_spinner=False)
def _open_run(path: str, mtime: float) -> Run:
    return load_run(path)


def open_run(path: Path) -> Run:
    """The run's model, loaded once per (run folder, checkpoint time); raises TrainerError."""
    return _open_run(str(Path(path).resolve()), checkpoint_mtime(path))


# -- the Runs table's evaluation, kept in the run folder -------------------------------------

def checkpoint_key(path: Path) -> dict | None:
    """What identifies the run's weights on disk: model.safetensors' size and modification
    time (ns); None when there is no checkpoint."""
    try:
        st_ = os.stat(Path(path) / "model.safetensors")
    except OSError:
        return None
    return {"bytes": st_.st_size, "mtime_ns": st_.st_mtime_ns}


def stored_evaluation(path: Path, k: int = EVAL_K) -> dict | None:
    """The evaluation kept in the run folder for its current checkpoint and this K, or None
    (none yet, an older checkpoint's, another K, or an unreadable file)."""
    import json

    key = checkpoint_key(path)
    try:
        saved = json.loads((Path(path) / EVALUATION_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if key is None or not isinstance(saved, dict) or saved.get("checkpoint") != key or saved.get("k") != k \
            or not isinstance(saved.get("evaluation"), dict):
        return None
    return saved["evaluation"]


def _finite_or_none(v):
    """JSON keeps no NaN: a non-finite number is kept as None (shown as unreliable)."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, list):
        return [_finite_or_none(x) for x in v]
    return v


def evaluation(path: Path, k: int = EVAL_K) -> dict:
    """trainer.evaluate_run on the test split (per-sample means, nats; log_px with K = k
    importance samples), estimated once per checkpoint and kept in the run folder
    (EVALUATION_FILE, written atomically); a non-finite figure is kept as None. A run folder
    that cannot be written to is estimated again next time. Raises TrainerError."""
    saved = stored_evaluation(path, k)
    if saved is not None:
        return saved
    key = checkpoint_key(path)
    ev = {name: _finite_or_none(v) for name, v in evaluate_run(open_run(path), "test", k=k).items()}
    if key is not None and checkpoint_key(path) == key:  # the checkpoint did not change meanwhile
        folder = os.stat(path)
        try:
            atomic_write_json(Path(path) / EVALUATION_FILE, {"checkpoint": key, "k": k, "evaluation": ev})
            # the runs are listed newest first by their folder's time: keeping an estimate in
            # the folder must not move the run up the list
            os.utime(path, ns=(folder.st_atime_ns, folder.st_mtime_ns))
        except (OSError, TypeError, ValueError):
            pass
    return ev


def waiting_for_slot(run_dir: Path) -> tuple[int, int] | None:
    """(position, length) of the run in the training queue when its job really waits: other
    jobs hold every slot, or others are ahead of it. None when it is not queued or is only
    starting (first in line with a free slot: the job takes it within a moment)."""
    run_dir = Path(run_dir)
    waiting = jobs.queue_position(run_dir)
    if waiting is None:
        return None
    if waiting[0] > 1:
        return waiting
    holding = 0  # jobs of this runs folder that hold a training slot now
    for d in run_dir.parent.iterdir():
        job = jobs.read_job(d) if d.is_dir() and d != run_dir else None
        if job and "slot" in job:
            js = jobs.job_state(d)
            holding += js is not None and js.active
    return waiting if holding >= jobs.max_concurrent_jobs() else None


# -- a whole run as one zip (trainer.bundle) -----------------------------------------------

def export_bundle(run_dir: Path) -> bytes:
    """The run folder as one zip (trainer.bundle.export_run), as bytes. Raises TrainerError."""
    import tempfile

    from trainer.bundle import export_run

    with tempfile.TemporaryDirectory(prefix="vae-export-") as tmp:
        out = Path(tmp) / f"{Path(run_dir).name}.zip"
        export_run(Path(run_dir), out)
        return out.read_bytes()


def import_bundle(root: Path, filename: str, data: bytes, max_bytes: int) -> str:
    """A zip made by export_bundle, uploaded: checked and unpacked into the runs folder as a
    new run (trainer.bundle.import_bundle, which refuses a bad bundle and writes nothing).
    Returns the new run's name; raises TrainerError with one line."""
    import tempfile

    from trainer.bundle import import_bundle as unpack

    if len(data) > max_bytes:
        raise TrainerError(f"{filename}: the bundle is {len(data) / 2**20:.0f} MB, more than the limit of "
                           f"{max_bytes / 2**20:.0f} MB")
    Path(root).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="vae-import-") as tmp:
        path = Path(tmp) / "bundle.zip"
        path.write_bytes(data)
        return Path(unpack(path, Path(root))).name


def delete_run(root: Path, name: str) -> None:
    """Delete run `name` from `root`; refuses while it trains or if it is not a run folder."""
    root = Path(root).resolve()
    path = (root / jobs.check_name(name)).resolve()
    if path.parent != root or not is_run_folder(path):
        raise TrainerError(f"{name} is not a run in {root}")
    js = jobs.job_state(path)
    if js is not None and js.active:
        raise TrainerError(f"{name} is training: cancel it before deleting it")
    shutil.rmtree(path)
    _open_run.clear()


def fmt(v, digits: int = 2) -> str:
    """A number for a table: rounded, or '' when missing or not finite."""
    if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
        return f"{v:.{digits}f}"
    return ""


def log_px_text(ev: dict) -> str:
    """The Runs table's log p(x): the number, or 'unreliable: why' (see reliability)."""
    from .reliability import reliability

    why = reliability(ev)
    return f"unreliable: {why}" if why else fmt(ev.get("log_px"))


def table_row(s: RunSummary, evaluation: dict | None = None) -> dict:
    """One row of the Runs table (numbers per sample, nats; '' where unknown)."""
    c = s.config
    sigma = ""
    if c is not None:
        if not LIKELIHOODS[c.model.likelihood].has_sigma_dec:
            sigma = f"({c.model.likelihood})"
        elif c.model.sigma_dec == "learned":
            sigma = "learned " + fmt(s.final.get("sigma_dec"), 3) if s.final.get("sigma_dec") is not None else "learned"
        else:
            sigma = f"{float(c.model.sigma_dec):g}"
    ev = evaluation or {}
    return {  # the results first, so that they are in view without scrolling; then the settings
        "run": s.name,
        "state": s.state,
        "data": s.data_name,
        "test ELBO": fmt(ev.get("elbo", s.final.get("test_elbo"))),
        "recon": fmt(ev.get("recon", s.final.get("test_recon"))),
        "KL": fmt(ev.get("kl", s.final.get("test_kl"))),
        "log p(x)": log_px_text(ev) if evaluation is not None else "",
        "active units": s.final.get("active_units") if s.final.get("active_units") is not None else "",
        "epochs": f"{s.epoch}/{s.epochs}",
        "latent d": c.model.latent_dim if c else None,
        "arch": c.model.arch if c else "",
        "likelihood": c.model.likelihood if c else "",
        "sigma_dec": sigma,
        "beta": c.train.beta if c else None,
        "seed": c.train.seed if c else None,
        "message": s.message,
    }
