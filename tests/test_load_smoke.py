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


@pytest.mark.slow
def test_the_server_runs_its_memory_housekeeping(app):
    """Once a page has run, the server has the thread that collects garbage and gives freed
    memory back every few seconds (explorer/services/memory.py), whatever the sessions do."""
    import asyncio
    from pathlib import Path

    async def go():
        s = load.Session(app.url, "memory")
        try:
            await s.open("latent-map")
            return s.log
        finally:
            await s.close()

    log = asyncio.run(go())
    assert log.errors == [] and log.runs_finished >= 1
    names = [p.read_text().strip() for p in Path(f"/proc/{app.proc.pid}/task").glob("*/comm")]
    assert names.count("vae-memory") == 1, names


@pytest.mark.slow
def test_a_select_slider_is_sent_as_the_browser_sends_it(app):
    """Inside the ELBO's M (a select_slider): its options as strings, moved and then sent
    again with the next rerun, as a browser does; the page takes both without an error."""
    import asyncio

    async def go():
        s = load.Session(app.url, "select-slider")
        try:
            await s.open("inside-elbo")
            m = s.find(key="reparam_m", kind="slider")
            assert m is not None and len(m.proto.options) > 1, s.log.missing
            first = s.value(m)
            assert first and all(v in m.proto.options for v in first), first
            other = [o for o in m.proto.options if o not in first][-1]
            await s.change(m, other)
            await s.rerun()  # the slider's state goes with every rerun
            return s.value(s.find(key="reparam_m", kind="slider")), other, s.log
        finally:
            await s.close()

    value, other, log = asyncio.run(go())
    assert log.errors == [], log.errors
    assert value == [other]
