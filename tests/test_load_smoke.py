"""The load harness (bench/load.py, issue 17) end to end, small: a real Streamlit server on
loopback with a trained digits run, 3 simulated students over Streamlit's websocket protocol
for 20 seconds, one of them pressing Train. It fails on any error any session saw (an
exception element, an error alert, a rerun that never finished). Speed is not asserted here:
`python -m bench --sections load` reports it."""

import math

import pytest

from bench import load
from tests.e2e import harness


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    runs = tmp_path_factory.mktemp("load") / "runs"
    load.train_digits(runs, epochs=5)
    app = load.start_server(runs, runs.parent / "server.log", env={"VAE_TRAIN_THREADS": "1", "VAE_APP_THREADS": "1"})
    yield app
    harness.stop_app(app)


@pytest.mark.slow
def test_three_students_for_twenty_seconds_see_no_error(app):
    res = load.measure(app, sessions=3, seconds=20, think_s=1.0, trainers=1, train_epochs=3)
    assert res["errors"] == [], res["errors"]
    # Every page was visited and rerun, and each rerun's latency is a real duration.
    for page in load.PAGES:
        stats = res["pages"].get(page)
        assert stats and stats["reruns"] >= 2, (page, res["pages"], res["missing_widgets"])
        assert 0 < stats["p50_s"] <= stats["p95_s"] < load.RERUN_TIMEOUT_S
    # The press of Train started a job (the run folder and its job record exist).
    assert [t["outcome"] for t in res["trains"]] == ["started"], res["trains"]
    assert (app.runs_dir / res["trains"][0]["name"] / "job.json").exists()
    # The server did the work (its CPU, per finished script run), and the harness was cheap beside it.
    assert res["runs_finished"] >= res["reruns"] > 0
    assert math.isfinite(res["cpu_s_per_rerun"]) and res["cpu_s_per_rerun"] > 0
    assert res["rss_bytes"] > 0


@pytest.mark.slow
def test_a_widget_that_is_not_there_is_logged_not_fatal(app):
    """Widget discovery is tolerant: looking for a widget the page does not draw is logged."""
    import asyncio

    async def go():
        s = load.Session(app.url, "probe")
        try:
            await s.open("latent-map")
            found = s.find(key="color_by", kind="selectbox")
            absent = s.find(key="no_such_widget", kind="slider", label="no such label")
            return found, absent, s.log
        finally:
            await s.close()

    found, absent, log = asyncio.run(go())
    assert found is not None and found.kind == "selectbox" and len(found.proto.options) > 1
    assert absent is None and any("no_such_widget" in m for m in log.missing)
    assert log.errors == []
