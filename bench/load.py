"""Section load: a classroom on one server (issue 17). One real `streamlit run explorer/app.py`
on loopback with a trained digits run, and N simulated students driving it at once, without
browsers: each speaks Streamlit's own websocket protocol (`/_stcore/stream`) with the protobuf
messages of the installed streamlit package (BackMsg.rerun_script with a ClientState in,
ForwardMsg deltas out), so 30 sessions cost the client one asyncio thread.

    python -m bench --sections load                  # the figures (1, 10, 30 sessions, 0 and 1 jobs, soak)
    python -m bench.load --sessions 3 --seconds 20   # one configuration; exit status 1 on any error
    python -m bench.load --matrix 1,10,30 --seconds 60 --soak 600 --presses 30   # the section's figures

A simulated student opens the app, and in a loop with a person's pause between actions
(`think_s`, about 3 s) visits the latent map (changes the colouring, clicks a point), the
ELBO page (another sample) and Interpolate (endpoints A and B, moves t: a fragment rerun, as
the browser sends it). Widgets are found in the deltas by their key (Streamlit's element id
ends with "-<key>"), else by type and label; a widget it cannot find is logged and skipped.
Fragments with run_every (the live progress, the sidebar's job line) are rerun on the
server's auto_rerun timers, as the browser does.

Every ForwardMsg is checked: an exception element, an error alert, a compile error or a
page-not-found is an error (with the page and text). Rerun latency is from sending the
rerun to the script_finished of the run it started (new_session and script_finished carry
the run's id; a run that ends early for a rerun, e.g. st.switch_page, is followed to the next).

Server figures from /proc of the server process: resident memory, CPU seconds (utime + stime,
the training jobs are other processes). Loopback only, every wait bounded, stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .common import Context, percentile

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"  # loopback only: the harness never connects anywhere else
PAGES = ("latent-map", "elbo", "interpolate")
RERUN_TIMEOUT_S = 120.0  # a rerun that has not finished by then counts as an error
CLK_TCK = os.sysconf("SC_CLK_TCK")


def _say(message: str) -> None:
    print(f"bench: load: {message}", file=sys.stderr, flush=True)


# -- the server --------------------------------------------------------------------------------

def proc_rss(pid: int) -> int | None:
    """Resident memory of a process, bytes (/proc/PID/status VmRSS)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def proc_cpu_s(pid: int) -> float | None:
    """CPU seconds a process has used, user + system (/proc/PID/stat; its threads included)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return None


def train_digits(runs_dir: Path, epochs: int, name: str = "digits-2d") -> Path:
    """The run the students explore: digits, 2-D latent, the trainer's defaults, 1 thread."""
    out = runs_dir / name
    cmd = [sys.executable, "-m", "trainer", "fit", "--data", "digits", "--epochs", str(epochs),
           "--out", str(out), "--threads", "1", "--quiet"]
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, timeout=600)
    return out


def start_server(runs_dir: Path, log: Path, env: dict[str, str] | None = None):
    """`streamlit run explorer/app.py` headless on a free loopback port (tests/e2e/harness.App),
    waited for on /_stcore/health."""
    from tests.e2e import harness

    runs_dir.mkdir(parents=True, exist_ok=True)
    port = harness.free_port()
    full_env = {**os.environ, "VAE_RUNS_DIR": str(runs_dir), "PYTHONUNBUFFERED": "1", **(env or {})}
    cmd = [sys.executable, "-m", "streamlit", "run", "explorer/app.py", "--server.headless", "true",
           "--server.port", str(port), "--server.address", HOST, "--browser.gatherUsageStats", "false",
           "--server.fileWatcherType", "none"]
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    app = harness.App(f"http://{HOST}:{port}", port, runs_dir, log, proc)
    import urllib.request

    deadline = time.monotonic() + harness.SERVER_START_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"streamlit exited with status {proc.returncode}: {app.log_tail(10)}")
        try:
            with urllib.request.urlopen(f"{app.url}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return app
        except OSError:
            pass
        time.sleep(0.2)
    harness.stop_app(app)
    raise RuntimeError(f"streamlit did not answer /_stcore/health within {harness.SERVER_START_S} s")


# -- one simulated browser session ---------------------------------------------------------------

@dataclass
class Widget:
    """A widget the server drew: its element id (the key is its last part), type and label."""

    id: str
    kind: str  # the Element oneof: selectbox, number_input, slider, button, plotly_chart, ...
    label: str
    fragment_id: str  # the fragment it was drawn in ("" for the page itself)
    proto: object  # its protobuf message (options, min, max, data_type, ...)

    @property
    def key(self) -> str:
        return self.id.rsplit("-", 1)[-1] if self.id.startswith("$$ID") else self.id


@dataclass
class _Pending:
    """A rerun this session sent and waits for: the run it started, once new_session names it."""

    sent: float
    fragment_id: str
    done: asyncio.Future
    run_id: str | None = None


@dataclass
class SessionLog:
    """What one session saw."""

    name: str
    latency: dict[str, list[float]] = field(default_factory=dict)  # page -> seconds of each rerun it asked for
    errors: list[str] = field(default_factory=list)  # exceptions, error alerts, timeouts: "page: text"
    missing: list[str] = field(default_factory=list)  # widgets it looked for and could not find
    alerts: list[tuple[str, str, str]] = field(default_factory=list)  # (page, format, text) of every alert
    auto_reruns: int = 0  # fragment reruns the server's run_every timers asked for
    runs_finished: int = 0  # script runs of this session that ended (full and fragment, any cause)
    trains: list[dict] = field(default_factory=list)  # Train presses: name, outcome, message


class Session:
    """One browser tab, as the server sees it: a websocket, the widget states it sends back, the
    query string and page the app gave it."""

    def __init__(self, url: str, name: str):
        assert url.startswith(f"http://{HOST}:"), "the load harness connects to loopback only"
        self.url, self.log = url, SessionLog(name)
        self.ws = None
        self.page = ""  # the URL path of the page shown
        self.map_clicks = 0  # clicks on the latent map so far (its state counts them)
        self.query_string = ""
        self.pages: dict[str, str] = {}  # url path -> page_script_hash (from the navigation message)
        self.widgets: dict[str, Widget] = {}  # id -> widget, from the last finished full run (+ fragments)
        self._fresh: dict[str, Widget] | None = None  # the widgets of the full run going on
        self.states: dict[str, object] = {}  # id -> WidgetState this client sends with every rerun
        self._pending: _Pending | None = None
        self._runs: dict[str, list[str]] = {}  # script_run_id -> its fragment ids
        self._timers: dict[str, asyncio.Task] = {}  # fragment id -> its auto-rerun task
        self._reader: asyncio.Task | None = None
        self._events: list[str] = []  # the last lifecycle messages, for a rerun that never finished

    # -- the connection
    async def open(self, page: str) -> float:
        from websockets.asyncio.client import connect

        ws_url = self.url.replace("http://", "ws://") + "/_stcore/stream"
        self.ws = await asyncio.wait_for(connect(ws_url, subprotocols=["streamlit"], origin=self.url,
                                                 max_size=None, open_timeout=30), 60)
        self._reader = asyncio.create_task(self._read())
        return await self.rerun(page=page)

    async def close(self) -> None:
        for task in self._timers.values():
            task.cancel()
        self._timers.clear()
        if self.ws is not None:
            try:
                await asyncio.wait_for(self.ws.close(), 10)
            except (Exception, asyncio.TimeoutError):
                pass
        if self._reader is not None:
            self._reader.cancel()
            try:
                await self._reader
            except (asyncio.CancelledError, Exception):
                pass

    # -- sending
    def _client_state(self, page: str, fragment_id: str, auto: bool, extra: list | None = None):
        from streamlit.proto.ClientState_pb2 import ClientState

        cs = ClientState(query_string=self.query_string, page_script_hash=self.pages.get(page, ""),
                         page_name=page if page not in self.pages else "", fragment_id=fragment_id,
                         is_auto_rerun=auto)
        cs.context_info.timezone = "UTC"
        cs.context_info.locale = "en-US"
        cs.context_info.url = f"{self.url}/{page}"
        cs.widget_states.widgets.extend(list(self.states.values()) + (extra or []))
        return cs

    async def _send(self, cs) -> None:
        from streamlit.proto.BackMsg_pb2 import BackMsg

        msg = BackMsg()
        msg.rerun_script.CopyFrom(cs)
        await self.ws.send(msg.SerializeToString())

    async def rerun(self, page: str | None = None, fragment_id: str = "", triggers: list | None = None) -> float:
        """Ask for a rerun (of `page`, default the one shown; of one fragment if given) with the
        current widget states plus one-shot `triggers` (button presses); return its latency, s.
        The latency is also logged under the page's name."""
        if self._pending is not None:
            raise RuntimeError("one rerun at a time")
        page = self.page if page is None else page
        if not fragment_id:  # a full rerun: the browser drops its auto-rerun timers; the run sends new ones
            for task in self._timers.values():
                task.cancel()
            self._timers.clear()
            if page != self.page:  # another page: its widgets are others
                self.states.clear()
        self.page = page
        loop = asyncio.get_running_loop()
        pending = _Pending(time.perf_counter(), fragment_id, loop.create_future())
        self._pending = pending
        try:
            self._event(f"send [{fragment_id[:8]}]")
            await self._send(self._client_state(page, fragment_id, False, triggers))
            await asyncio.wait_for(asyncio.shield(pending.done), RERUN_TIMEOUT_S)
        except asyncio.TimeoutError:
            self.log.errors.append(f"{page}: no script_finished within {RERUN_TIMEOUT_S:.0f} s (fragment "
                                   f"{fragment_id[:8] or '-'}, run {pending.run_id}; last: {' | '.join(self._events[-8:])})")
            return float("nan")
        finally:
            self._pending = None
        seconds = pending.done.result() - pending.sent
        self.log.latency.setdefault(page or "home", []).append(seconds)
        return seconds

    def _event(self, text: str) -> None:
        self._events.append(f"{time.perf_counter():.2f} {text}")
        del self._events[:-20]

    async def _auto_rerun(self, fragment_id: str, interval: float) -> None:
        """What the browser's timer does for a fragment with run_every."""
        while True:
            await asyncio.sleep(interval)
            if self._pending is None:  # the browser would send it anyway; waiting keeps the latency clean
                self.log.auto_reruns += 1
                self._event(f"auto [{fragment_id[:8]}]")
                await self._send(self._client_state(self.page, fragment_id, True))

    # -- receiving
    async def _read(self) -> None:
        from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

        try:
            async for raw in self.ws:
                msg = ForwardMsg()
                msg.ParseFromString(raw)
                self._handle(msg)
        except Exception as e:  # the connection closed: a pending rerun will time out and say so
            if self._pending is not None:
                self.log.errors.append(f"{self.page}: connection lost ({type(e).__name__}: {e})")

    def _handle(self, msg) -> None:
        from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

        kind = msg.WhichOneof("type")
        if kind == "new_session":
            run_id, fragments = msg.metadata.run.script_run_id, list(msg.metadata.run.fragment_ids)
            self._runs[run_id] = fragments
            self._event(f"start {run_id[:8]} [{','.join(f[:8] for f in fragments)}]")
            if not fragments:
                self._fresh = {}
            p = self._pending
            if p is not None and p.run_id is None and (not fragments or p.fragment_id in fragments):
                p.run_id = run_id
        elif kind == "navigation":
            self.pages = {pg.url_pathname: pg.page_script_hash for pg in msg.navigation.app_pages}
            shown = [k for k, h in self.pages.items() if h == msg.navigation.page_script_hash]
            if shown:
                self.page = shown[0]
        elif kind == "page_info_changed":
            self.query_string = msg.page_info_changed.query_string
        elif kind == "delta":
            self._delta(msg.delta)
        elif kind == "auto_rerun":
            fid, interval = msg.auto_rerun.fragment_id, max(0.1, msg.auto_rerun.interval)
            if fid not in self._timers:
                self._timers[fid] = asyncio.get_running_loop().create_task(self._auto_rerun(fid, interval))
        elif kind == "stop_auto_rerun":
            for fid in msg.stop_auto_rerun.fragment_ids:
                task = self._timers.pop(fid, None)
                if task:
                    task.cancel()
        elif kind == "session_event":
            if msg.session_event.HasField("script_compilation_exception"):
                self.log.errors.append(f"{self.page}: compile error: {msg.session_event.script_compilation_exception.message}")
        elif kind == "page_not_found":
            self.log.errors.append(f"{self.page}: page not found ({msg.page_not_found.page_name})")
        elif kind == "script_finished":
            self.log.runs_finished += 1
            run_id = msg.metadata.run.script_run_id
            self._event(f"end {run_id[:8]} {ForwardMsg.ScriptFinishedStatus.Name(msg.script_finished)}")
            fragments = self._runs.pop(run_id, [])
            ok = msg.script_finished in (ForwardMsg.FINISHED_SUCCESSFULLY, ForwardMsg.FINISHED_FRAGMENT_RUN_SUCCESSFULLY)
            if not fragments and ok and self._fresh is not None:
                self.widgets, self._fresh = self._fresh, None
                self.states = {i: s for i, s in self.states.items() if i in self.widgets}
            p = self._pending
            if p is not None and p.run_id is not None and run_id == p.run_id:
                if msg.script_finished == ForwardMsg.FINISHED_EARLY_FOR_RERUN:
                    p.run_id = None  # st.rerun / st.switch_page: the next run is the one to wait for
                elif not p.done.done():
                    p.done.set_result(time.perf_counter())

    def _delta(self, delta) -> None:
        if delta.WhichOneof("type") != "new_element":
            return
        el = delta.new_element
        kind = el.WhichOneof("type")
        if kind is None:
            return
        sub = getattr(el, kind)
        if kind == "exception":
            self.log.errors.append(f"{self.page}: exception {sub.type}: {sub.message[:300]}")
            return
        if kind == "alert":
            from streamlit.proto.Alert_pb2 import Alert

            fmt = Alert.Format.Name(sub.format)
            self.log.alerts.append((self.page, fmt, sub.body))
            if sub.format == Alert.ERROR:
                self.log.errors.append(f"{self.page}: error shown: {sub.body[:300]}")
            return
        fields = sub.DESCRIPTOR.fields_by_name
        if "id" in fields and sub.id:
            w = Widget(sub.id, kind, getattr(sub, "label", "") or "", delta.fragment_id, sub)
            self.widgets[w.id] = w  # a fragment's rerun updates its widgets in place
            if self._fresh is not None:
                self._fresh[w.id] = w
            if "set_value" in fields and sub.set_value:  # the script set it: the browser now holds that value
                self.states[w.id] = widget_state(w, proto_value(w))

    # -- widgets
    def find(self, key: str | None = None, kind: str | None = None, label: str | None = None) -> Widget | None:
        """The widget with this key, else the first of this type whose label contains `label`;
        None (and logged) when there is none."""
        for w in self.widgets.values():
            if key is not None and w.key == key:
                return w
        for w in self.widgets.values():
            if (kind is None or w.kind == kind) and label is not None and label.lower() in w.label.lower():
                return w
        self.log.missing.append(f"{self.page}: {key or ''}{'/' + kind if kind else ''}{'/' + label if label else ''}")
        return None

    def value(self, w: Widget):
        """What widget w holds in this browser: the value last sent, else as the server drew it."""
        state = self.states.get(w.id)
        if state is None:
            return proto_value(w)
        v = getattr(state, state.WhichOneof("value"))
        return list(v.data) if hasattr(v, "data") else v

    def set(self, w: Widget, value) -> None:
        """Give widget w a value, the way the browser encodes it for that widget type."""
        self.states[w.id] = widget_state(w, value)

    async def change(self, w: Widget | None, value) -> float | None:
        """Set w to value and rerun (its fragment alone if it was drawn in one): the latency."""
        if w is None:
            return None
        self.set(w, value)
        return await self.rerun(fragment_id=w.fragment_id)

    async def press(self, w: Widget | None) -> float | None:
        if w is None:
            return None
        return await self.rerun(fragment_id=w.fragment_id, triggers=[widget_state(w, True)])


def widget_state(w: Widget, value):
    """A WidgetState for widget w holding value (selectbox/radio: the option as shown)."""
    from streamlit.proto.NumberInput_pb2 import NumberInput
    from streamlit.proto.WidgetStates_pb2 import WidgetState

    s = WidgetState(id=w.id)
    if w.kind in ("button", "download_button"):
        s.trigger_value = bool(value)
    elif w.kind == "checkbox":
        s.bool_value = bool(value)
    elif w.kind == "slider" and len(w.proto.options):  # a select_slider: its options as shown
        s.string_array_value.data.extend(str(v) for v in (value if isinstance(value, (list, tuple)) else [value]))
    elif w.kind == "slider":
        s.double_array_value.data.extend(float(v) for v in (value if isinstance(value, (list, tuple)) else [value]))
    elif w.kind == "number_input":
        if w.proto.data_type == NumberInput.INT:
            s.int_value = int(value)
        else:
            s.double_value = float(value)
    elif w.kind == "plotly_chart":
        s.string_value = value if isinstance(value, str) else json.dumps(value)
    elif w.kind == "bidi_component":  # a components-v2 component: its whole state, as JSON
        s.json_value = json.dumps(value)
    else:  # selectbox, radio, text_input, text_area: a string
        s.string_value = str(value)
    return s


def proto_value(w: Widget):
    """The value a widget is drawn with: the one the script set (set_value), else its default
    (a selectbox's and a radio's: the option as shown; a slider's: a list)."""
    p = w.proto
    fields = p.DESCRIPTOR.fields_by_name
    was_set = "set_value" in fields and p.set_value
    if w.kind in ("selectbox", "radio"):
        if was_set:
            return p.raw_value
        return p.options[p.default] if p.HasField("default") and p.default < len(p.options) else None
    if w.kind == "slider" and len(p.options):  # a select_slider: the options as shown
        return list(p.raw_value) if was_set else [p.options[int(i)] for i in p.default if 0 <= int(i) < len(p.options)]
    v = p.value if was_set and "value" in fields else getattr(p, "default", None)
    return list(v) if w.kind == "slider" else v


# -- a student ------------------------------------------------------------------------------------

def _number_range(w: Widget) -> tuple[int, int]:
    lo = int(w.proto.min) if w.proto.has_min else 0
    hi = int(w.proto.max) if w.proto.has_max else lo + 100
    return lo, hi


async def explore_once(s: Session, rng: random.Random, pause) -> None:
    """One round of a student's exploring: the latent map, the ELBO page, Interpolate."""
    await s.rerun(page="latent-map")
    await pause()
    colour = s.find(key="color_by", kind="selectbox", label="colour")
    if colour is not None and len(colour.proto.options):
        await s.change(colour, rng.choice(list(colour.proto.options)))
        await pause()
    chart = s.find(key="latent_map_chart", kind="bidi_component")  # the in-page map (a click: setStateValue)
    n_test = 0
    sample = s.find(key="sample_index", kind="number_input", label="sample")
    if sample is not None:
        n_test = _number_range(sample)[1] + 1
    if chart is not None and n_test:
        s.map_clicks += 1
        await s.change(chart, {"selected": {"index": rng.randrange(n_test), "click": s.map_clicks}})
        await pause()

    await s.rerun(page="elbo")
    await pause()
    sample = s.find(key="elbo_sample_index", kind="number_input", label="sample")
    if sample is not None:
        await s.change(sample, rng.randint(*_number_range(sample)))
        await pause()

    await s.rerun(page="interpolate")
    await pause()
    for key, label in (("endpoint_a", "endpoint a"), ("endpoint_b", "endpoint b")):
        w = s.find(key=key, kind="number_input", label=label)
        if w is not None:
            await s.change(w, rng.randint(*_number_range(w)))
            await pause()
    for _ in range(3):  # releases of t (a drag itself sends nothing): the component's fragment alone
        t = s.find(key="interp_component", kind="bidi_component")
        if t is None:
            break
        await s.change(t, {"t": round(rng.uniform(0, 1), 2)})
        await pause()


async def press_train(s: Session, run_name: str, seed: int, epochs: int) -> dict:
    """Open Train, fill in a run name, seed and epochs of one's own, press Train; what the page
    then said: started (the run is this session's job), refused (with the page's message) or
    an error."""
    await s.rerun(page="train")
    fields = {("train_name", "text_input", "run name"): run_name, ("train_seed", "number_input", "seed"): seed,
              ("train_epochs", "number_input", "epochs"): epochs}
    for (key, kind, label), value in fields.items():
        w = s.find(key=key, kind=kind, label=label)
        if w is not None:
            s.set(w, value)
    submit = s.find(key="train_submit", kind="button", label="train")
    if submit is None:
        return {"name": run_name, "outcome": "no Train button"}
    before = len(s.log.alerts)
    errors_before = len(s.log.errors)
    await s.press(submit)
    said = [(fmt, text) for _, fmt, text in s.log.alerts[before:]]
    refused = [text for fmt, text in said if text.startswith("Not started")]
    if len(s.log.errors) > errors_before:
        outcome = "error"
    elif refused:
        outcome = "refused"
    else:
        outcome = "started"
    return {"name": run_name, "outcome": outcome, "message": refused[0] if refused else ""}


async def student(url: str, name: str, rng: random.Random, stop_at: float, think_s: float,
                  train: dict | None = None) -> SessionLog:
    """One simulated student until stop_at (monotonic): opens the app, explores in rounds with a
    pause of about think_s between actions; with `train` ({"seed", "epochs"}) presses Train once."""
    s = Session(url, name)

    async def pause():  # a person reading; ends the student's visit when the time is up
        left = stop_at - time.monotonic()
        if left <= 0:
            raise _StopAt
        await asyncio.sleep(min(left, think_s * rng.uniform(0.5, 1.5)))

    try:
        await asyncio.sleep(rng.uniform(0, think_s))  # people do not arrive in the same millisecond
        await s.open("latent-map")
        await pause()
        if train is not None:
            s.log.trains.append(await press_train(s, f"load-{name}", train["seed"], train["epochs"]))
            await pause()
        while time.monotonic() < stop_at:
            await explore_once(s, rng, pause)
    except _StopAt:
        pass
    except Exception as e:  # a protocol surprise is an error of the run, not a crash of the harness
        s.log.errors.append(f"{s.page}: harness: {type(e).__name__}: {e}")
    finally:
        await s.close()
    return s.log


class _StopAt(Exception):
    """A student's time is up (raised by its pause between actions)."""


async def crowd(url: str, sessions: int, seconds: float, think_s: float, seed: int = 0,
                trainers: int = 0, train_epochs: int = 2000) -> list[SessionLog]:
    """`sessions` students at once for `seconds`; the first `trainers` of them press Train once."""
    stop_at = time.monotonic() + seconds
    tasks = []
    for i in range(sessions):
        train = {"seed": 1000 + seed * 100 + i, "epochs": train_epochs} if i < trainers else None
        tasks.append(student(url, f"s{seed}-{i}", random.Random(seed * 1000 + i), stop_at, think_s, train))
    # bounded: every rerun has its own timeout; this is the last resort
    return await asyncio.wait_for(asyncio.gather(*tasks), seconds + RERUN_TIMEOUT_S + 60)


# -- figures ----------------------------------------------------------------------------------------

def summarise(logs: list[SessionLog]) -> dict:
    """Per page: reruns, p50/p95 latency (s); all errors; widgets not found; train outcomes."""
    pages: dict[str, list[float]] = {}
    for log in logs:
        for page, values in log.latency.items():
            pages.setdefault(page, []).extend(v for v in values if v == v)
    return {
        "sessions": len(logs),
        "pages": {p: {"reruns": len(v), "p50_s": percentile(v, 50), "p95_s": percentile(v, 95),
                      "max_s": max(v) if v else None} for p, v in sorted(pages.items())},
        "reruns": sum(len(v) for v in pages.values()),
        "runs_finished": sum(log.runs_finished for log in logs),
        "auto_reruns": sum(log.auto_reruns for log in logs),
        "errors": [e for log in logs for e in log.errors],
        "missing_widgets": sorted({m for log in logs for m in log.missing}),
        "trains": [t for log in logs for t in log.trains],
    }


def measure(app, sessions: int, seconds: float, think_s: float, seed: int = 0, trainers: int = 0,
            train_epochs: int = 2000) -> dict:
    """Run one crowd against the server; its summary plus the server's CPU and memory, and
    the harness's own CPU (it must stay small beside the server's)."""
    pid = app.proc.pid
    cpu0, client0, t0 = proc_cpu_s(pid), time.process_time(), time.perf_counter()
    logs = asyncio.run(crowd(app.url, sessions, seconds, think_s, seed, trainers, train_epochs))
    wall = time.perf_counter() - t0
    out = summarise(logs)
    cpu = (proc_cpu_s(pid) or 0) - (cpu0 or 0)
    out.update(wall_s=wall, server_cpu_s=cpu, server_cores=cpu / wall if wall else None,
               cpu_s_per_rerun=cpu / out["runs_finished"] if out["runs_finished"] else None,
               client_cpu_s=time.process_time() - client0, rss_bytes=proc_rss(pid))
    return out


def start_job(app, name: str, epochs: int, seed: int) -> Path:
    """A training job through the app's own service (the queue, its threads), as Train starts it."""
    from explorer.services import jobs
    from trainer import RunConfig

    cfg = RunConfig(data="digits")
    cfg.train.epochs, cfg.train.seed = epochs, seed
    return jobs.start(app.runs_dir, name, cfg, jobs.train_threads())


def stop_jobs(runs_dir: Path) -> None:
    from tests.e2e import harness

    for job in Path(runs_dir).glob("*/job.json"):
        harness.stop_training(job.parent)


def train_presses(app, presses: int, seconds: float, think_s: float, limits: dict) -> dict:
    """`presses` students each press Train once within `seconds`: how many jobs run, wait, were
    refused (with a message), and whether every press is accounted for (nothing lost)."""
    from explorer.services import jobs

    res = measure(app, presses, seconds, think_s, seed=7, trainers=presses)
    trains = res["trains"]
    started = [t["name"] for t in trains if t["outcome"] == "started"]
    states = {n: jobs.job_state(app.runs_dir / n) for n in started}
    running = sum(1 for js in states.values() if js is not None and js.state == "running")
    queued = sum(1 for js in states.values() if js is not None and js.state == "queued")
    on_disk = [n for n in started if (app.runs_dir / n / jobs.JOB_FILE).exists()]
    out = {"presses": len(trains), "started": len(started), "running": running, "queued": queued,
           "refused": sum(1 for t in trains if t["outcome"] == "refused"),
           "errors": sum(1 for t in trains if t["outcome"] == "error"),
           "other": [t for t in trains if t["outcome"] not in ("started", "refused", "error")],
           "messages": sorted({t["message"] for t in trains if t["message"]}),
           "lost": presses - len(trains) + (len(started) - len(on_disk)), "limits": limits,
           "session_errors": res["errors"]}
    stop_jobs(app.runs_dir)
    return out


def run_figures(workdir: Path, sessions: tuple[int, ...], seconds: float, soak_s: float, think_s: float,
                presses: int, train_epochs: int, leave_s: float = 5.0, say=_say) -> dict:
    """The section's measurements on one server: warm-up; every (sessions, jobs) configuration;
    the soak; 30 presses of Train; memory at each point (after the soak's sessions have left:
    leave_s later; Streamlit keeps a closed session's state for server.disconnectedSessionTTL,
    120 s by default)."""
    runs = workdir / "load-runs"
    train_digits(runs, train_epochs)
    limits = {"VAE_MAX_JOBS": os.environ.get("VAE_MAX_JOBS", "1"),
              "VAE_MAX_QUEUED": os.environ.get("VAE_MAX_QUEUED", ""),
              "VAE_MAX_JOBS_PER_SESSION": os.environ.get("VAE_MAX_JOBS_PER_SESSION", "")}
    app = start_server(runs, workdir / "load-server.log")
    from tests.e2e import harness

    out: dict = {"think_s": think_s, "seconds": seconds, "soak_s": soak_s, "configs": [], "rss_bytes": {}}
    try:
        out["rss_bytes"]["start"] = proc_rss(app.proc.pid)
        say("warm-up: one session visits every page")
        out["warmup"] = measure(app, 1, max(10.0, 4 * think_s), think_s, seed=99)
        out["rss_bytes"]["warm"] = proc_rss(app.proc.pid)
        for n_jobs in (0, 1):
            job = start_job(app, "load-job", 100_000, 0) if n_jobs else None
            for n in sessions:
                say(f"{n} session(s), {n_jobs} training job(s), {seconds:.0f} s")
                res = measure(app, n, seconds, think_s, seed=n)
                res.update(jobs=n_jobs)
                out["configs"].append(res)
            if job is not None:
                harness.stop_training(job)
        if soak_s > 0:
            n = max(sessions)
            say(f"soak: {n} sessions for {soak_s:.0f} s")
            out["rss_bytes"]["before_soak"] = proc_rss(app.proc.pid)
            out["soak"] = measure(app, n, soak_s, think_s, seed=500)
            out["rss_bytes"]["after_soak"] = proc_rss(app.proc.pid)
            time.sleep(leave_s)  # the sessions have left
            out["rss_bytes"]["after_leave"] = proc_rss(app.proc.pid)
        if presses:
            say(f"{presses} presses of Train within {seconds:.0f} s")
            out["train_presses"] = train_presses(app, presses, seconds, think_s, limits)
    finally:
        harness.stop_app(app)
    return out


def section_load(ctx: Context) -> None:
    """The bench section: figures beside one session alone, in the same run."""
    q = ctx.quick
    sessions = (1, 3) if q else (1, 10, 30)
    res = run_figures(ctx.workdir, sessions, seconds=15 if q else 60, soak_s=10 if q else 600,
                      think_s=1.0 if q else 3.0, presses=5 if q else 30, train_epochs=5 if q else 30, leave_s=5 if q else 130)
    ctx.sections["load"] = res
    base = {(c["jobs"], p): v["p95_s"] for c in res["configs"] if c["sessions"] == 1
            for p, v in c["pages"].items()}
    for c in res["configs"]:
        for page in PAGES:
            v = c["pages"].get(page)
            if v is None:
                continue
            b = base.get((c["jobs"], page))
            target = "< 1.5 s" if c["jobs"] == 0 else "< 2 s"
            limit = 1.5 if c["jobs"] == 0 else 2.0
            ctx.row("load", f"{page} p95 rerun, {c['sessions']} sessions, {c['jobs']} job(s)", v["p95_s"], "s",
                    ratio=v["p95_s"] / b if b else None, baseline="1 session alone", target=target,
                    met=v["p95_s"] < limit if c["sessions"] == max(sessions) else None,
                    note=f"p50 {v['p50_s']:.3f} s over {v['reruns']} reruns")
        ctx.row("load", f"errors, {c['sessions']} sessions, {c['jobs']} job(s)", len(c["errors"]), "",
                target="0", met=not c["errors"], note="; ".join(c["errors"][:3]))
        ctx.row("load", f"server CPU per script run, {c['sessions']} sessions, {c['jobs']} job(s)",
                c["cpu_s_per_rerun"], "s", note=f"{c['runs_finished']} runs ({c['auto_reruns']} by run_every timers); "
                                                 f"{c['server_cores']:.2f} cores busy; harness {c['client_cpu_s']:.1f} CPU s")
    # Memory. The goal's "warm" level is the server's once the crowd has warmed it up: before the
    # soak, after every configuration above has filled the bounded caches (figures, paths,
    # breakdowns). "warm, one session" (after the one-session warm-up, caches nearly empty) is
    # shown beside it, with the growth from it, for information.
    rss = res["rss_bytes"]
    one, crowd = rss.get("warm"), rss.get("before_soak")
    for when, label in (("start", "start"), ("warm", "warm, one session"), ("before_soak", "warm, the crowd (before the soak)"),
                        ("after_soak", "after the soak"), ("after_leave", "after the sessions left")):
        if not rss.get(when):
            continue
        goal = crowd if when in ("after_soak", "after_leave") else None
        note = f"{rss[when] / one:.2f}x the one-session warm level" if one and when in ("before_soak", "after_soak", "after_leave") else ""
        ctx.row("load", f"server RSS, {label}", rss[when] / 2**20, "MiB", ratio=rss[when] / goal if goal else None,
                baseline="warm (before the soak)" if goal else "", target="< 1.10x" if goal else "",
                met=rss[when] / goal < 1.10 if goal else None, note=note)
    tp = res.get("train_presses")
    if tp:
        ctx.row("load", f"{tp['presses']} Train presses: jobs running", tp["running"], "",
                target=f"= VAE_MAX_JOBS ({tp['limits']['VAE_MAX_JOBS']})",
                met=tp["running"] == int(tp["limits"]["VAE_MAX_JOBS"] or 1) and tp["lost"] == 0,
                note=f"{tp['queued']} queued, {tp['refused']} refused with a message, {tp['lost']} lost, "
                     f"{tp['errors']} errors")


def print_summary(res: dict) -> None:
    print(f"{'sessions':>8} {'jobs':>4} {'page':<12} {'reruns':>6} {'p50 s':>7} {'p95 s':>7}  errors")
    for c in res["configs"] if "configs" in res else [res]:
        for page, v in c["pages"].items():
            print(f"{c['sessions']:>8} {c.get('jobs', 0):>4} {page:<12} {v['reruns']:>6} {v['p50_s']:>7.3f} "
                  f"{v['p95_s']:>7.3f}  {len(c['errors'])}")
        print(f"{'':>8} server CPU {c['server_cpu_s']:.1f} s ({c['cpu_s_per_rerun'] or 0:.3f} s per run), "
              f"harness CPU {c['client_cpu_s']:.1f} s, RSS {(c['rss_bytes'] or 0) / 2**20:.0f} MiB")
        for e in c["errors"][:10]:
            print(f"  error: {e}")
        if c["missing_widgets"]:
            print(f"  widgets not found: {', '.join(c['missing_widgets'][:10])}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.load", description="One crowd of simulated students "
                                "against a fresh server on loopback; exit status 1 on any error.")
    p.add_argument("--sessions", type=int, default=3)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--think", type=float, default=3.0, help="seconds between a student's actions (about)")
    p.add_argument("--trainers", type=int, default=0, help="how many of the students press Train once")
    p.add_argument("--jobs", type=int, default=0, choices=(0, 1), help="a training job running meanwhile")
    p.add_argument("--epochs", type=int, default=5, help="epochs of the digits run they explore")
    p.add_argument("--json", default=None, help="write the summary here")
    p.add_argument("--matrix", default="", help="the section's figures instead: session counts, e.g. 1,10,30, "
                   "each with 0 and 1 training jobs, then --soak and --presses")
    p.add_argument("--soak", type=float, default=0.0, help="with --matrix: seconds of the soak (largest count)")
    p.add_argument("--presses", type=int, default=0, help="with --matrix: students pressing Train at once")
    p.add_argument("--leave", type=float, default=5.0, help="with --matrix: seconds after the soak before the "
                   "last memory reading (Streamlit drops a closed session's state after 120 s)")
    args = p.parse_args(argv)
    import tempfile

    if args.matrix:
        counts = tuple(int(n) for n in args.matrix.split(",") if n.strip())
        with tempfile.TemporaryDirectory(prefix="vae-load-") as tmp:
            res = run_figures(Path(tmp), counts, args.seconds, args.soak, args.think, args.presses, args.epochs,
                              leave_s=args.leave)
        print_summary(res)
        print("server RSS, MiB: " + ", ".join(f"{k} {v / 2**20:.0f}" for k, v in res["rss_bytes"].items() if v))
        if res.get("train_presses"):
            print("Train presses: " + json.dumps({k: v for k, v in res["train_presses"].items()
                                                  if k != "session_errors"}))
        if args.json:
            from trainer.fileio import atomic_write_json

            from .__main__ import _clean

            atomic_write_json(Path(args.json), _clean(res))
        return 1 if any(c["errors"] for c in res["configs"]) else 0

    with tempfile.TemporaryDirectory(prefix="vae-load-") as tmp:
        runs = Path(tmp) / "runs"
        train_digits(runs, args.epochs)
        app = start_server(runs, Path(tmp) / "server.log")
        from tests.e2e import harness

        try:
            if args.jobs:
                start_job(app, "load-job", 100_000, 0)
            res = measure(app, args.sessions, args.seconds, args.think, trainers=args.trainers, train_epochs=2)
            res["jobs"] = args.jobs
        finally:
            harness.stop_app(app)
    print_summary(res)
    if args.json:
        from trainer.fileio import atomic_write_json

        from .__main__ import _clean

        atomic_write_json(Path(args.json), _clean(res))
    return 1 if res["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
