"""The same damaged run folders seen through the app (Streamlit's AppTest running
explorer/app.py): every view says what is wrong in one line, never shows a traceback, and
the other run in the same runs folder still opens. A job killed with kill -9 is shown as
failed, and the app resumes it from its last checkpoint."""

from __future__ import annotations

import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from explorer.services import jobs
from trainer import RunConfig, load_run
from trainer.runs import read_metrics, read_status_raw

from .conftest import ROOT, MakesMarker
from .test_checkpoints import CONFIGS, DAMAGES, _edit_config

VIEWS = ["latent-map", "interpolate", "elbo", "inside-elbo", "generate"]
APP_CASES = {
    "truncated": DAMAGES["truncated"],
    "wrong-shape": DAMAGES["wrong-shape"],
    "nan-weight": DAMAGES["nan-weight"],
    "missing-key": DAMAGES["missing-key"],
}
CONFIG_CASES = ["not-json", "python-path-arch", "latent-as-string"]


@pytest.fixture
def app(monkeypatch):
    from streamlit.testing.v1 import AppTest

    def make(root: Path, **query) -> AppTest:
        monkeypatch.setenv("VAE_RUNS_DIR", str(root))
        monkeypatch.setenv("VAE_AUTOSTART", "0")
        monkeypatch.setenv("VAE_APP_THREADS", "1")
        monkeypatch.setenv("VAE_TRAIN_THREADS", "1")
        at = AppTest.from_file(str(ROOT / "explorer" / "app.py"), default_timeout=120)
        for k, v in query.items():
            at.query_params[k] = v
        return at

    return make


def _one_line_error(at, *fragments: str) -> str:
    assert not at.exception, [e.value for e in at.exception]
    errors = [e.value for e in at.error]
    assert len(errors) == 1, errors
    assert "\n" not in errors[0] and "Traceback" not in errors[0], errors[0]
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])
    return errors[0]


def _wait_done(run_dir: Path, timeout_s: float = 300) -> None:
    """Wait for the run's job to end, and check that it ended done."""
    deadline = time.monotonic() + timeout_s
    while jobs.job_state(run_dir).state in jobs.ACTIVE and time.monotonic() < deadline:
        time.sleep(0.2)
    assert jobs.job_state(run_dir).state == "done", jobs.job_state(run_dir)


def _opens_cleanly(at) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    in_page_maps = [e for e in at.get("bidi_component") if e.proto.component_name == "vae_latent_map"]
    assert at.get("plotly_chart") or in_page_maps, "the view shows its chart (or the latent map its map)"


@pytest.mark.parametrize("case", list(APP_CASES))
def test_damaged_weights_in_the_app(case, runs_dir, app):
    damage, expected = APP_CASES[case]
    damage(runs_dir / "bad")
    for view in VIEWS:
        _one_line_error(app(runs_dir, run="bad", view=view).run(), "Cannot open bad", expected)
    _opens_cleanly(app(runs_dir, run="good", view="latent-map").run())


@pytest.mark.parametrize("case", CONFIG_CASES)
def test_bad_config_in_the_app(case, runs_dir, app):
    change, expected = CONFIGS[case]
    if callable(change):
        _edit_config(runs_dir / "bad", change)
    else:
        (runs_dir / "bad" / "config.json").write_text(change)
    _one_line_error(app(runs_dir, run="bad", view="latent-map").run(), expected)
    runs_page = app(runs_dir, view="runs").run()
    assert not runs_page.exception
    _opens_cleanly(app(runs_dir, run="good", view="latent-map").run())


def test_pickle_as_weights_in_the_app_never_runs(runs_dir, app, tmp_path):
    marker = tmp_path / "MARKER"
    (runs_dir / "bad" / "model.safetensors").write_bytes(pickle.dumps(MakesMarker(marker)))
    for view in VIEWS:
        _one_line_error(app(runs_dir, run="bad", view=view).run(), "not a safetensors file")
    assert not marker.exists()
    _opens_cleanly(app(runs_dir, run="good", view="latent-map").run())


def test_cut_off_metrics_in_the_app(runs_dir, app):
    path = runs_dir / "bad" / "metrics.jsonl"
    text = path.read_text()
    path.write_text(text[: len(text) - 20])  # the last line loses its end
    at = app(runs_dir, run="bad", view="runs").run()
    assert not at.exception and not at.error
    _opens_cleanly(app(runs_dir, run="bad", view="latent-map").run())


@pytest.mark.slow
def test_a_killed_job_shows_failed_and_the_app_resumes_it(tmp_path, app):
    root = tmp_path / "runs"
    cfg = RunConfig(data="digits:test=0.75")
    # 60 small epochs (tens of ms each): the kill after the second lands well before the end
    cfg.model.hidden, cfg.train.epochs, cfg.train.batch_size = [16], 60, 4
    run_dir = jobs.start(root, "killed", cfg, threads=1)
    try:
        deadline = time.monotonic() + 240
        while len(read_metrics(run_dir)) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(read_metrics(run_dir)) >= 2
        pid = jobs.read_job(run_dir)["pid"]
        jobs._signal_group(pid, signal.SIGKILL)
        while jobs.pid_alive(pid):
            time.sleep(0.05)
        saved = len(load_run(run_dir).metrics)
        assert saved < 60, "the job was killed part-way"

        at = app(root, view="train")
        at.session_state["_last_job"] = "killed"
        at.run()
        error = _one_line_error(at, "Training killed failed", "stopped without finishing")
        assert "resume" in error
        assert at.button(key="resume_run").label == "Resume killed from its last saved epoch"
        at.button(key="resume_run").click().run()
        assert not at.exception
        _wait_done(run_dir)
        rows = read_metrics(run_dir)
        assert [r["epoch"] for r in rows] == list(range(1, 61)), "resumed after the saved epochs, none twice"
        assert len(rows) > saved and load_run(run_dir).metrics == rows
    finally:
        jobs.cancel(run_dir, wait_s=5)


@pytest.mark.slow
def test_a_job_killed_after_its_last_epoch_was_saved_is_finished_by_resume(tmp_path, app):
    """Killed between its last checkpoint and its final status: the page says failed and
    offers Finish (its message says resume it), which trains no epoch and marks the run done;
    also in a new session that has the run active."""
    run_dir = tmp_path / "runs" / "last"
    script = ("import os, signal, sys\n"
              "from trainer import RunConfig, fit\n"
              "cfg = RunConfig(data='digits:test=0.75')\n"
              "cfg.model.hidden, cfg.train.epochs, cfg.train.threads = [16], 3, 1\n"
              "kill = lambda row: row['epoch'] == 3 and os.kill(os.getpid(), signal.SIGKILL)\n"
              "fit(cfg, sys.argv[1], on_epoch=kill)\n")
    done = subprocess.run([sys.executable, "-c", script, str(run_dir)], cwd=ROOT, timeout=240)
    assert done.returncode == -signal.SIGKILL
    assert read_status_raw(run_dir)["state"] == "running", "killed before its final status"
    rows = read_metrics(run_dir)
    assert [r["epoch"] for r in rows] == [1, 2, 3]

    # a new session (the browser was closed) with the run active: the same panel, from the URL
    fresh = app(run_dir.parent, view="train", run="last").run()
    assert "resume" in _one_line_error(fresh, "Training last failed", "stopped without finishing")
    assert fresh.button(key="resume_run").label == "Finish last: all 3 epochs are saved"

    at = app(run_dir.parent, view="train")
    at.session_state["_last_job"] = "last"
    at.run()
    assert "resume" in _one_line_error(at, "Training last failed", "stopped without finishing")
    assert at.button(key="resume_run").label == "Finish last: all 3 epochs are saved"
    assert not [n for n in at.number_input if n.key == "resume_lr"], "no epoch left to set a rate for"
    at.button(key="resume_run").click().run()
    assert not at.exception
    try:
        _wait_done(run_dir)
        assert read_metrics(run_dir) == rows, "no epoch trained twice, none lost"
    finally:
        jobs.cancel(run_dir, wait_s=5)


def test_a_diverged_run_is_resumed_from_the_app_at_a_lower_learning_rate(runs_dir, app):
    """A run failed on a non-finite loss: the Train page offers a tenth of its learning rate
    for the rest of the run, and Resume trains on from the last good epoch at the rate chosen."""
    from trainer import fit
    from trainer.train import NonFiniteLoss

    out = runs_dir / "bad"
    cfg = load_run(out).config
    cfg.train.epochs = 4
    with pytest.raises(NonFiniteLoss):
        fit(cfg, out, resume=True, lr=1e39)  # overflows the weights at the first step
    at = app(runs_dir, view="train")
    at.session_state["_last_job"] = "bad"
    at.run()
    assert not at.exception
    lr_input = at.number_input(key="resume_lr")
    # a tenth of the rate that diverged, within the input's range (1e-7 to 1); the bounded
    # log-variance keeps rates up to 100 finite on this run, so only an absurd one diverges
    assert lr_input.value == pytest.approx(min(1e39 / 10, 1.0))
    lr_input.set_value(3e-4)
    at.button(key="resume_run").click().run()
    assert not at.exception
    try:
        _wait_done(out)
        run = load_run(out)
        assert run.config.train.lr == 3e-4 and [r["epoch"] for r in run.metrics] == [1, 2, 3, 4]
    finally:
        jobs.cancel(out, wait_s=5)
