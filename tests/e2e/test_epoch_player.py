"""The latent map's epoch player: the trainer's snapshots of the test codes
(trainer/snapshots.py) replayed in the page, and while a run trains, the map of its newest
snapshot, which grows as training goes on (on the Latent map page and the Train page)."""

import re
import time

import numpy as np

from explorer.services import jobs
from tests.e2e import harness
from tests.e2e.conftest import open_view
from trainer import RunConfig, snapshots


def world_of(canvas, points: dict, i: int) -> list[float]:
    """Where the map draws test sample i, in its own coordinates (z1, z2 for d = 2)."""
    box = canvas.bounding_box()
    return canvas.evaluate("(c, p) => c.latentMap.toWorld(p[0], p[1])",
                           [points[i][0] - box["x"], points[i][1] - box["y"]])


def test_the_epoch_player_replays_the_snapshots(page, app, trained_run):
    epochs, mu = snapshots.read(trained_run.path)
    assert epochs[0] == 0 and len(epochs) >= 10
    open_view(page, app, "latent-map", "Latent map", run=trained_run.name)
    chart = harness.keyed(page, "latent_map_chart")
    canvas = harness.in_page_map(chart)
    canvas.scroll_into_view_if_needed()
    slider = page.get_by_role("slider", name="epoch")
    label = chart.locator(".vlm-epoch-label")
    assert slider.is_visible() and slider.get_attribute("max") == str(len(epochs))
    assert "this checkpoint" in label.inner_text()
    final = harness.sample_points(chart)
    i = harness.isolated_point(final)

    slider.focus()
    slider.press("Home")  # the keyboard: to the first snapshot, before training
    assert label.inner_text().startswith("epoch 0 ")
    at_start = harness.sample_points(chart)
    assert np.allclose(world_of(canvas, at_start, i), mu[0, i], atol=1e-3), "not where the snapshot had it"
    slider.press("ArrowRight")
    assert label.inner_text().startswith(f"epoch {epochs[1]} ")
    assert np.allclose(world_of(canvas, harness.sample_points(chart), i), mu[1, i], atol=1e-3)

    page.get_by_role("button", name="play epochs").click()  # plays from here to the end, in the page
    page.wait_for_function("() => document.querySelector('.vlm-epoch').value >= 4")
    assert harness.sample_points(chart) != at_start, "the map did not change while playing"
    page.get_by_role("button", name="pause epochs").click()
    paused = slider.input_value()
    time.sleep(0.6)
    assert slider.input_value() == paused, "pause did not stop the player"
    slider.press("End")
    assert "this checkpoint" in label.inner_text()
    assert harness.sample_points(chart) == final
    harness.screenshot(page, "latent-map-epoch-player")
    harness.assert_no_traceback(page)


def test_while_a_run_trains_the_map_of_its_newest_snapshot_grows(page, app, trained_run):
    cfg = RunConfig(data="digits")
    cfg.model.hidden = [32]
    cfg.train.epochs, cfg.train.threads = 2000, 1
    run_dir = jobs.start(app.runs_dir, "digits-live-map", cfg, threads=1)
    try:
        open_view(page, app, "latent-map", "Latent map", run=run_dir.name)
        live = harness.keyed(page, "latent_map_live")
        canvas = harness.in_page_map(live)
        label = live.locator(".vlm-epoch-label")

        def newest() -> int:
            m = re.match(r"epoch (\d+) \(newest snapshot", label.inner_text())
            assert m, label.inner_text()
            return int(m.group(1))
        def frames() -> int:
            return int(page.get_by_role("slider", name="epoch").get_attribute("max"))
        first, n_frames = newest(), frames()
        # the label follows each epoch's checkpoint; a new snapshot comes every few epochs
        # (trainer.snapshots.every_for: 34 of the 2000), so wait for both
        deadline = time.monotonic() + 90
        while (newest() <= first or frames() <= n_frames) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert newest() > first, "the live map did not follow the training"
        assert frames() > n_frames, "no new snapshot reached the live map"
        assert len(harness.sample_points(live)) > 100
        assert canvas.evaluate("c => c.latentMap.view.live") is True
        assert harness.keyed(page, "latent_map_chart").count() == 0  # not the trained run's map
        harness.assert_no_traceback(page)

        open_view(page, app, "train", "Train", run=run_dir.name)  # and on the Train page, under the job
        train_live = harness.keyed(page, "latent_map_live")
        harness.in_page_map(train_live)
        assert "newest snapshot" in train_live.locator(".vlm-epoch-label").inner_text()
        harness.assert_no_traceback(page)
    finally:
        harness.stop_training(run_dir)
