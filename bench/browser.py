"""Section 6: in the browser. A real `streamlit run explorer/app.py` (headless, loopback, the
app's own thread settings) and Debian's Chromium driven by Playwright, as the e2e tests do
(their helpers in tests/e2e/harness.py are reused).

- cold start: from launching the server on an empty runs folder to the first latent map
  drawn (a WebGL canvas), without a click; this includes the app's first-start training
  (digits, 2-D latent, the app's default epochs), which is also timed on its own;
- a page opened on the trained run: from navigation to the latent map drawn;
- the Interpolate page (explorer/components/interpolation draws t, the decoded image and
  z(t) on a small map in the page, from the path's decoded steps sent once):
  - drag step to new pixels: a real mouse drag of the t slider; for every `input` event that
    changes the frame, from the event's timeStamp to the next requestAnimationFrame (the
    frame that paints it), performance.now() in the page, p50/p95;
  - messages to the server during the drag: websocket frames the page sent between the mouse
    down and the release (target 0);
  - slider release to the page's numbers: a click on the slider's track (down and up: the
    release), from `pointerup` to the "At t = ..." heading of the released t drawn, one
    server round trip: the path every move took to a new image before this component;
  - bytes the server sent to the page when it was opened (websocket frames received) and
    when a release reran it (the path's message is not sent again), and the page open time
    (navigation to the component drawn).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from .common import Context, percentile
from .small import ROOT

# Installed in the page: for each input event on the t slider, the milliseconds from the
# event to the next animation frame, if it changed the frame drawn; and the release (pointerup)
# time, for the round trip to the "At t = ..." heading.
_RECORDER = """() => {
  if (window.__bench) return;
  const b = window.__bench = {steps: [], up: 0, lastFrame: null};
  const slider = document.querySelector('.vae-interp input[type=range]');
  const image = document.querySelector('.vae-interp canvas');
  slider.addEventListener('input', e => {
    const start = e.timeStamp;  // performance.now() time base
    requestAnimationFrame(() => {
      const frame = image.dataset.frame;
      if (frame !== b.lastFrame) b.steps.push(performance.now() - start);
      b.lastFrame = frame;
    });
  }, true);
  document.addEventListener('pointerup', () => { b.up = performance.now(); }, true);
}"""

_HEADING_SINCE_UP = """([text]) => new Promise(resolve => {
  const check = () => {
    const h = Array.from(document.querySelectorAll('h3')).find(e => e.textContent.trim() === text);
    if (h) resolve(performance.now() - window.__bench.up); else requestAnimationFrame(check);
  };
  check();
})"""


def slider_targets(moves: int, start: float = 0.5, min_jump: float = 0.15) -> list[float]:
    """Where to release the slider: positions in (0.05, 0.95) spread by the golden ratio, each
    at least `min_jump` from the one before, so that every move shows a different image."""
    out, prev, i = [], start, 0
    while len(out) < moves:
        t = 0.05 + 0.9 * ((i * 0.618034) % 1.0)
        i += 1
        if abs(t - prev) >= min_jump:
            out.append(t)
            prev = t
    return out


def _say(message: str) -> None:
    print(f"bench: section 6: {message}", file=sys.stderr, flush=True)


def _start_server(runs_dir: Path, log: Path, default_epochs: int, root: Path = ROOT):
    """The app as `make run` starts it (its own thread defaults), on a free loopback port,
    from the tree at `root` (another commit's, for --before: bench/before_after.py)."""
    from tests.e2e import harness

    runs_dir.mkdir(parents=True, exist_ok=True)
    port = harness.free_port()
    env = {**os.environ, "VAE_RUNS_DIR": str(runs_dir), "VAE_DEFAULT_EPOCHS": str(default_epochs),
           "PYTHONUNBUFFERED": "1"}
    env.pop("VAE_AUTOSTART", None)
    cmd = [sys.executable, "-m", "streamlit", "run", "explorer/app.py", "--server.headless", "true",
           "--server.port", str(port), "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    return harness.App(f"http://127.0.0.1:{port}", port, runs_dir, log, proc)


def _wait_health(app, timeout_s: float = 120) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if app.proc.poll() is not None:
            raise RuntimeError(f"streamlit exited with status {app.proc.returncode}: {app.log_tail(10)}")
        try:
            with urllib.request.urlopen(f"{app.url}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError("streamlit did not answer /_stcore/health in time")


def _wait_map(page, timeout_s: float) -> None:
    from tests.e2e import harness

    chart = harness.keyed(page, "latent_map_chart")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if chart.count() and chart.locator("canvas").count():
            return
        time.sleep(0.02)
    raise RuntimeError(f"the latent map was not drawn within {timeout_s:.0f} s")


def section_6(ctx: Context) -> None:
    s = ctx.sizes
    if not (ROOT / "explorer" / "views" / "interpolate.py").exists():
        ctx.row("6", "browser", None, "ms", note="explorer/ has no Interpolate page yet")
        ctx.sections["6_browser"] = {"skipped": "no explorer/views/interpolate.py"}
        return
    chromium = os.environ.get("VAE_CHROMIUM", "/usr/bin/chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    if sync_playwright is None or not Path(chromium).exists():
        ctx.row("6", "browser", None, "ms", note="needs the playwright package and Debian's chromium (make test installs both)")
        ctx.sections["6_browser"] = {"skipped": "playwright or chromium missing"}
        return
    from tests.e2e import harness

    epochs = 2 if ctx.quick else int(os.environ.get("VAE_DEFAULT_EPOCHS", "100"))
    runs_dir = ctx.workdir / "app-runs"
    shutil.rmtree(runs_dir, ignore_errors=True)
    log = ctx.workdir / "streamlit.log"
    result: dict = {"default_epochs": epochs}
    t0 = time.perf_counter()
    app = _start_server(runs_dir, log, epochs)
    try:
        _wait_health(app)
        result["server_up_s"] = time.perf_counter() - t0
        with sync_playwright() as p:
            browser = harness.launch_browser(p)
            try:
                context = browser.new_context(viewport={"width": 1400, "height": 1000})
                context.set_default_timeout(120_000)
                page = context.new_page()
                page.goto(app.url)
                _say(f"server up in {result['server_up_s']:.1f} s; waiting for the first start's latent map")
                _wait_map(page, 600)
                result["cold_start_to_map_s"] = time.perf_counter() - t0
                status = json.loads((runs_dir / "digits-2d" / "status.json").read_text())
                metrics = [json.loads(line) for line in (runs_dir / "digits-2d" / "metrics.jsonl").read_text().splitlines()]
                result["first_start_training_s"] = status.get("heartbeat", 0) - status.get("started", 0)
                result["first_start_epochs"] = len(metrics)
                context.close()

                # A new session on the trained run: navigation to the map drawn.
                context = browser.new_context(viewport={"width": 1400, "height": 1000})
                context.set_default_timeout(120_000)
                page = context.new_page()
                t1 = time.perf_counter()
                page.goto(f"{app.url}/?run=digits-2d")
                _wait_map(page, 120)
                result["page_to_map_s"] = time.perf_counter() - t1
                harness.wait_idle(page)

                from .browser_map import map_measures  # the in-page latent map (issue 14)
                map_measures(ctx, browser, app, s.browser_moves)
                context.close()

                _say("timing the Interpolate page: drag, release, bytes")
                result.update(_interpolate_measures(browser, app, s.browser_moves))
            finally:
                browser.close()
    finally:
        harness.stop_app(app)
    moves = result["slider_ms"]
    p50, p95 = percentile(moves, 50), percentile(moves, 95)
    result.update(slider_p50_ms=p50, slider_p95_ms=p95)
    ctx.sections["6_browser"] = result
    ctx.row("6", f"app cold start to first latent map (first start, {epochs} epochs)", result["cold_start_to_map_s"],
            "s", None, "", "< 10 s", result["cold_start_to_map_s"] < 10,
            note=f"server up {result['server_up_s']:.1f} s; first-start training "
                 f"{result['first_start_training_s']:.1f} s by its status.json")
    ctx.row("6", "page open to latent map, trained run", result["page_to_map_s"] * 1e3, "ms")
    drag = result["drag_step_ms"]
    d50, d95 = percentile(drag, 50), percentile(drag, 95)
    result.update(drag_step_p50_ms=d50, drag_step_p95_ms=d95)
    ctx.row("6", f"Interpolate: drag step to new pixels, p50 ({len(drag)} steps)", d50, "ms")
    ctx.row("6", f"Interpolate: drag step to new pixels, p95 ({len(drag)} steps)", d95, "ms", None, "", "<= 16 ms",
            d95 <= 16, note="input event to the next animation frame, in the page")
    ctx.row("6", "Interpolate: messages to the server during the drag", result["drag_messages"], "frames", None, "",
            "0", result["drag_messages"] == 0)
    ctx.row("6", f"Interpolate: slider release to the numbers, p50 ({len(moves)} moves)", p50, "ms",
            note="one server round trip (before the component: the path to every new image)")
    ctx.row("6", f"Interpolate: slider release to the numbers, p95 ({len(moves)} moves)", p95, "ms", None, "",
            "< 150 ms", p95 < 150)
    ctx.row("6", "Interpolate: page open to the component drawn", result["interpolate_open_ms"], "ms")
    ctx.row("6", "Interpolate: bytes sent to the page on open", result["interpolate_open_bytes"] / 1e3, "kB",
            note=f"the path's message: {result['interpolate_message_bytes'] / 1e3:.1f} kB, sent once")
    ctx.row("6", "Interpolate: bytes sent to the page per release", percentile(result["release_bytes"], 50) / 1e3,
            "kB", note=f"p50; releases that sent the path's message again: {result['releases_resending_path']}")
    if ctx.before:  # the pages of an older commit beside these, on the same run (--before REV)
        from .before_after import compare

        compare(ctx, runs_dir, ctx.before, ctx.before_rounds)


def _interpolate_measures(browser, app, moves: int) -> dict:
    """The Interpolate page of the trained run in a new session: open it (time, bytes), drag
    its t slider with the mouse (per-step time to new pixels, frames sent), then click its
    track at `moves` places (release to the numbers, bytes per release)."""
    from tests.e2e import harness

    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(120_000)
    page = context.new_page()
    sent, received = [], []
    frames_in = []  # what the server sent, to find the path's message in (by its id)
    page.on("websocket", lambda ws: (ws.on("framesent", lambda f: sent.append(len(f))),
                                     ws.on("framereceived", lambda f: (received.append(len(f)),
                                                                       frames_in.append(f)))))
    out: dict = {}
    try:
        t0 = time.perf_counter()
        page.goto(f"{app.url}/interpolate?run=digits-2d&t=0.50")
        page.wait_for_function("() => document.querySelector('.vae-interp[data-path-id]')", timeout=120_000)
        out["interpolate_open_ms"] = (time.perf_counter() - t0) * 1e3
        harness.wait_idle(page)
        out["interpolate_open_bytes"] = sum(received)
        out["interpolate_message_bytes"] = page.evaluate(
            "() => document.querySelector('.vae-interp').dataset.messageBytes | 0")
        path_id = page.evaluate("() => document.querySelector('.vae-interp').dataset.pathId").encode()
        holds_path = lambda f: path_id in (f.encode() if isinstance(f, str) else f)  # noqa: E731
        page.evaluate(_RECORDER)
        slider = page.locator(".vae-interp input[type=range]")
        slider.scroll_into_view_if_needed()
        box = slider.bounding_box()
        y = box["y"] + box["height"] / 2
        x_at = lambda t: box["x"] + 8 + t * (box["width"] - 16)  # noqa: E731 (the thumb's centre at t)

        # The drag: down on the thumb at 0.5, out to 0.05 and 0.95 and back, held throughout.
        page.mouse.move(x_at(0.5), y)
        before = len(sent)
        page.mouse.down()
        for t in (0.05, 0.95, 0.3):
            page.mouse.move(x_at(t), y, steps=40)
        page.wait_for_timeout(300)
        out["drag_messages"] = len(sent) - before
        out["drag_step_ms"] = page.evaluate("() => window.__bench.steps")
        page.mouse.up()
        harness.wait_idle(page, quiet_s=0.3)

        # Releases: a click on the track; the numbers of the released t come from the server.
        out["slider_ms"], out["release_bytes"], out["releases_resending_path"] = [], [], 0
        for frac in slider_targets(moves):
            got = len(received)
            page.mouse.click(x_at(frac), y)
            released = float(slider.input_value())
            out["slider_ms"].append(page.evaluate(_HEADING_SINCE_UP, [f"At t = {released:.2f}"]))
            harness.wait_idle(page, quiet_s=0.3)
            out["release_bytes"].append(sum(received[got:]))
            out["releases_resending_path"] += any(holds_path(f) for f in frames_in[got:])
    finally:
        context.close()
    return out
