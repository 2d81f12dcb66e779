"""Section 6 with `--before REV`: the latent map and Interpolate pages before and after issue
14's in-page components, measured in the same run on the same trained run folder.

    python -m bench --sections 6 --before f988f4b [--before-rounds 5]

REV's tree is exported to a temporary folder (`git archive`, removed afterwards; nothing is
added to the repository), and a Streamlit server is started from each tree, headless, on a
free loopback port, with the same environment (bench/browser.py's _start_server). Both read
the run section 6's first start trained: the old tree a copy of it whose config.json keeps
only the fields the old RunConfig knows (the weights and data are the same bytes).

Each round opens, for each tree in turn and each in a new browser session (nothing cached):
- the latent map page: navigation to the map drawn (its points: the old plotly chart's canvas,
  the new component's hit grid), navigation to the page complete (the script done, every chart
  and image drawn; tests/e2e/harness.py's DRAWN_JS), and the bytes sent to the page on the way:
  websocket frames received plus the media files (st.image's PNGs) it fetched; then clicks on
  points far apart: pointerdown to the selected-sample panel's input image of that sample
  loaded, and the bytes each click brought;
- the Interpolate page: navigation to the decoded image drawn, to the page complete, the bytes;
  then clicks (press and release at once) at places along t's track: pointerdown to the image
  of the new t drawn (the old page: its <img> loaded, after the release and a round trip; the
  new page: the canvas showing that frame, drawn in the page on the press's input event), to
  the numbers of the new t (the old page's "Decoded at t = ..." heading, the new "At t = ..."),
  and the bytes each click brought.
Times are noted in the page as things appear (performance.now(); navigation times from the
navigation's start), so they do not depend on when the bench process looks.

Medians over the rounds (opens) and over every move (clicks, releases); the ratio is after /
before. The trees take turns within each round, so that the machine's load falls on both alike.
"""

from __future__ import annotations

import io
import json
import math
import shutil
import subprocess
import sys
import tarfile
import tempfile
from contextlib import contextmanager
from pathlib import Path

from .common import Context, median, percentile
from .small import ROOT

RUN = "digits-2d"  # the run section 6's first start trains
MAP_URL = f"/latent-map?view=latent-map&run={RUN}"
INTERP_URL = f"/interpolate?view=interpolate&run={RUN}&t=0.50"

# In the page, polled every animation frame: performance.now() (ms since the navigation) once
# the latent map has drawn its points, else false. Either tree's map: the in-page component
# (its canvas keeps its state as .latentMap) or the plotly chart (a WebGL canvas).
MAP_DRAWN_JS = """() => {
  const chart = document.querySelector('.st-key-latent_map_chart');
  if (!chart) return false;
  const m = chart.querySelector('[aria-label="latent map"]');
  const p = chart.querySelector('.js-plotly-plot');
  const ok = m ? !!(m.latentMap && m.latentMap.hitGrid) : !!(p && p._fullLayout && p.querySelector('canvas'));
  return ok ? performance.now() : false;
}"""

# The decoded image at t on the Interpolate page: the component's canvas with a frame drawn, or
# the old page's <img> captioned f(z(t)) ..., loaded.
IMAGE_DRAWN_JS = """() => {
  const c = document.querySelector('.vae-interp[data-path-id] .vae-interp-image[data-frame]');
  if (c) return performance.now();
  const img = Array.from(document.querySelectorAll('[data-testid="stImage"]'))
    .filter(f => f.innerText.trim().startsWith('f(z(t))')).map(f => f.querySelector('img'))[0];
  return img && img.complete && img.naturalWidth > 0 ? performance.now() : false;
}"""

# The bytes of the media files (st.image's PNGs, served over HTTP from /media/; not the static
# bundle's /static/media/ fonts) the page fetched so far.
MEDIA_BYTES_JS = """() => performance.getEntriesByType('resource')
  .filter(e => new URL(e.name).pathname.startsWith('/media/'))
  .reduce((s, e) => s + (e.encodedBodySize || e.transferSize || 0), 0)"""

# The in-page map's two payloads as it holds them (explorer/services/inpage.py): payload ->
# array name -> bytes (atlas_*: the thumbnails, w*/b*: the decoder's weights, conv_grid, the
# points and their colours, the snapshots). The old page has none: {}.
PAYLOAD_ARRAYS_JS = """() => {
  const c = document.querySelector('.st-key-latent_map_chart [aria-label="latent map"]'), out = {};
  for (const which of ['samples', 'points']) {
    const p = c && c.latentMap && c.latentMap[which];
    if (p) out[which] = Object.fromEntries(Object.entries(p.arrays).map(([k, a]) => [k, a.byteLength]));
  }
  return out;
}"""

# Installed once per page, it notes in the page when each thing first appears after the last
# pointerdown (performance.now()), so that what is timed does not depend on when the test
# process looks: "img:CAPTION" an st.image's <img> loaded (load events do not bubble:
# captured), "h3:TEXT" a heading, "frame:K" the Interpolate component's canvas showing frame K.
RECORDER_JS = """() => {
  if (window.__ba) return;
  const b = window.__ba = {down: 0, seen: {}};
  const note = key => { if (b.down > 0 && !(key in b.seen)) b.seen[key] = performance.now(); };
  document.addEventListener('pointerdown', () => { b.down = performance.now(); b.seen = {}; }, true);
  document.addEventListener('load', e => {
    const fig = e.target && e.target.tagName === 'IMG' && e.target.closest('[data-testid="stImage"]');
    if (fig) note('img:' + fig.innerText.trim());
  }, true);
  new MutationObserver(() => {
    for (const h of document.querySelectorAll('h3')) note('h3:' + h.textContent.trim());
    const c = document.querySelector('.vae-interp .vae-interp-image[data-frame]');
    if (c) note('frame:' + c.dataset.frame);
  }).observe(document.body, {subtree: true, childList: true, characterData: true, attributes: true,
                             attributeFilter: ['data-frame']});
}"""

# Milliseconds from the last pointerdown to the first of `keys` noted (false until one is).
SINCE_DOWN_JS = """(keys) => {
  const b = window.__ba, t = keys.map(k => b.seen[k]).filter(v => v !== undefined);
  return t.length ? Math.min(...t) - b.down : false;
}"""


def _say(message: str) -> None:
    print(f"bench: section 6 --before: {message}", file=sys.stderr, flush=True)


@contextmanager
def exported_tree(rev: str):
    """(the commit's full hash, a temporary folder holding REV's files); removed afterwards."""
    commit = subprocess.run(["git", "rev-parse", "--verify", f"{rev}^{{commit}}"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout.strip()
    tar = subprocess.run(["git", "archive", "--format=tar", commit], cwd=ROOT, check=True, capture_output=True).stdout
    folder = Path(tempfile.mkdtemp(prefix=f"vae-before-{commit[:7]}-"))
    try:
        with tarfile.open(fileobj=io.BytesIO(tar)) as t:
            t.extractall(folder, filter="data")
        yield commit, folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def readable_copy(runs_dir: Path, dest: Path, tree: Path, run: str = RUN) -> None:
    """Copy runs_dir/run to dest/run with config.json's top-level keys cut to the fields the
    tree's RunConfig knows (it refuses unknown ones; later commits added e.g. `standardize`)."""
    known = json.loads(subprocess.run(
        [sys.executable, "-c", "import dataclasses, json; from trainer.config import RunConfig; "
                               "print(json.dumps([f.name for f in dataclasses.fields(RunConfig)]))"],
        cwd=tree, check=True, capture_output=True, text=True).stdout)
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    shutil.copytree(runs_dir / run, dest / run, ignore=shutil.ignore_patterns("job.json", "*.tmp*"))
    config = json.loads((dest / run / "config.json").read_text())
    (dest / run / "config.json").write_text(json.dumps({k: v for k, v in config.items() if k in known}, indent=2))


class _Traffic:
    """The bytes the server sends to one page: websocket frames received (a running sum)."""

    def __init__(self, page):
        self.ws = 0
        self.frames = 0
        page.on("websocket", lambda ws: ws.on("framereceived", self._add))

    def _add(self, payload) -> None:
        self.ws += len(payload)
        self.frames += 1


def _new_page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(120_000)
    context.add_init_script("performance.setResourceTimingBufferSize(100000)")  # keep every media file's entry
    page = context.new_page()
    return context, page, _Traffic(page)


def _open(page, traffic, url: str, drawn_js: str) -> dict:
    """Navigate; ms (in the page, from the navigation) to `drawn_js` and to the page complete,
    and the bytes sent to the page by then (websocket + media files)."""
    from tests.e2e import harness

    page.goto(url)
    first = page.wait_for_function(drawn_js, polling="raf", timeout=120_000).json_value()
    harness.wait_idle(page, quiet_s=0.3)
    complete = page.wait_for_function(f"() => ({harness.DRAWN_JS})() ? performance.now() : false",
                                      polling="raf", timeout=120_000).json_value()
    harness.wait_idle(page, quiet_s=0.5)  # anything sent after the last element drawn counts too
    media = page.evaluate(MEDIA_BYTES_JS)
    return {"drawn_ms": first, "complete_ms": complete, "ws_bytes": traffic.ws, "media_bytes": media,
            "bytes": traffic.ws + media, "ws_frames": traffic.frames}


def _bytes_since(page, traffic, ws0: int, media0: int) -> int:
    return traffic.ws - ws0 + page.evaluate(MEDIA_BYTES_JS) - media0


def measure_map(browser, url: str, clicks: int) -> dict:
    """The latent map page: open it, then click `clicks` points far apart."""
    from tests.e2e import harness

    context, page, traffic = _new_page(browser)
    try:
        out = _open(page, traffic, url + MAP_URL, MAP_DRAWN_JS)
        out["payload_arrays"] = page.evaluate(PAYLOAD_ARRAYS_JS)
        chart = harness.keyed(page, "latent_map_chart")
        chart.scroll_into_view_if_needed()
        harness.wait_idle(page, quiet_s=0.3)
        page.evaluate(RECORDER_JS)
        out["click_ms"], out["click_bytes"] = [], []
        chosen: set[int] = set()
        for _ in range(clicks):
            points = harness.sample_points(chart)
            i = harness.isolated_point(points, exclude=chosen)
            chosen.add(i)
            ws0, media0 = traffic.ws, page.evaluate(MEDIA_BYTES_JS)
            page.mouse.click(*points[i])
            out["click_ms"].append(page.wait_for_function(SINCE_DOWN_JS, arg=[f"img:input x (sample {i})"],
                                                          polling="raf", timeout=60_000).json_value())
            harness.wait_idle(page, quiet_s=0.3)
            out["click_bytes"].append(_bytes_since(page, traffic, ws0, media0))
    finally:
        context.close()
    return out


def _slider(page):
    """(the t slider's track box, a function t -> the x to click on it for t, its value reader)."""
    from tests.e2e import harness

    native = page.locator(".vae-interp input[type=range]")
    if native.count():
        box = native.bounding_box()
        return box, (lambda t: box["x"] + 8 + t * (box["width"] - 16)), (lambda: float(native.input_value()))
    # The old page: Streamlit's slider (react-aria); a click on its track moves the thumb there.
    track = harness.keyed(page, "interp_t").locator('[data-testid="stSlider"] [role="group"] > div').first
    hidden = harness.keyed(page, "interp_t").locator("input[type=range]").first  # react-aria's own input
    box = track.bounding_box()
    return box, (lambda t: box["x"] + t * box["width"]), (lambda: float(hidden.input_value()))


def measure_interpolate(browser, url: str, releases: int) -> dict:
    """The Interpolate page: open it, then release t at `releases` places along its track."""
    from tests.e2e import harness

    from .browser import slider_targets

    context, page, traffic = _new_page(browser)
    try:
        out = _open(page, traffic, url + INTERP_URL, IMAGE_DRAWN_JS)
        out["path_message_bytes"] = page.evaluate(  # the component's one message (0: the old page)
            "() => { const r = document.querySelector('.vae-interp'); return r ? Number(r.dataset.messageBytes) : 0; }")
        page.locator(".vae-interp input[type=range], .st-key-interp_t").first.scroll_into_view_if_needed()
        harness.wait_idle(page, quiet_s=0.3)
        page.evaluate(RECORDER_JS)
        out["release_image_ms"], out["release_numbers_ms"], out["release_bytes"] = [], [], []
        for frac in slider_targets(releases):
            box, x_at, value = _slider(page)
            ws0, media0 = traffic.ws, page.evaluate(MEDIA_BYTES_JS)
            page.mouse.click(x_at(frac), box["y"] + box["height"] / 2)
            t = value()
            k = int(round(t * 100))  # both pages: 101 steps, frame k at t = k / 100
            caption = f"f(z(t)), the decoder's mean image at t = {t:.2f}"  # the old page's <img>
            out["release_image_ms"].append(page.wait_for_function(
                SINCE_DOWN_JS, arg=[f"frame:{k}", f"img:{caption}"], polling="raf", timeout=60_000).json_value())
            out["release_numbers_ms"].append(page.wait_for_function(
                SINCE_DOWN_JS, arg=[f"h3:At t = {t:.2f}", f"h3:Decoded at t = {t:.2f}"], polling="raf",
                timeout=60_000).json_value())
            harness.wait_idle(page, quiet_s=0.3)
            out["release_bytes"].append(_bytes_since(page, traffic, ws0, media0))
    finally:
        context.close()
    return out


MEASURES = [  # (key in the results, what, unit, how it is summed up over the rounds)
    ("map_drawn_ms", "latent map: page open to the map drawn", "ms", "median"),
    ("map_complete_ms", "latent map: page open to the page complete", "ms", "median"),
    ("map_bytes", "latent map: bytes sent to the page on open", "kB", "median"),
    ("click_ms", "latent map: click on a point to the panel showing it, p50", "ms", "median"),
    ("click_ms_p95", "latent map: click on a point to the panel showing it, p95", "ms", "p95"),
    ("click_bytes", "latent map: bytes sent to the page per click", "kB", "median"),
    ("interp_drawn_ms", "Interpolate: page open to the decoded image drawn", "ms", "median"),
    ("interp_complete_ms", "Interpolate: page open to the page complete", "ms", "median"),
    ("interp_bytes", "Interpolate: bytes sent to the page on open", "kB", "median"),
    ("release_image_ms", "Interpolate: click on t's track to the new t's image, p50", "ms", "median"),
    ("release_image_ms_p95", "Interpolate: click on t's track to the new t's image, p95", "ms", "p95"),
    ("release_numbers_ms", "Interpolate: click on t's track to the new t's numbers, p50", "ms", "median"),
    ("release_bytes", "Interpolate: bytes sent to the page per click on t", "kB", "median"),
]


def _collect(rounds: list[dict]) -> dict[str, list[float]]:
    """Per measure, every figure of every round (opens: one per round; moves: one per move)."""
    got: dict[str, list[float]] = {}
    for r in rounds:
        m, i = r["map"], r["interpolate"]
        for key, value in (("map_drawn_ms", m["drawn_ms"]), ("map_complete_ms", m["complete_ms"]),
                           ("map_bytes", m["bytes"]), ("interp_drawn_ms", i["drawn_ms"]),
                           ("interp_complete_ms", i["complete_ms"]), ("interp_bytes", i["bytes"])):
            got.setdefault(key, []).append(value)
        for key, values in (("click_ms", m["click_ms"]), ("click_bytes", m["click_bytes"]),
                            ("release_image_ms", i["release_image_ms"]),
                            ("release_numbers_ms", i["release_numbers_ms"]), ("release_bytes", i["release_bytes"])):
            got.setdefault(key, []).extend(values)
    got["click_ms_p95"] = got.get("click_ms", [])
    got["release_image_ms_p95"] = got.get("release_image_ms", [])
    return got


def _summary(values: list[float], how: str, unit: str) -> float:
    v = median(values) if how == "median" else percentile(values, 95)
    return v / 1e3 if unit == "kB" else v


def compare(ctx: Context, runs_dir: Path, rev: str, rounds: int) -> dict:
    """Measure both trees on runs_dir's trained run; rows for the table, and the figures in
    ctx.sections["6_before_after"]."""
    from playwright.sync_api import sync_playwright

    from tests.e2e import harness

    from .browser import _start_server, _wait_health

    clicks, releases = (2, 2) if ctx.quick else (8, 10)
    result: dict = {"rev": rev, "rounds": rounds, "clicks_per_round": clicks, "releases_per_round": releases,
                    "runs": {"before": [], "after": []}}
    with exported_tree(rev) as (commit, tree):
        result["commit"] = commit
        _say(f"{rev} = {commit[:12]} exported to {tree}")
        old_runs = ctx.workdir / "before-runs"
        readable_copy(runs_dir, old_runs, tree)
        apps = {}
        try:
            apps["before"] = _start_server(old_runs, ctx.workdir / "streamlit-before.log", 2, root=tree)
            apps["after"] = _start_server(runs_dir, ctx.workdir / "streamlit-after.log", 2)
            for app in apps.values():
                _wait_health(app)
            with sync_playwright() as p:
                browser = harness.launch_browser(p)
                try:
                    result["first_open"] = {}  # each server's first visit fills its caches: kept apart
                    for name, app in apps.items():
                        _say(f"first visit: {name}")
                        result["first_open"][name] = {"map": measure_map(browser, app.url, 1),
                                                      "interpolate": measure_interpolate(browser, app.url, 1)}
                    for k in range(rounds):
                        order = ("before", "after") if k % 2 == 0 else ("after", "before")
                        for name in order:
                            _say(f"round {k + 1} of {rounds}: {name}")
                            result["runs"][name].append({
                                "map": measure_map(browser, apps[name].url, clicks),
                                "interpolate": measure_interpolate(browser, apps[name].url, releases)})
                finally:
                    browser.close()
        finally:
            for app in apps.values():
                harness.stop_app(app)

    got = {name: _collect(runs) for name, runs in result["runs"].items()}
    summary = {}
    short = commit[:7]
    for key, what, unit, how in MEASURES:
        before = _summary(got["before"].get(key, []), how, unit)
        after = _summary(got["after"].get(key, []), how, unit)
        ratio = after / before if before and math.isfinite(before) and math.isfinite(after) else None
        summary[key] = {"before": before, "after": after, "ratio": ratio, "unit": unit,
                        "n_before": len(got["before"].get(key, [])), "n_after": len(got["after"].get(key, []))}
        ctx.row("6", f"before/after: {what}", after, unit, ratio, f"{short}: {_fmt(before)} {unit}",
                note="" if key != "release_image_ms" else
                "after: drawn in the page on the press (its input event); before: after the release, one server "
                     "round trip (a drag showed no new image until then)")
    result["summary"] = summary
    ctx.sections["6_before_after"] = result
    print(before_after_table(summary, short, rounds))
    return result


def _fmt(v) -> str:
    return "-" if v is None or not math.isfinite(v) else (f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}")


def before_after_table(summary: dict, short: str, rounds: int) -> str:
    """The figures as text: measure, before, after, after / before."""
    f = _fmt

    head = ("measure", f"before ({short})", "after", "after/before")
    body = [(f"{what} [{unit}]", f(summary[key]["before"]), f(summary[key]["after"]),
             "-" if summary[key]["ratio"] is None else f"{summary[key]['ratio']:.3g}")
            for key, what, unit, _ in MEASURES]
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(4)]
    lines = [f"section 6, before and after issue 14 (medians of {rounds} rounds; moves pooled):",
             "  ".join(c.ljust(w) for c, w in zip(head, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in body]
    return "\n".join(lines)
