"""The first start: with an empty runs folder, the default training starts once per session.

app.py calls start() before it imports the pages and their services (torch, plotly, the
trainer: 1.5-3 s of the first script run), so this module and what it imports are torch-free
(streamlit, explorer.state, explorer.services.jobs and run_folders, trainer.config): the
training process's own start-up, its torch import included, then runs while the server does
those imports, rather than after them (issue 18: the first start's latent map within 10 s).
"""

from __future__ import annotations

import os
from pathlib import Path

import streamlit as st

from explorer import state
from explorer.services import jobs, run_folders
from trainer import RunConfig, TrainerError

DEFAULT_RUN = "digits-2d"


def runs_root() -> Path:
    """The runs folder chosen in the sidebar ($VAE_RUNS_DIR or runs/ by default)."""
    value = st.session_state.get("runs_dir") or str(run_folders.default_runs_dir())
    return Path(value).expanduser().resolve()


def autostart_enabled() -> bool:
    return os.environ.get("VAE_AUTOSTART", "1").strip().lower() not in ("0", "false", "no", "off")


def default_config() -> RunConfig:
    """The first start's run: digits, 2-D latent, Gaussian p(x|z) with a learned sigma_dec."""
    cfg = RunConfig(data="digits")
    cfg.train.epochs = int(os.environ.get("VAE_DEFAULT_EPOCHS", "100"))
    return cfg


def start() -> None:
    """With an empty runs folder, start the default training once per session."""
    if st.session_state.get("_first_start_done"):
        return
    st.session_state["_first_start_done"] = True
    root = runs_root()
    if run_folders.has_runs(root) or not autostart_enabled():
        return
    try:
        jobs.start(root, DEFAULT_RUN, default_config(), jobs.train_threads())
    except jobs.JobBusy:
        pass  # another tab started it a moment ago
    except (TrainerError, OSError) as e:
        st.error(f"Could not start the first training in {root}: {e}")
        return
    state.set("run", DEFAULT_RUN)
    st.session_state["_first_start_run"] = DEFAULT_RUN
