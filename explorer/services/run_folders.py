"""Where the runs are, and which sub-folders are runs: without torch, so that the app's first
start (explorer/views/first_start.py) can look before its pages import torch and the trainer.
explorer/services/runs.py re-exports these names."""

from __future__ import annotations

import os
from pathlib import Path

from .jobs import JOB_FILE

DEFAULT_RUNS_DIR = "runs"
UPLOADS = "uploads"  # the user's uploaded data sets: not a run


def default_runs_dir() -> Path:
    """The runs folder: $VAE_RUNS_DIR, or runs/ in the current directory."""
    return Path(os.environ.get("VAE_RUNS_DIR") or DEFAULT_RUNS_DIR).expanduser().resolve()


def is_run_folder(path: Path) -> bool:
    return path.is_dir() and path.name != UPLOADS and not path.name.startswith(".") and any(
        (path / f).exists() for f in ("config.json", "status.json", JOB_FILE))


def has_runs(root: Path) -> bool:
    """Whether `root` holds at least one run folder (list_runs(root) is not empty)."""
    root = Path(root)
    return root.is_dir() and any(is_run_folder(p) for p in root.iterdir())
