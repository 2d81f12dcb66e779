"""Two people on one server at the same time (issue 17): one session's selection, endpoints,
position t and error messages never appear in the other's. Two simulated browser sessions
(bench/load.py: Streamlit's websocket protocol, a real server on loopback, a trained digits
run) act in lockstep, each step of both sent at once, and after every step each must show
exactly its own state: the URL state the app writes back (?sample=&a=&b=&t=, explorer/state.py),
the values its widgets are drawn with, and only its own error messages."""

from __future__ import annotations

import asyncio
from urllib.parse import parse_qs

import pytest

from bench import load
from tests.e2e import harness

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    runs = tmp_path_factory.mktemp("isolation") / "runs"
    load.train_digits(runs, epochs=5)
    app = load.start_server(runs, runs.parent / "server.log", env={"VAE_TRAIN_THREADS": "1", "VAE_APP_THREADS": "1"})
    yield app
    harness.stop_app(app)


def url_state(s: load.Session) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(s.query_string).items()}


def drawn_value(s: load.Session, key: str):
    """The value widget `key` shows in this session after its last run (as the server set it,
    or as this browser last sent it)."""
    w = s.find(key=key)
    assert w is not None, f"{s.log.name}: no widget {key} on {s.page} ({sorted(x.key for x in s.widgets.values())})"
    v = s.value(w)
    return v[0] if w.kind == "slider" else v


async def both(*steps):
    """Send one step of each session at the same time and wait for both."""
    return await asyncio.gather(*steps)


async def scenario(url: str) -> tuple[load.Session, load.Session]:
    a, b = load.Session(url, "alice"), load.Session(url, "bob")
    try:
        await both(a.open("latent-map"), b.open("latent-map"))
        # Each clicks another point of the latent map: the selected sample.
        await both(a.change(a.find(key="latent_map_chart"), {"selected": {"index": 17, "click": 1}}),
                   b.change(b.find(key="latent_map_chart"), {"selected": {"index": 55, "click": 1}}))
        assert url_state(a)["sample"] == "17" and url_state(b)["sample"] == "55"
        assert drawn_value(a, "sample_index") == 17 and drawn_value(b, "sample_index") == 55

        # Interpolate: different endpoints and positions t, at the same time.
        await both(a.rerun(page="interpolate"), b.rerun(page="interpolate"))
        await both(a.change(a.find(key="endpoint_a"), 3), b.change(b.find(key="endpoint_a"), 100))
        await both(a.change(a.find(key="endpoint_b"), 40), b.change(b.find(key="endpoint_b"), 7))
        # t released on the in-page slider (the component's state; a drag itself sends nothing)
        await both(a.change(a.find(key="interp_component"), {"t": 0.2}),
                   b.change(b.find(key="interp_component"), {"t": 0.9}))
        for s, want in ((a, {"a": "3", "b": "40", "t": "0.20", "sample": "17"}),
                        (b, {"a": "100", "b": "7", "t": "0.90", "sample": "55"})):
            got = url_state(s)
            assert {k: got.get(k) for k in want} == want, (s.log.name, got)
        # Away and back: the page's widgets are drawn anew from each session's kept state (the
        # browsers forgot them with the page), so what they show now is what the server holds.
        await both(a.rerun(page="latent-map"), b.rerun(page="latent-map"))
        await both(a.rerun(page="interpolate"), b.rerun(page="interpolate"))
        for s in (a, b):
            for key in ("endpoint_a", "endpoint_b"):
                assert s.find(key=key).proto.set_value, (s.log.name, key, "not drawn from the server's state")
        assert [drawn_value(a, k) for k in ("endpoint_a", "endpoint_b")] == [3, 40]
        assert [drawn_value(b, k) for k in ("endpoint_a", "endpoint_b")] == [100, 7]
        assert url_state(a)["t"] == "0.20" and url_state(b)["t"] == "0.90"  # each one's own t, kept by the server

        # Bob makes a mistake on the Train page while Alice reads the ELBO page of her sample.
        await both(a.rerun(page="elbo"), b.rerun(page="train"))
        hidden = b.find(key="train_hidden")
        assert hidden is not None
        b.set(hidden, "lots")
        await both(a.rerun(), b.press(b.find(key="train_submit")))
        return a, b
    finally:
        await asyncio.gather(a.close(), b.close())


def test_two_sessions_at_once_never_see_each_others_state(app):
    a, b = asyncio.run(scenario(app.url))
    bob_errors = [e for e in b.log.errors if "hidden sizes must be integers" in e]
    assert len(bob_errors) == 1 and bob_errors == b.log.errors, b.log.errors  # his message, once, only to him
    assert a.log.errors == [], a.log.errors
    assert not any("hidden sizes" in text for _, _, text in a.log.alerts)
    assert url_state(a)["sample"] == "17" and drawn_value(a, "elbo_sample_index") == 17
    assert not list(app.runs_dir.glob("*/job.json")), "a refused setting started no job"
