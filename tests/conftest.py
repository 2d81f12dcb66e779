"""Shared fixtures. Tests run with one torch thread: parallel test processes would
otherwise each use every core and slow each other down many times over."""

import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory) -> Path:
    """A small trained run on digits (2-D latent), shared by the tests that only read it."""
    from trainer import RunConfig, fit

    out = tmp_path_factory.mktemp("runs") / "digits-2d"
    cfg = RunConfig(data="digits")
    cfg.train.epochs, cfg.train.threads = 10, 1
    fit(cfg, out)
    return out


@pytest.fixture(scope="session")
def wine_run(tmp_path_factory) -> Path:
    """scikit-learn's wine data as a user's CSV: 13 columns under their own names and a label
    column `target` holding the class names (class_0, class_1, class_2); and a small run on
    it (the defaults but 10 epochs, one thread; 2-D latent) in a runs folder of its own. The
    CSV is the run's data spec (config.json "data")."""
    from sklearn.datasets import load_wine

    from trainer import RunConfig, fit

    wine = load_wine(as_frame=True)
    frame = wine.frame.copy()
    frame["target"] = [str(wine.target_names[t]) for t in wine.target]
    folder = tmp_path_factory.mktemp("wine")
    frame.to_csv(folder / "wine.csv", index=False)
    out = folder / "runs" / "wine-names"
    cfg = RunConfig(data=str(folder / "wine.csv"))
    cfg.train.epochs, cfg.train.threads = 10, 1
    fit(cfg, out)
    return out


def pytest_xdist_make_scheduler(config, log):
    """`make test` runs two pytest-xdist workers (-n 2): every test is a unit of work given to
    whichever worker is free, except the browser tests (tests/e2e), which are one unit run by
    one worker on the one Streamlit server, first start and Chromium they share (package
    fixtures in tests/e2e/conftest.py). Only for the default --dist load."""
    if config.getvalue("dist") != "load":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class BrowserTestsTogether(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return "tests/e2e" if nodeid.startswith("tests/e2e/") else nodeid

    return BrowserTestsTogether(config, log)
