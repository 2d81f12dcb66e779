"""The Runs page and its services (issue 15, items 6 and 7): log p(x) estimated once per
checkpoint and kept in the run folder, a seed column, the table's selection that follows the
active run, Compare's default of one data set, and the one-line messages for a runs folder
that does not exist, a run that is not there and a job that is starting, not queued."""

from __future__ import annotations

import json
import math
import os
import shutil
import time

import pytest
import torch

from explorer.services import jobs, reliability
from explorer.services import runs as run_service
from trainer import TrainerError
from tests.explorer.explorer_helpers import assert_clean


@pytest.fixture
def count_estimates(monkeypatch):
    """Counts the calls of trainer.evaluate_run the runs service makes (each one estimates
    log p(x) of one run; the real function runs)."""
    calls = []
    real = run_service.evaluate_run

    def counted(run, *args, **kwargs):
        calls.append(run.path if hasattr(run, "path") else run)
        return real(run, *args, **kwargs)

    monkeypatch.setattr(run_service, "evaluate_run", counted)
    return calls


def test_log_px_is_estimated_once_per_checkpoint(scratch_runs, count_estimates):
    from trainer import evaluate_run, load_run

    path = scratch_runs / "digits-2d"
    first = run_service.evaluation(path, k=20)
    assert len(count_estimates) == 1
    saved = json.loads((path / run_service.EVALUATION_FILE).read_text())
    st_ = os.stat(path / "model.safetensors")
    assert saved["checkpoint"] == {"bytes": st_.st_size, "mtime_ns": st_.st_mtime_ns} and saved["k"] == 20
    # the same numbers as the trainer's own evaluation (same seed, same K)
    ref = evaluate_run(load_run(path), "test", k=20)
    assert first["log_px"] == pytest.approx(ref["log_px"], abs=1e-9) and first["elbo"] == pytest.approx(ref["elbo"])

    assert run_service.evaluation(path, k=20) == first  # read back: no second estimate
    assert run_service.stored_evaluation(path, k=20) == first
    assert len(count_estimates) == 1
    assert run_service.stored_evaluation(path, k=50) is None  # another K is another estimate

    # a new checkpoint (the run trained further: a new file) is estimated again
    later = time.time_ns() + 10**9
    os.utime(path / "model.safetensors", ns=(later, later))
    assert run_service.stored_evaluation(path, k=20) is None
    run_service.evaluation(path, k=20)
    assert len(count_estimates) == 2


def test_non_finite_figures_are_kept_as_none_and_shown_unreliable(scratch_runs, monkeypatch):
    path = scratch_runs / "digits-2d"
    real = run_service.evaluate_run

    def overflowing(run, *a, **kw):  # the real evaluation, with log p(x) that overflowed
        return {**real(run, *a, **kw), "log_px": float("-inf"), "gap": float("nan")}

    monkeypatch.setattr(run_service, "evaluate_run", overflowing)
    ev = run_service.evaluation(path, k=5)
    assert ev["log_px"] is None and ev["gap"] is None and math.isfinite(ev["elbo"])
    row = run_service.table_row(run_service.summarize(path), run_service.stored_evaluation(path, k=5))
    assert row["log p(x)"].startswith("unreliable: log p(x) is not finite"), row


def test_reliability_rule():
    ok = {"elbo": -30.0, "recon": -25.0, "kl": 5.0, "log_px": -28.0}
    assert reliability.reliability(ok) is None
    assert "not finite" in reliability.reliability({**ok, "log_px": float("nan")})
    assert "not finite" in reliability.reliability({**ok, "kl": None})
    # a negative gap within 3 standard errors is noise; beyond them it is a failure
    noisy = {**ok, "log_px": -30.5, "log_px_se": 0.3, "elbo_se": 0.1}
    assert reliability.reliability(noisy) is None
    why = reliability.reliability({**noisy, "log_px": -31.5})
    assert why and "below the ELBO" in why and "3 standard errors" in why
    assert "no noise estimate" in reliability.reliability({**ok, "log_px": -30.01})
    assert reliability.reliability({**ok, "log_px": -31.0, "gap_se": 0.5}) is None


def test_runs_folder_problem(tmp_path):
    assert run_service.runs_folder_problem(tmp_path) is None
    missing = run_service.runs_folder_problem(tmp_path / "nope")
    assert "does not exist" in missing and str(tmp_path / "nope") in missing and "\n" not in missing
    (tmp_path / "file").write_text("x")
    assert "not a folder" in run_service.runs_folder_problem(tmp_path / "file")


def _queued_job(root, name, started, slot=None):
    """A run folder whose job waits in job_slot (job.json: this live process, not yet a slot)."""
    d = root / name
    d.mkdir()
    job = {"pid": os.getpid(), "config": {}, "command": [], "started": started}
    if slot is not None:
        job["slot"] = slot
    (d / jobs.JOB_FILE).write_text(json.dumps(job))
    (d / "status.json").write_text(json.dumps({"state": "running" if slot is not None else "queued",
                                               "pid": os.getpid(), "heartbeat": time.time()}))
    return d


def test_a_first_job_is_starting_not_queued(tmp_path, monkeypatch):
    monkeypatch.setenv("VAE_MAX_JOBS", "1")
    first = _queued_job(tmp_path, "first", started=1.0)
    assert jobs.queue_position(first) == (1, 1)  # job_slot has not taken the free slot yet
    assert run_service.waiting_for_slot(first) is None  # ... so it is starting, not queued
    # with another job holding the only slot it does wait
    _queued_job(tmp_path, "busy", started=0.5, slot=0)
    assert run_service.waiting_for_slot(first) == (1, 1)
    monkeypatch.setenv("VAE_MAX_JOBS", "2")
    assert run_service.waiting_for_slot(first) is None
    second = _queued_job(tmp_path, "second", started=2.0)
    assert run_service.waiting_for_slot(second) == (2, 2)


# -- the page (AppTest) ------------------------------------------------------------------------

def _copies(root, digits_run, n):
    for i in range(n):
        shutil.copytree(digits_run, root / f"run-{i:02d}", ignore=shutil.ignore_patterns(".lock", "log_px.json"))


def test_runs_page_estimates_once_then_opens_without_estimating(tmp_path, digits_run, make_app, count_estimates):
    """20 runs: the first visit estimates each once; a new session (a fresh server's caches
    too) estimates none, reads them from the run folders and shows the same numbers."""
    root = tmp_path / "runs"
    root.mkdir()
    _copies(root, digits_run, 20)
    at = make_app(root, view="runs")
    at.run(timeout=300)
    assert_clean(at)
    assert len(count_estimates) == 20
    assert all((root / f"run-{i:02d}" / run_service.EVALUATION_FILE).exists() for i in range(20))
    shown = {r["run"]: r["log p(x)"] for r in at.dataframe[0].value.to_dict("records")}
    assert all(math.isfinite(float(v)) for v in shown.values()), shown

    run_service._open_run.clear()  # as after a restart: nothing in memory
    at2 = make_app(root, view="runs")
    at2.run(timeout=60)
    assert_clean(at2)
    assert len(count_estimates) == 20, "the second visit estimated log p(x) again"
    rows = at2.dataframe[0].value.to_dict("records")
    assert {r["run"]: r["log p(x)"] for r in rows} == shown
    assert {r["seed"] for r in rows} == {json.loads((digits_run / "config.json").read_text())["train"]["seed"]}


def test_selection_follows_the_active_run_and_compare_stays_on_one_data_set(tmp_path, digits_run, variety_runs,
                                                                          make_app):
    root = tmp_path / "runs"
    root.mkdir()
    for name in ("a", "b", "c"):
        shutil.copytree(digits_run, root / name)
    shutil.copytree(variety_runs / "gmm-2d", root / "gmm")
    now = time.time()
    for i, name in enumerate(("gmm", "c", "b", "a")):  # newest first: a, b, c, gmm
        os.utime(root / name, (now + i, now + i))
    at = make_app(root, view="runs", run="b")
    at.run(timeout=300)
    assert_clean(at)
    names = [r["run"] for r in at.dataframe[0].value.to_dict("records")]
    assert names == ["a", "b", "c", "gmm"]
    assert ticked(at) == [1]  # b
    compared = at.multiselect(key="compare_runs_b")
    assert compared.value == ["b", "a", "c"], "the active run and the others on digits, not gmm"
    assert not at.warning
    compared.set_value(["b", "gmm"]).run()
    assert any("different data" in w.value for w in at.warning), [w.value for w in at.warning]

    # delete a (above b): the selected row moves with b, it does not stay on row 1
    at.selectbox(key="delete_name").set_value("a").run()
    at.button(key="delete_run").click().run()
    at.button(key="confirm_delete").click().run()
    assert not (root / "a").exists()
    assert [r["run"] for r in at.dataframe[0].value.to_dict("records")] == ["b", "c", "gmm"]
    assert ticked(at) == [0]
    # delete the active run: the sidebar's new active run is the selected row
    at.selectbox(key="delete_name").set_value("b").run()
    at.button(key="delete_run").click().run()
    at.button(key="confirm_delete").click().run()
    rows = [r["run"] for r in at.dataframe[0].value.to_dict("records")]
    active = at.session_state["active_run"]
    assert active in rows and ticked(at) == [rows.index(active)]


def ticked(at) -> list[int]:
    """The Runs table's ticked rows, as the page drew them."""
    element = at.dataframe[0]  # the Runs table (the comparison's table comes after it)
    return json.loads(element.proto.selection_default)["selection"]["rows"] if element.proto.selection_default \
        else None


def test_missing_run_and_runs_folder_are_said(tmp_path, digits_run, make_app):
    root = tmp_path / "runs"
    root.mkdir()
    shutil.copytree(digits_run, root / "digits-2d")
    at = make_app(root, view="latent-map", run="no-such-run")
    at.run(timeout=120)
    assert not at.exception
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and "no run named 'no-such-run'" in errors[0] and "choose a run" in errors[0], errors
    assert at.session_state["active_run"] is None, "another run was shown in its place"
    assert not at.get("plotly_chart")

    at = make_app(tmp_path / "default-runs-not-made-yet", view="latent-map")  # a first launch: no error
    at.run(timeout=120)
    assert not at.exception and not at.error

    at = make_app(root, view="latent-map")
    at.session_state["runs_dir"] = str(tmp_path / "typo")  # typed in the sidebar
    at.run(timeout=120)
    assert not at.exception
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and "does not exist" in errors[0], errors
    assert not any("no trained run yet" in i.value for i in at.info)
    torch.set_num_threads(1)


def test_an_oversized_bundle_is_refused_before_anything_is_written(tmp_path):
    root = tmp_path / "runs"
    with pytest.raises(TrainerError, match="more than the limit of 1 MB"):
        run_service.import_bundle(root, "big.zip", b"PK" + bytes(2 * 2**20), max_bytes=2**20)
    assert not root.exists()
