"""The parts the browser tests are made of: a real Streamlit server on a free loopback port,
Debian's Chromium driven by Playwright, and small helpers that read what the page shows.

Used by tests/e2e/conftest.py (the fixtures) and usable from a Python prompt to poke at
the app the way the tests see it:

    from tests.e2e.harness import start_app, stop_app, launch_browser
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"

# Debian's chromium; never `playwright install` (it downloads a browser).
CHROMIUM = os.environ.get("VAE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

# Timeouts, generous (the CPU is shared) but bounded. Seconds.
SERVER_START_S = 90  # streamlit imports torch, plotly, sklearn before it answers
PAGE_S = 90  # a page's first run (encoding the test set, first imports)
TRAIN_S = 300  # a small training run from start to done


@dataclass
class App:
    """A running `streamlit run explorer/app.py`."""

    url: str  # http://127.0.0.1:PORT
    port: int
    runs_dir: Path  # $VAE_RUNS_DIR of the server
    log: Path  # the server's stdout + stderr
    proc: subprocess.Popen

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def app_env(runs_dir: Path, default_epochs: int) -> dict[str, str]:
    """The server's environment: the runs folder, one torch thread for the app and for every
    training job it starts (the CPU is shared), and a short first-start training."""
    env = dict(os.environ)
    env.update(VAE_RUNS_DIR=str(runs_dir), VAE_TRAIN_THREADS="1", VAE_APP_THREADS="1", OMP_NUM_THREADS="1",
               VAE_DEFAULT_EPOCHS=str(default_epochs), PYTHONUNBUFFERED="1")
    env.pop("VAE_AUTOSTART", None)
    return env


def start_app(runs_dir: Path, log: Path, default_epochs: int = 30) -> App:
    """Start the app headless on a free loopback port and wait for /_stcore/health."""
    runs_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    cmd = [sys.executable, "-m", "streamlit", "run", "explorer/app.py", "--server.headless", "true",
           "--server.port", str(port), "--server.address", "127.0.0.1",
           "--browser.gatherUsageStats", "false"]
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=app_env(runs_dir, default_epochs), stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    app = App(f"http://127.0.0.1:{port}", port, runs_dir, log, proc)
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"streamlit exited with status {proc.returncode}:\n{app.log_tail()}")
        try:
            with urllib.request.urlopen(f"{app.url}/_stcore/health", timeout=2) as r:
                if r.status == 200 and r.read().strip() == b"ok":
                    return app
        except OSError:
            pass
        time.sleep(0.3)
    stop_app(app)
    raise RuntimeError(f"streamlit did not answer /_stcore/health within {SERVER_START_S} s:\n{app.log_tail()}")


def stop_app(app: App) -> None:
    """Stop the server's process group, then any training job it started (each job runs in
    its own process group, so it outlives the server unless stopped here)."""
    _stop_group(app.proc.pid, lambda: app.proc.poll() is not None)
    for job in Path(app.runs_dir).glob("*/job.json"):
        stop_training(job.parent)


def training_pid(run_dir: Path) -> int | None:
    """The live `python -m trainer fit` process training run_dir (from its job.json), if any."""
    try:
        pid = int(json.loads((Path(run_dir) / "job.json").read_text())["pid"])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError, KeyError, TypeError):
        return None
    ours = b"trainer" in cmdline and str(Path(run_dir).resolve()).encode() in cmdline
    return pid if ours and _alive(pid) else None


def training_pids(runs_dir: Path) -> list[int]:
    """The live training processes of every run in runs_dir."""
    return [pid for job in sorted(Path(runs_dir).glob("*/job.json")) if (pid := training_pid(job.parent))]


def stop_training(run_dir: Path) -> None:
    """Stop run_dir's training process group, if it is still running."""
    pid = training_pid(run_dir)
    if pid is not None:
        _stop_group(pid, lambda: not _alive(pid))


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _stop_group(pid: int, stopped, wait_s: float = 10.0) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if stopped():
                return
            time.sleep(0.1)


def launch_browser(playwright):
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


# -- reading the page ----------------------------------------------------------------------

IDLE_JS = """() => {
    const app = document.querySelector('[data-testid="stApp"]');
    return !!app && app.getAttribute('data-test-script-state') === 'notRunning'
        && app.getAttribute('data-test-connection-state') === 'CONNECTED'
        && !document.querySelector('[data-testid="stSkeleton"], [data-stale="true"]');
}"""


def wait_idle(page, timeout_s: float = PAGE_S, quiet_s: float = 0.5) -> None:
    """Wait until Streamlit has run the script and drawn its result: the app says its script
    is not running, no placeholder skeleton or stale (greyed) element is left, and that has
    held for quiet_s seconds in a row."""
    deadline = time.monotonic() + timeout_s
    quiet_since = None
    while time.monotonic() < deadline:
        if page.evaluate(IDLE_JS):
            quiet_since = quiet_since or time.monotonic()
            if time.monotonic() - quiet_since >= quiet_s:
                return
        else:
            quiet_since = None
        time.sleep(0.1)
    raise AssertionError(f"the app was still running or drawing after {timeout_s} s")


RECORDER_JS = """([every_ms]) => {
    // Every every_ms: what the page shows of a training job. Runs in the browser, so a slow
    // test process misses nothing; Streamlit changes pages without reloading, so it survives.
    if (window.__rec) clearInterval(window.__rec.timer);
    const rec = {rows: []};
    rec.timer = setInterval(() => {
        const bar = document.querySelector('[data-testid="stProgress"]');
        const m = bar && bar.innerText.match(/Training (\\S+): epoch (\\d+) of (\\d+)/);
        const plot = document.querySelector('.st-key-live_curves .js-plotly-plot');
        const n = plot && plot._fullData ? Math.max(0, ...plot._fullData.map(t => (t.x || []).length)) : null;
        const app = document.querySelector('.st-key-latent_map_chart .js-plotly-plot')
            || document.querySelector('.st-key-latent_map_chart [aria-label="latent map"]');
        // The sidebar: the active run's selectbox as shown, and its job line's epoch.
        const side = document.querySelector('[data-testid="stSidebar"]');
        const sel = side && side.querySelector('.st-key-active_run input');
        const job = side && side.innerText.match(/is training: epoch (\\d+) of (\\d+)/);
        rec.rows.push({t: performance.now() / 1000, run: m ? m[1] : null, epoch: m ? +m[2] : null,
                       epochs: m ? +m[3] : null,
                       points: n, map: !!(app && app.querySelector('canvas')),
                       first_start: document.body.textContent.includes('First start.'),
                       sidebar_label: sel ? sel.value.trim() : null,
                       sidebar_epoch: job ? +job[1] : null,
                       sidebar_queued: !!(side && side.innerText.includes('waits in the queue'))});
        if (rec.rows.length > 4000) rec.rows.splice(0, 1000);
    }, every_ms);
    window.__rec = rec;
}"""


TRAINING_DRAWN_JS = """() => {
    // A training job's panel fully drawn: the progress bar and live curves with 2+ epochs.
    const plot = document.querySelector('.st-key-live_curves .js-plotly-plot');
    return !!(plot && plot._fullLayout && plot._fullData.some(t => (t.x || []).length >= 2))
        && !!document.querySelector('[data-testid="stProgress"]')
        && !document.querySelector('[data-testid="stMain"] [data-testid="stSkeleton"]');
}"""


def start_recorder(page, every_ms: int = 200) -> None:
    """Record, inside the browser, the progress bar's epoch, the live curves' points and whether
    the latent map is drawn, every every_ms (see recorded())."""
    page.evaluate(RECORDER_JS, [every_ms])


def recorded(page) -> list[dict]:
    """The recorder's rows so far: t (s), run, epoch, epochs (None when no progress bar), points
    (of the longest live curve; None when none is drawn), map (the latent map is drawn),
    first_start (the first start's explanation is shown), sidebar_label (the sidebar's Active run
    as shown), sidebar_epoch (the epoch of the sidebar's job line; None when none says one),
    sidebar_queued (the sidebar says a job waits in the queue)."""
    return page.evaluate("() => window.__rec ? window.__rec.rows : []")


def keyed(page, key: str):
    """The element a widget or chart with `key=...` was drawn in (Streamlit adds st-key-KEY)."""
    return page.locator(f".st-key-{key}")


def plotly_traces(chart) -> list[dict]:
    """The traces drawn in a plotly chart element: type, name, number of points, colorbar
    title, marker colour values (first 5)."""
    return chart.locator(".js-plotly-plot").first.evaluate("""el => (el._fullData || []).map(t => {
        const arr = a => (a && typeof a.length === 'number' && typeof a !== 'string') ? Array.from(a) : [];
        const cb = t.marker && t.marker.showscale && t.marker.colorbar;
        return {type: t.type || 'scatter', name: t.name || '', visible: t.visible,
                n: Math.max(arr(t.x).length, arr(t.y).length),
                x: arr(t.x).slice(0, 2000), y: arr(t.y).slice(0, 2000),
                customdata: arr(t.customdata).slice(0, 2000).map(c => Array.isArray(c) ? c[0] : c),
                colorbar: cb ? ((cb.title && cb.title.text) || '') : null,
                color: t.marker && t.marker.color !== undefined ? arr(t.marker.color).slice(0, 5) : []};
    })""")


IN_PAGE_MAP = '[aria-label="latent map"]'  # the latent map page's canvas (explorer/components/latent_map)


def in_page_map(chart, timeout_s: float = PAGE_S):
    """The in-page latent map's canvas inside `chart`, once it has drawn its points (map.js
    keeps its state on the canvas as .latentMap)."""
    canvas = chart.locator(IN_PAGE_MAP).first
    canvas.wait_for(timeout=timeout_s * 1000)
    deadline = time.monotonic() + timeout_s
    while not canvas.evaluate("c => !!(c.latentMap && c.latentMap.hitGrid)"):
        if time.monotonic() > deadline:
            raise AssertionError(f"the latent map drew no points within {timeout_s} s")
        time.sleep(0.05)
    return canvas


def sample_points(chart) -> dict[int, tuple[float, float]]:
    """The test samples drawn in a latent map: index -> where the point is in the viewport, CSS
    pixels (for page.mouse.click; scroll the chart into view first). The in-page map says where
    it drew each; a plotly map has WebGL traces whose customdata is the test index."""
    if chart.locator(IN_PAGE_MAP).count():
        return {int(k): tuple(v) for k, v in in_page_map(chart).evaluate("c => c.latentMap.screenPoints()").items()}
    return {int(k): tuple(v) for k, v in chart.locator(".js-plotly-plot").first.evaluate("""el => {
        const L = el._fullLayout, box = el.getBoundingClientRect(), out = {};
        for (const t of el._fullData) {
            if (t.type !== 'scattergl' || !t.customdata) continue;
            const xa = L[t.xaxis.replace('x', 'xaxis')], ya = L[t.yaxis.replace('y', 'yaxis')];
            for (let i = 0; i < t.x.length; i++) {
                const c = Array.isArray(t.customdata[i]) ? t.customdata[i][0] : t.customdata[i];
                out[c] = [box.left + xa._offset + xa.l2p(t.x[i]),
                          box.top + ya._offset + ya.l2p(t.y[i])];
            }
        }
        return out;
    }""").items()}


def isolated_point(points: dict[int, tuple[float, float]], exclude: set[int] = frozenset()) -> int:
    """The sample whose point is farthest from every other point (a click hits it alone)."""
    import math

    best, best_d = None, -1.0
    items = list(points.items())
    for i, (x, y) in items:
        if i in exclude:
            continue
        d = min((math.hypot(x - x2, y - y2) for j, (x2, y2) in items if j != i), default=math.inf)
        if d > best_d:
            best, best_d = i, d
    return best


def legend_text(chart) -> str:
    """What the chart shows as legend and colour bar (the SVG text a person reads)."""
    return chart.locator(".js-plotly-plot").first.evaluate(
        "el => Array.from(el.querySelectorAll('.legend text, .colorbar text, .cbtitle text'))"
        ".map(t => t.textContent).join(' | ')")


def captioned_image(page, caption: str):
    """The <img> of the st.image whose caption is exactly `caption`."""
    return page.locator('[data-testid="stImage"]').filter(
        has=page.get_by_text(caption, exact=True)).locator("img").first


def image_digest(page, img) -> str:
    """A short SHA-256 of the bytes of an <img> the page shows (equal digests: equal images)."""
    import hashlib

    return hashlib.sha256(image_bytes(page, img)).hexdigest()[:16]


def image_bytes(page, img) -> bytes:
    """The bytes of an <img> the page shows (fetched from the server, as the browser does)."""
    src = img.get_attribute("src")
    assert src, "the image has no src"
    if src.startswith("data:"):
        import base64

        return base64.b64decode(src.split(",", 1)[1])
    response = page.request.get(src if src.startswith("http") else page.url.split("/", 3)[0] + "//"
                                + page.url.split("/", 3)[2] + src)
    assert response.ok, f"GET {src}: {response.status}"
    return response.body()


def table_rows(element) -> list[dict[str, str]]:
    """The rows of an st.dataframe as the grid's accessible table gives them: column -> text.
    The grid draws only the columns in view, so it is scrolled across and the parts joined;
    it is left scrolled back to its first column."""
    table, scroller = element.locator("table").first, element.locator(".dvn-scroller").first
    scroll_to(element, 0)
    rows: dict[str, dict[str, str]] = {}
    for _ in range(50):
        part = table.evaluate("""t => {
            const head = {};
            t.querySelectorAll('thead th').forEach(th => head[th.getAttribute('aria-colindex')] = th.textContent.trim());
            return Array.from(t.querySelectorAll('tbody tr')).map(tr => [tr.getAttribute('aria-rowindex'),
                Object.fromEntries(Array.from(tr.querySelectorAll('td')).map(td =>
                    [head[td.getAttribute('aria-colindex')], td.textContent.trim()]))]);
        }""")
        for index, cells in part:
            rows.setdefault(index, {}).update(cells)
        if not scroll_to(element, scroller.evaluate("s => s.scrollLeft + s.clientWidth / 2")):
            break
    scroll_to(element, 0)
    return [rows[i] for i in sorted(rows, key=int)]


def scroll_to(element, left: float) -> bool:
    """Scroll an st.dataframe's grid to `left` (CSS pixels) and wait until it has drawn the
    columns now in view; False if it could not move (already there, or at the end)."""
    table, scroller = element.locator("table").first, element.locator(".dvn-scroller").first
    heads_js = "t => Array.from(t.querySelectorAll('thead th')).map(th => th.textContent.trim())"
    heads = table.evaluate(heads_js)
    moved = scroller.evaluate("""(s, left) => { const before = s.scrollLeft; s.scrollLeft = left;
                                               return s.scrollLeft !== before; }""", left)
    if moved:
        for _ in range(40):
            element.page.wait_for_timeout(50)
            if table.evaluate(heads_js) != heads:
                break
    return moved


def metrics(scope) -> dict[str, float]:
    """The st.metric values shown in `scope` (a page or a locator): label -> number."""
    out = {}
    for m in scope.locator('[data-testid="stMetric"]').all():
        label = m.locator('[data-testid="stMetricLabel"]').inner_text().strip()
        out[label] = float(m.locator('[data-testid="stMetricValue"]').inner_text().strip().replace("\u2212", "-"))
    return out


def assert_no_traceback(page) -> None:
    """No exception box and no Python traceback anywhere in the page."""
    assert page.locator('[data-testid="stException"]').count() == 0, "an exception box is shown"
    body = page.locator("body").inner_text()
    assert "Traceback (most recent call last)" not in body, "a traceback is shown"
    assert not re.search(r'File "[^"]+\.py", line \d+', body), "a stack frame is shown"


DRAWN_JS = """() => {
    const plots = document.querySelectorAll('[data-testid="stPlotlyChart"]');
    const drawn = Array.from(plots).every(p => { const el = p.querySelector('.js-plotly-plot');
                                                 return el && el._fullLayout; });
    const images = Array.from(document.querySelectorAll('[data-testid="stImage"] img'))
        .every(img => img.complete && img.naturalWidth > 0);
    const maps = Array.from(document.querySelectorAll('[aria-label="latent map"]'))
        .every(c => c.latentMap && c.latentMap.hitGrid);  // the in-page map drew its points
    return drawn && images && maps;
}"""


def wait_drawn(page, timeout_s: float = PAGE_S) -> None:
    """Wait until the script has run and every chart and image on the page is drawn."""
    wait_idle(page, timeout_s)
    page.wait_for_function(DRAWN_JS, timeout=timeout_s * 1000)
    page.wait_for_timeout(300)  # plotly's last relayout


def screenshot(page, name: str, *extra_dirs: Path) -> Path:
    """Save a full-page screenshot to test-artifacts/NAME.png, and the visible part of the
    page (the browser window, as a person first sees it) to each extra folder."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    for d in extra_dirs:
        d.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(d / f"{name}.png"))
    return path
