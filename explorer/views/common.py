"""Pieces every view shares: the sidebar, the first start, the active run and the exploring
views' start (explore_page), live progress, picking and showing a test sample."""

from __future__ import annotations

import gc
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import streamlit as st

from explorer import charts, state
from explorer.services import cached, explore, exports, jobs, memory, pictures
from explorer.services import runs as run_service
from trainer import Run, TrainerError
from trainer.runs import read_metrics

# the first start (torch-free: app.py runs it before importing this module)
from .first_start import DEFAULT_RUN, autostart_enabled, default_config, runs_root  # noqa: F401

NATS_NOTE = "All numbers are per sample, in nats, with the sign of a log-likelihood: higher is better."


def runs_folder_problem() -> str | None:
    """Why the runs folder typed in the sidebar cannot be used (it does not exist, it is a
    file), or None. The default folder may be missing: a first start creates it."""
    root = runs_root()
    return None if root == run_service.default_runs_dir() and not root.exists() \
        else run_service.runs_folder_problem(root)


def fmt_seconds(s: float | None) -> str:
    if s is None:
        return "estimating time left"
    s = int(round(s))
    return f"about {s // 60} min {s % 60} s left" if s >= 60 else f"about {s} s left"


def freeze_startup_objects() -> None:
    """Once per server process: hide what exists after the imports from the garbage collector.

    Streamlit runs a full collection, gc.collect(2), after every script run, a fragment's own
    rerun included (its runner.postScriptGC option). With torch, plotly and the trainer loaded
    that walks a few hundred thousand objects: 150-450 ms with the GIL held on this 2-core
    machine, landing while the run's last messages still wait to be sent, so a slider move
    showed its new image up to that much later. gc.freeze() moves every object alive now
    (modules, classes, functions, constants: they live as long as the process) to a permanent
    generation that collections skip; what the runs allocate afterwards is collected as before.

    A flag, not gc.get_freeze_count(), says it is done: that call counts the frozen objects one
    by one (about 90 ms for the 200,000 of them, on every rerun of every session; issue 17).
    """
    global _frozen
    if _frozen:
        return
    _frozen = True
    gc.collect()  # leave no garbage behind in the frozen set
    gc.freeze()


_frozen = False  # freeze_startup_objects has run in this process


def start_memory_housekeeping() -> None:
    """Once per server process: fewer malloc arenas, and a garbage collection with a malloc trim
    every few seconds in a thread of its own (explorer/services/memory.py: what 30 sessions
    freed was kept by malloc, and none of it was returned when they left; issue 17)."""
    if not memory.started():
        memory.limit_arenas()
    memory.start()


def chart(fig, key: str, config: dict | None = None, **kwargs):
    """st.plotly_chart whose camera button saves RUN-VIEW-KEY.png (not plot-image.png);
    config: more of plotly's settings (e.g. staticPlot)."""
    config = {**exports.figure_config(state.get("run"), state.get("view"), key), **(config or {})}
    return st.plotly_chart(fig, key=key, config=config, **kwargs)


def shared_figure(key: tuple, build):
    """The figure build() makes, built once per key and shared by every session (issue 17).

    Building a plotly figure costs 15-130 ms of Python, showing a built one about 4 ms
    (st.plotly_chart copies it to JSON), and a page of several figures rebuilt them on every
    rerun of every session. key names everything the figure shows: the figure's name, the
    checkpoint (cached.Checkpoint), the sample, the slider's value... The figure is shared:
    nothing may change it after build (st.plotly_chart and chart() only read it)."""
    return _shared_figure(key, build)


@st.cache_resource(max_entries=256, show_spinner=False)
def _shared_figure(key: tuple, _build):  # the leading underscore: build is not part of the key
    return _build()


def download_codes(ckpt: cached.Checkpoint, run_name: str, key: str) -> None:
    """A button that downloads the test set's codes as CSV (see exports.codes_csv)."""
    def make() -> bytes:
        enc = cached.encoded(ckpt)
        return exports.codes_csv(enc, cached.projection(ckpt, "PCA"))

    st.download_button("Test-set codes (CSV)", make, file_name=f"{exports.file_stem(run_name, 'codes')}.csv",
                       mime="text/csv", key=key, icon=":material/download:", on_click="ignore",
                       help="One row per test sample: labels, posterior mean mu_j and log-variance logvar_j per "
                            "latent dimension, recon, kl and elbo (nats, one draw of z) and the latent map's "
                            "coordinates (z for d <= 2, else PCA).")


# -- sidebar -------------------------------------------------------------------------------------

def sidebar() -> None:
    """Runs folder, active run and what is training now."""
    with st.sidebar:
        if "runs_dir" not in st.session_state:
            st.session_state["runs_dir"] = str(run_service.default_runs_dir())
        st.text_input("Runs folder", key="runs_dir",
                      help="Folder holding one sub-folder per training run (default: $VAE_RUNS_DIR or runs/).")
        root = runs_root()
        summaries = run_service.list_runs(root)
        names = [s.name for s in summaries]
        current = state.get("run")
        if current is None:
            trained = [s.name for s in summaries if s.trained]
            current = trained[0] if trained else (names[0] if names else None)
            state.set("run", current)
        # A run that is not there (a link's ?run=, a run deleted elsewhere) is said, not
        # swapped for another one: the page shows why, the selectbox waits for a choice.
        if names:
            by_name = {s.name: s for s in summaries}
            st.session_state["active_run"] = current if current in names else None
            # No state for a run that is queued or training: this label is drawn once per full
            # rerun, which a training job does not cause, so it would go stale ('queued' while
            # the trainer runs). The job line below says what it is doing, refreshed live.
            st.selectbox("Active run", names, key="active_run",
                         format_func=lambda n: n if by_name[n].state in jobs.ACTIVE else f"{n}  ({by_name[n].state})",
                         on_change=lambda: state.set("run", st.session_state["active_run"]),
                         help="The run the Latent map, Interpolate, ELBO and Generate pages show.")
        else:
            st.caption("No runs yet.")
        training = [str(s.path) for s in summaries if s.state in jobs.ACTIVE]
        if training:
            sidebar_jobs(training)
    problem = runs_folder_problem()
    if problem:
        st.error(problem)
    elif current is not None and current not in names:
        st.error(missing_run_message(current, root))


def missing_run_message(name: str, root: Path) -> str:
    """One line: the active run (from a link, or deleted meanwhile) is not in the runs folder."""
    return (f"There is no run named {name!r} in {root} (a mistyped link, or the run was deleted): "
            "choose a run in the sidebar.")


SIDEBAR_JOBS_EVERY_S = 2.0  # the sidebar's job lines: every open page of every session runs them


@st.fragment(run_every=SIDEBAR_JOBS_EVERY_S)
def sidebar_jobs(run_dirs: list[str]) -> None:
    """What is training now, refreshed every SIDEBAR_JOBS_EVERY_S (a job's page-wide rerun
    happens only when it ends); the whole page reruns when all have ended. Every 2 s rather
    than every second like the Train page's progress bar: with 30 sessions and a job, these
    fragment runs were 72% of the server's script runs, on the one core the job leaves."""
    states = [(Path(d).name, jobs.job_state(Path(d))) for d in run_dirs]
    if not any(js is not None and js.active for _, js in states):
        st.rerun(scope="app")
    for name, js in states:
        waiting = run_service.waiting_for_slot(Path(run_dirs[0]).parent / name) if js is not None and js.active \
            else None
        if waiting:
            st.caption(f":material/schedule: **{name}** waits in the queue: {waiting[0]} of {waiting[1]}")
        elif js is not None and js.state == "queued":
            st.caption(f":material/hourglass_top: **{name}** is starting")
        elif js is not None and js.active:
            st.caption(f":material/hourglass_top: **{name}** is training: epoch {js.epoch} of {js.epochs}")
        elif js is not None:
            st.caption(f"**{name}**: {js.state}")


# -- the active run ------------------------------------------------------------------------------

def active_summary() -> run_service.RunSummary | None:
    name = state.get("run")
    if not name:
        return None
    path = runs_root() / name
    if not run_service.is_run_folder(path):
        return None
    return run_service.summary(path)


def trained_run() -> tuple[run_service.RunSummary, Run] | None:
    """The active run opened for exploring, or None after saying in the page why not
    (no run yet, still training, failed, damaged)."""
    summary = active_summary()
    if summary is None:
        if runs_folder_problem() or state.get("run"):
            pass  # the sidebar said it in the page: no runs folder, or no such run
        else:
            st.info("There is no trained run yet. Start one on the **Train** page.")
            st.page_link("views/train.py", label="Go to Train", icon=":material/model_training:")
        return None
    if summary.state in jobs.ACTIVE:
        if st.session_state.get("_first_start_run") == summary.name:
            st.info("**First start.** There are no runs yet, so the app is training a default VAE on the "
                    "built-in digits (8x8 images of handwritten digits) with a 2-D latent space. "
                    "This page shows the result as soon as it is done; it takes about a minute or less.")
        else:
            st.info(f"**{summary.name}** is training. This page shows it when it is done.")
        live_progress(str(summary.path))
        return None
    if not summary.trained:
        if summary.state == "failed":
            st.error(f"Training {summary.name} failed: {summary.message}")
        elif summary.state == "cancelled":
            st.warning(f"{summary.name} was cancelled before its first epoch: there is nothing learned to "
                       "explore. Retrain it on the Train page.")
        else:
            st.error(f"{summary.name} has no trained weights: {summary.message or 'retrain it on the Train page'}")
        return None
    try:
        run = run_service.open_run(summary.path)
    except TrainerError as e:
        st.error(f"Cannot open {summary.name}: {e}")
        return None
    if summary.state == "failed":
        st.warning(f"Training {summary.name} failed ({summary.message}); showing its last saved epoch.")
    elif summary.state == "cancelled":
        st.caption(f"{summary.name} was cancelled after epoch {summary.epoch} of {summary.epochs}; "
                   "showing that epoch's weights.")
    return summary, run


@dataclass
class ExplorePage:
    """What the exploring views (latent map, interpolate, ELBO, generate) start from."""

    summary: run_service.RunSummary
    run: Run
    checkpoint: cached.Checkpoint  # the key of every cached call this page run makes
    enc: explore.Encoded  # the test split, encoded


def explore_page(title: str) -> ExplorePage | None:
    """An exploring view's start: its title, then the active trained run and its encoded test
    set; None after saying in the page why there is nothing to explore (see trained_run)."""
    st.title(title)
    res = trained_run()
    if res is None:
        return None
    summary, run = res
    ckpt = cached.checkpoint(summary.path)
    return ExplorePage(summary, run, ckpt, cached.encoded(ckpt))


LIVE_EVERY_S = 1.0  # live_progress's refresh
FINISH_SLACK_S = 0.5  # how much longer than its estimate live_progress waits for a job about to end
FINISH_POLL_S = 0.02


def finished_within(path: Path, timeout_s: float) -> bool:
    """Wait up to timeout_s for the run's job to end (its status.json says so); whether it did.
    A job that ends before live_progress's next refresh is shown done as soon as it is, rather
    than up to LIVE_EVERY_S later (half a second on average: the first start's map, issue 18)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        time.sleep(FINISH_POLL_S)
        js = jobs.job_state(path)
        if js is None or not js.active:
            return True
    return False


@st.fragment(run_every=LIVE_EVERY_S)
def live_progress(run_dir: str) -> None:
    """Progress bar, ETA, live curves and Cancel for a training job; reruns the whole page
    when the job ends so that it shows the result."""
    path = Path(run_dir)
    js = jobs.job_state(path)
    if js is None or not js.active:
        st.rerun(scope="app")
    waiting = run_service.waiting_for_slot(path)
    if waiting:
        st.info(f"**{path.name}** waits in the training queue: position {waiting[0]} of {waiting[1]}; "
                f"{jobs.max_concurrent_jobs()} job(s) train at a time and it starts by itself.",
                icon=":material/schedule:")
    elif js.state == "queued":  # first in line with a free slot: its process is starting
        st.info(f"**{path.name}** is starting: the training process loads the data and builds the model; "
                "its first epoch appears here in a few seconds.", icon=":material/hourglass_top:")
    st.progress(js.fraction, text=f"Training **{path.name}**: epoch {js.epoch} of {js.epochs} · "
                                  f"{fmt_seconds(js.eta_s)}")
    # Built once per state of metrics.jsonl and shared by every session watching this job.
    fig = shared_figure(("live_curves", str(path), file_signature(path / "metrics.jsonl")), lambda: _live_curves(path))
    if fig is not None:
        chart(fig, key="live_curves")
        st.caption("ELBO and its two terms per epoch, test split solid, training split dashed. " + NATS_NOTE)
    else:
        st.caption("Starting: loading the data and building the model...")
    if st.button("Cancel training", key="cancel_training", icon=":material/stop_circle:"):
        with st.spinner("Stopping after the current step..."):
            jobs.cancel(path)
        st.rerun(scope="app")
    # A job about to end: with its progress drawn above (the page shows it meanwhile), wait for
    # the end here rather than until the next refresh, and show the result at once.
    if js.eta_s is not None and js.eta_s < LIVE_EVERY_S and finished_within(path, js.eta_s + FINISH_SLACK_S):
        st.rerun(scope="app")


def file_signature(path: Path) -> tuple | None:
    """What changes when a file is written: (inode, size, modification time); None if absent."""
    try:
        st_ = os.stat(path)
    except OSError:
        return None
    return st_.st_ino, st_.st_size, st_.st_mtime_ns


def _live_curves(path: Path):
    rows = read_metrics(path)
    return charts.training_curves(charts.metrics_arrays(rows), "Live training curves") if rows else None


# -- picking a test sample --------------------------------------------------------------------

def selected_index(n: int) -> int:
    """The selected test sample (kept in the URL as ?sample=), clipped to the test set."""
    i = state.get("sample", 0)
    i = int(i) if isinstance(i, int) and 0 <= i < n else 0
    state.set("sample", i)
    return i


def sample_input(n: int, key: str = "sample_index") -> int:
    """A number input for the selected sample that stays in step with map clicks."""
    current = selected_index(n)
    if st.session_state.get(key) != current:
        st.session_state[key] = current
    st.number_input(f"Selected test sample (0 to {n - 1})", min_value=0, max_value=n - 1, step=1, key=key,
                    on_change=lambda: state.set("sample", int(st.session_state[key])),
                    help="Click a point on the latent map, or type an index.")
    return selected_index(n)


def point_from_event(chart_key: str) -> int | None:
    """The test index of the point selected in a plotly chart (customdata), if any."""
    event = st.session_state.get(chart_key)
    try:
        points = event["selection"]["points"]
    except (KeyError, TypeError):
        return None
    for p in points:
        cd = p.get("customdata")
        if isinstance(cd, list):
            cd = cd[0] if cd else None
        if isinstance(cd, (int, float)) and not isinstance(cd, bool):
            return int(cd)
    return None


def show_sample(enc: explore.Encoded, i: int, recon: np.ndarray, caption_prefix: str = "") -> None:
    """Input and reconstruction side by side (images), or as bars (vectors)."""
    if enc.is_image:
        c1, c2 = st.columns(2)
        # alt: the images' accessible names (a caption is not one)
        c1.image(pictures.png(enc.x[i:i + 1], size=140), caption=f"{caption_prefix}input x (sample {i})",
                 alt=f"{caption_prefix}input x of test sample {i}")
        c2.image(pictures.png(recon[None], size=140), caption="reconstruction f(mu(x))",
                 alt=f"{caption_prefix}reconstruction f(mu(x)) of test sample {i}")
    else:
        chart(charts.vector_bars({"input x": enc.x[i], "reconstruction f(mu(x))": recon},
                                 f"Sample {i}: input and reconstruction", explore.feature_names(enc),
                                 explore.bar_scales(enc.x)["ranges"]),
              key=f"vec_{caption_prefix}{i}")
