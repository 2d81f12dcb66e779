"""Fixtures for the trainer's own tests: small real training runs shared by several tests,
and the command line called in this process (the real `main`: its exit status, its stdout
and stderr).

Everything runs with one torch thread (tests/conftest.py sets it; fit gets threads=1)."""

from __future__ import annotations

import signal
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from trainer import RunConfig, fit


@pytest.fixture(autouse=True)
def _flush_denormal_off():
    """fit() turns on flush-to-zero for the whole process (train.set_threads, for speed);
    hypothesis refuses to generate floats in that mode, so switch it back after each test."""
    yield
    torch.set_flush_denormal(False)


@dataclass
class CliResult:
    status: int
    stdout: str
    stderr: str


@pytest.fixture
def cli(capsys):
    """Run `python -m trainer ARGS` in this process; restores the signal handlers that
    `fit` installs so that they do not outlive the test."""
    from trainer.__main__ import main

    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}

    def run(*args: str) -> CliResult:
        capsys.readouterr()
        try:
            status = main([str(a) for a in args])
        finally:
            for s, handler in saved.items():
                signal.signal(s, handler)
        out = capsys.readouterr()
        return CliResult(status, out.out, out.err)

    return run


def small_config(data: str, **fields) -> RunConfig:
    """A RunConfig with one thread and the given model/train fields (by name)."""
    cfg = RunConfig(data=data)
    cfg.train.threads = 1
    for name, value in fields.items():
        section = cfg.model if hasattr(cfg.model, name) else cfg.train
        assert hasattr(section, name), name
        setattr(section, name, value)
    return cfg


@pytest.fixture(scope="session")
def gmm_run(tmp_path_factory) -> Path:
    """An MLP VAE trained on gmm2d (Example 1.2) long enough to come within ~0.4 nats of the
    exact log p(x): 4,000 training points, 40 epochs (1,280 Adam steps), about 6 s."""
    out = tmp_path_factory.mktemp("runs") / "gmm2d"
    fit(small_config("gmm2d:n=5000", hidden=[64, 64], epochs=40, lr=2e-3), out)
    return out


@pytest.fixture(scope="session")
def linear_gaussian_run(tmp_path_factory) -> Path:
    """A one-epoch `linear` VAE on linear-gaussian, for the CLI's eval keys."""
    out = tmp_path_factory.mktemp("runs") / "linear-gaussian"
    fit(small_config("linear-gaussian:d=4,n=2000", arch="linear", latent_dim=4, epochs=1), out)
    return out


# -- real tables that ship with scikit-learn, written to CSV as a user would (issue 15) ------

@pytest.fixture(scope="session")
def tables(tmp_path_factory) -> dict[str, Path]:
    """scikit-learn's wine (13 columns in their own units, proline ~1000, hue ~1; label column
    `target`, numbers) and iris (4 columns; `target` as the class names), as CSV files with
    their column names in a header row."""
    from sklearn.datasets import load_iris, load_wine

    folder = tmp_path_factory.mktemp("tables")
    wine = load_wine(as_frame=True).frame
    wine.to_csv(folder / "wine.csv", index=False)
    iris = load_iris(as_frame=True)
    frame = iris.frame.copy()
    frame["target"] = [str(iris.target_names[t]) for t in iris.target]
    frame.to_csv(folder / "iris.csv", index=False)
    return {"wine": folder / "wine.csv", "iris": folder / "iris.csv"}


@pytest.fixture(scope="session")
def table_runs(tables, tmp_path_factory) -> dict[str, Path]:
    """Runs with the defaults (but 20 epochs, one thread) on wine and iris, and the degenerate
    case: wine unscaled, standardisation off, the default 50 epochs. About 3 s each."""
    folder = tmp_path_factory.mktemp("table-runs")
    runs = {}
    for name, data, epochs, standardize in (("wine", "wine", 20, True), ("iris", "iris", 20, True),
                                            ("wine-unscaled", "wine", 50, False)):
        cfg = small_config(str(tables[data]), epochs=epochs)
        cfg.standardize = standardize
        fit(cfg, folder / name)
        runs[name] = folder / name
    return runs
