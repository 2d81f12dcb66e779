"""Section 6: in the browser. A real `streamlit run explorer/app.py` (headless, loopback, the
app's own thread settings) and Debian's Chromium driven by Playwright, as the e2e tests do
(their helpers in tests/e2e/harness.py are reused).

- cold start: from launching the server on an empty runs folder to the first latent map
  drawn (a WebGL canvas), without a click; this includes the app's first-start training
  (digits, 2-D latent, the app's default epochs), which is also timed on its own;
- a page opened on the trained run: from navigation to the latent map drawn;
- slider release to the new decoded image drawn, on the Interpolate page: a click on the
  t slider's track (mouse down and up: the release), timed inside the page from the
  `pointerup` event to the `load` event of the new <img>, p50/p95 over many moves.
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

# Installed in the page: record when the pointer is released, and when an <img> finishes
# loading a source that was not on the page before that release (load events do not
# bubble: capture them). A source shown earlier still loads again, from the cache.
_RECORDER = """() => {
  if (window.__bench) return;
  window.__bench = {up: 0, before: new Set(), loaded: []};
  // react-aria's slider cancels the compatibility mouse events: the release is a pointerup.
  document.addEventListener('pointerup', () => {
    window.__bench.up = performance.now();
    window.__bench.before = new Set(Array.from(document.images).map(i => i.currentSrc || i.src));
  }, true);
  document.addEventListener('load', e => {
    const el = e.target;
    if (el && el.tagName === 'IMG' && !window.__bench.before.has(el.currentSrc || el.src)) {
      window.__bench.loaded.push(performance.now());
    }
  }, true);
}"""


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


def _start_server(runs_dir: Path, log: Path, default_epochs: int):
    """The app as `make run` starts it (its own thread defaults), on a free loopback port."""
    from tests.e2e import harness

    runs_dir.mkdir(parents=True, exist_ok=True)
    port = harness.free_port()
    env = {**os.environ, "VAE_RUNS_DIR": str(runs_dir), "VAE_DEFAULT_EPOCHS": str(default_epochs),
           "PYTHONUNBUFFERED": "1"}
    env.pop("VAE_AUTOSTART", None)
    cmd = [sys.executable, "-m", "streamlit", "run", "explorer/app.py", "--server.headless", "true",
           "--server.port", str(port), "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=out,
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

                _say("timing the Interpolate slider")
                result["slider_ms"] = _slider_moves(page, app, s.browser_moves)
                context.close()
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
    ctx.row("6", f"slider release to decoded image, p50 ({len(moves)} moves)", p50, "ms")
    ctx.row("6", f"slider release to decoded image, p95 ({len(moves)} moves)", p95, "ms", None, "", "< 150 ms",
            p95 < 150)


def _slider_moves(page, app, moves: int) -> list[float]:
    """Click the Interpolate page's t slider at `moves` places along its track; for each, the
    milliseconds from the pointer release to the new decoded image loaded."""
    from tests.e2e import harness

    page.goto(f"{app.url}/interpolate?run=digits-2d")
    page.get_by_role("heading", name="Interpolate", exact=True).first.wait_for()
    harness.wait_idle(page)
    # The slider's track (react-aria): a click on it moves the thumb there, the release commits.
    slider = harness.keyed(page, "interp_t").locator('[data-testid="stSlider"] [role="group"] > div').first
    slider.scroll_into_view_if_needed()
    page.evaluate(_RECORDER)
    out = []
    for frac in slider_targets(moves):
        box = slider.bounding_box()
        x, y = box["x"] + frac * box["width"], box["y"] + box["height"] / 2
        page.evaluate("() => { window.__bench.up = 0; window.__bench.loaded = []; }")
        page.mouse.click(x, y)
        page.wait_for_function("() => window.__bench.up > 0 && window.__bench.loaded.some(t => t > window.__bench.up)",
                               timeout=30_000)
        up, loaded = page.evaluate("() => [window.__bench.up, window.__bench.loaded]")
        out.append(min(t for t in loaded if t > up) - up)
        harness.wait_idle(page, quiet_s=0.3)
    return out
