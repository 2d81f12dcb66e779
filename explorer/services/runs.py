"""The runs folder: list, summarise, open (cached) and delete run folders.

A run folder is a sub-folder of the runs folder holding the trainer's files (config.json,
model.safetensors, metrics.jsonl, status.json) and, when the app started it, job.json and
train.log. `uploads/` holds the user's uploaded data sets and is not a run.
"""

from __future__ import annotations

import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import streamlit as st
import torch

from trainer import Run, RunConfig, TrainerError, load_run
from trainer.likelihoods import LIKELIHOODS
from trainer.runs import read_metrics

from . import jobs

DEFAULT_RUNS_DIR = "runs"
UPLOADS = "uploads"

# The app's own torch work (encoding a test set, decoding a path) is small: one thread by
# default keeps it from competing with a training job for the cores.
torch.set_num_threads(max(1, int(os.environ.get("VAE_APP_THREADS", "1") or 1)))


def default_runs_dir() -> Path:
    """The runs folder: $VAE_RUNS_DIR, or runs/ in the current directory."""
    return Path(os.environ.get("VAE_RUNS_DIR") or DEFAULT_RUNS_DIR).expanduser().resolve()


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

    @property
    def trained(self) -> bool:
        """It has weights to explore (done, or stopped after at least one epoch)."""
        return (self.path / "model.safetensors").exists() and self.epoch > 0 and self.state not in jobs.ACTIVE


def is_run_folder(path: Path) -> bool:
    return path.is_dir() and path.name != UPLOADS and not path.name.startswith(".") and any(
        (path / f).exists() for f in ("config.json", "status.json", jobs.JOB_FILE))


def list_runs(root: Path) -> list[RunSummary]:
    """Every run in `root`, newest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    folders = [p for p in root.iterdir() if is_run_folder(p)]
    folders.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    return [summarize(p) for p in folders]


def summarize(path: Path) -> RunSummary:
    path = Path(path)
    s = RunSummary(path.name, path, "unknown")
    try:
        from trainer.runs import load_config

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
    rows = read_metrics(path)
    if js is not None:
        s.state, s.epoch, s.epochs = js.state, js.epoch, js.epochs
        s.message = js.message or s.message
    elif s.config is not None and (path / "model.safetensors").exists():
        s.state = "done"
    if s.state == "unknown" and s.message:
        s.state = "failed"
    if rows:
        last = rows[-1]
        s.epoch = max(s.epoch, int(last.get("epoch") or 0))
        s.final = {k: last.get(k) for k in ("test_elbo", "test_recon", "test_kl", "train_elbo",
                                             "sigma_dec", "active_units")}
    if not s.epochs and s.config is not None:
        s.epochs = s.config.train.epochs
    return s


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
    return {
        "run": s.name,
        "state": s.state,
        "data": c.data if c else "",
        "arch": c.model.arch if c else "",
        "latent d": c.model.latent_dim if c else None,
        "likelihood": c.model.likelihood if c else "",
        "sigma_dec": sigma,
        "beta": c.train.beta if c else None,
        "epochs": f"{s.epoch}/{s.epochs}",
        "test ELBO": fmt(ev.get("elbo", s.final.get("test_elbo"))),
        "recon": fmt(ev.get("recon", s.final.get("test_recon"))),
        "KL": fmt(ev.get("kl", s.final.get("test_kl"))),
        "log p(x)": fmt(ev.get("log_px")),
        "active units": s.final.get("active_units") if s.final.get("active_units") is not None else "",
        "message": s.message,
    }
