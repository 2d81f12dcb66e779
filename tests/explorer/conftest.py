"""Fixtures for the explorer's tests: a runs folder holding the shared trained digits run,
scratch runs folders, and an AppTest factory that never starts a training by accident."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
APP = str(ROOT / "explorer" / "app.py")


@pytest.fixture(scope="session")
def runs_dir(digits_run) -> Path:
    """The runs folder of the shared digits-2d run (read only: tests must not change it)."""
    return digits_run.parent


@pytest.fixture
def scratch_runs(tmp_path, digits_run) -> Path:
    """A writable runs folder with a copy of the trained digits-2d run."""
    root = tmp_path / "runs"
    root.mkdir()
    shutil.copytree(digits_run, root / digits_run.name)
    return root


@pytest.fixture
def app_env(monkeypatch):
    """Environment for an AppTest: one torch thread, no first-start training unless a test
    turns it on."""
    monkeypatch.setenv("VAE_AUTOSTART", "0")
    monkeypatch.setenv("VAE_TRAIN_THREADS", "1")
    monkeypatch.setenv("VAE_APP_THREADS", "1")
    return monkeypatch


@pytest.fixture
def make_app(app_env):
    """make_app(runs_folder, **query) -> an AppTest of explorer/app.py, not yet run."""
    from streamlit.testing.v1 import AppTest

    def make(root: Path, **query) -> AppTest:
        app_env.setenv("VAE_RUNS_DIR", str(root))
        at = AppTest.from_file(APP, default_timeout=60)
        for k, v in query.items():
            at.query_params[k] = str(v)
        return at

    return make


@pytest.fixture(scope="session")
def variety_runs(tmp_path_factory) -> Path:
    """A runs folder with runs that take the views' other paths: a 4-D latent (projections),
    2-D points that are not images (gmm2d), and 8-D vectors without labels (linear-gaussian)."""
    from trainer import RunConfig, fit

    root = tmp_path_factory.mktemp("variety")
    for name, data, d in (("digits-4d", "digits", 4), ("gmm-2d", "gmm2d:n=400", 2),
                          ("lingauss-3d", "linear-gaussian:n=400", 3)):
        cfg = RunConfig(data=data)
        cfg.model.latent_dim, cfg.model.hidden = d, [64]
        cfg.train.epochs, cfg.train.threads = 2, 1
        fit(cfg, root / name)
    return root
