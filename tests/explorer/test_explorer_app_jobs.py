"""The app's training jobs, run by Streamlit's AppTest with real trainer processes: the
first start, the Train form, Retrain, and Cancel. The script never waits for a job."""

from __future__ import annotations

import json
import time

import pytest

from explorer.services import jobs
from explorer.services.runs import list_runs
from explorer_helpers import assert_clean

pytestmark = pytest.mark.slow


def test_first_start_trains_in_the_background_and_cancel_stops_it(make_app, app_env, tmp_path):
    root = tmp_path / "runs"
    app_env.setenv("VAE_AUTOSTART", "1")
    app_env.setenv("VAE_DEFAULT_EPOCHS", "500")  # far longer than the test: it must not wait for it
    at = make_app(root)
    t0 = time.monotonic()
    at.run(timeout=30)
    assert time.monotonic() - t0 < 30
    run_dir = root / "digits-2d"
    try:
        assert_clean(at)
        assert any("First start" in i.value for i in at.info)
        assert at.get("progress"), "a progress bar while the job runs"
        pid = jobs.read_job(run_dir)["pid"]
        assert jobs.pid_alive(pid)
        assert jobs.job_state(run_dir).state in ("queued", "running")
        # a second session (another tab) does not start a second job
        other = make_app(root).run()
        assert not other.exception
        assert jobs.read_job(run_dir)["pid"] == pid
        assert [r.name for r in list_runs(root)] == ["digits-2d"]

        at.button(key="cancel_training").click().run(timeout=60)
        assert not jobs.pid_alive(pid)
        assert jobs.job_state(run_dir).state == "cancelled"
        assert json.loads((run_dir / "status.json").read_text())["state"] == "cancelled"
    finally:
        jobs.cancel(run_dir)


def test_train_form_starts_one_job_and_a_second_click_does_not_duplicate(make_app, tmp_path):
    root = tmp_path / "runs"
    at = make_app(root, view="train").run()
    at.selectbox(key="train_data").set_value("gmm2d")
    at.text_input(key="train_data_options").input("n=400")
    at.number_input(key="train_epochs").set_value(5000)  # about a minute: still training when cancelled
    at.text_input(key="train_name").input("mixture")
    at.button(key="train_submit").click().run(timeout=30)
    run_dir = root / "mixture"
    try:
        assert_clean(at)
        job = jobs.read_job(run_dir)
        assert job["config"]["data"] == "gmm2d:n=400" and job["config"]["train"]["epochs"] == 5000
        assert at.query_params["run"] == "mixture"
        # the same settings again (a double click, or another tab): refused, no second folder
        at.text_input(key="train_name").input("")
        at.button(key="train_submit").click().run(timeout=30)
        assert any("already training" in i.value for i in at.info)
        assert [r.name for r in list_runs(root)] == ["mixture"]
        # cancel from the page
        at.button(key="cancel_training").click().run(timeout=60)
        assert jobs.job_state(run_dir).state == "cancelled"
        assert not jobs.pid_alive(job["pid"])
    finally:
        jobs.cancel(run_dir)


def test_retrain_starts_a_new_run_with_the_same_settings(make_app, scratch_runs):
    at = make_app(scratch_runs, view="train", run="digits-2d").run()
    at.button(key="retrain").click().run(timeout=30)
    new = scratch_runs / "digits-2d-retrain"
    try:
        assert_clean(at)
        job = jobs.read_job(new)
        old = json.loads((scratch_runs / "digits-2d" / "config.json").read_text())
        assert job["config"]["model"] == old["model"] and job["config"]["train"]["seed"] == old["train"]["seed"]
        assert at.query_params["run"] == "digits-2d-retrain"
        at.radio(key="retrain_seed").set_value("new seed")
        at.button(key="retrain").click().run(timeout=30)  # the active run is now the retrain
        newer = [p for p in scratch_runs.iterdir() if "seed" in p.name]
        assert len(newer) == 1 and jobs.read_job(newer[0])["config"]["train"]["seed"] == old["train"]["seed"] + 1
    finally:
        for p in scratch_runs.iterdir():
            jobs.cancel(p)
