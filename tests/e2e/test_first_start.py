"""First start: an empty runs folder, one page opened, no click: the default training runs
with its progress and live curves, then the latent map appears by itself."""

import json

from tests.e2e.conftest import DEFAULT_RUN, FIRST_START_EPOCHS
from trainer import load_dataset


def test_first_start_trains_the_default_and_shows_the_latent_map(app, first_start):
    seen = first_start
    assert seen.runs_before == [], "the server must start on an empty runs folder"
    assert seen.clicks == 0
    assert seen.first_start_note, "the page did not explain the first start"

    # The progress bar and the live curves were shown while the default run trained (the
    # train-form test checks that they advance; here the machine may be too busy to draw
    # more than a frame or two of a short run).
    assert seen.progress, "no progress bar was shown while the default run trained"
    assert {total for _, total in seen.progress} == {FIRST_START_EPOCHS}, seen.progress
    finished = [e for e, _ in seen.progress]
    assert finished == sorted(finished), f"the epoch count went backwards: {finished}"
    assert seen.curve_points, "no live training curves were shown"
    assert all(0 < n <= FIRST_START_EPOCHS for n in seen.curve_points), seen.curve_points

    # Then the latent map, without a click: one point per test sample, drawn in a canvas.
    assert seen.map_canvas, "the latent map was not drawn in a canvas"
    cfg = json.loads((app.runs_dir / DEFAULT_RUN / "config.json").read_text())
    assert cfg["data"] == "digits" and cfg["model"]["latent_dim"] == 2
    status = json.loads((app.runs_dir / DEFAULT_RUN / "status.json").read_text())
    assert status["state"] == "done" and status["epoch"] == FIRST_START_EPOCHS
    n_test = len(load_dataset(cfg["data"], cfg["train"]["seed"]).x_test)
    assert seen.map_points == n_test, "one point per test sample"
    assert f"run={DEFAULT_RUN}" in seen.url

    # The sidebar's Active run label never said 'queued' while the bar showed finished epochs
    # (it once did, drawn once per full rerun; test_train.py checks the sidebar's live job line
    # on a run long enough to watch, which a first start of a few seconds on a fast machine is not).
    stale = [(r["epoch"], r["sidebar_label"]) for r in seen.rows
             if (r["epoch"] or 0) >= 1 and "queued" in (r["sidebar_label"] or "")]
    assert not stale, f"the Active run label said queued while the bar showed epochs: {stale[:5]}"
