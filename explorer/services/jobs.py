"""Training jobs: `python -m trainer fit` as a separate process, one per run folder.

The app never trains in its own script thread. `start` writes the run's settings to
`job-config.json` in the run folder and launches the trainer's command line on it
(`python -m trainer fit --config RUN/job-config.json --out RUN`) in a new process group (so
that Cancel can signal the whole group) with its output going to `train.log` in the run
folder, and records the launch in `job.json`:

    job-config.json  the settings, in config.json's format      written once, before launch
    job.json         {"pid", "config", "command", "started"}    written once, at launch

The trainer itself writes `status.json` (running/done/failed/cancelled, epoch, heartbeat,
message) and `metrics.jsonl`; `job_state` combines those with whether the process is still
alive, so a process that died without a word is reported as failed, with the last error
line of its log.

No duplicates: `job.json` is created with O_EXCL (one job per run folder, even from two
browser tabs or two app processes), and a lock on the runs folder serialises the start of
jobs so that a second click with the same settings finds the first job instead of starting
a twin.

A crowd cannot fill the queue (issue 17): at most max_jobs_per_session() jobs of one browser
session ($VAE_MAX_JOBS_PER_SESSION, default 2) and max_queued_jobs() of the whole runs folder
($VAE_MAX_QUEUED, default 8) are queued or training at once; a press of Train beyond either
is refused with a message that says why and when to press again (QueueFull, a JobBusy: the
Train page shows it as "Not started: ..."). Nothing is lost: a refused press leaves no run
folder behind and the form keeps its settings. The session is recorded in job.json.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from trainer import ModelConfig, RunConfig, TrainerError
from trainer.fileio import atomic_write_json
from trainer.liveness import process_alive
from trainer.run_names import MAX_APP_RUN_NAME, RESERVED_NAMES, check_run_name, run_name_from, safe_run_path
from trainer.runs import INFORMATIONAL, read_metrics, read_status_dead_as_failed, write_status

from . import job_slot

REPO_ROOT = Path(__file__).resolve().parents[2]  # where `python -m trainer` is importable
JOB_FILE = "job.json"
JOB_CONFIG_FILE = "job-config.json"  # the settings a new run's trainer reads (fit --config)
LOG_FILE = "train.log"
ACTIVE = ("queued", "running")

# Popen objects of the jobs this process started: polling them reaps finished children
# (a finished child that is never waited for stays a zombie and looks alive to kill(pid, 0)).
_PROCS: dict[int, subprocess.Popen] = {}


class JobBusy(TrainerError):
    """A job for this run (or with these exact settings) is already queued or running."""


class QueueFull(JobBusy):
    """This session, or the whole runs folder, already has as many jobs queued or training as
    it may (max_jobs_per_session, max_queued_jobs)."""


@dataclass
class JobState:
    state: str  # queued | running | done | failed | cancelled
    epoch: int  # epochs finished
    epochs: int  # epochs asked for
    message: str  # the trainer's one-line message (failed / cancelled), else ""
    pid: int | None  # the training process
    eta_s: float | None  # seconds left, estimated from the epochs so far; None before the first

    @property
    def active(self) -> bool:
        return self.state in ACTIVE

    @property
    def fraction(self) -> float:
        return min(1.0, self.epoch / self.epochs) if self.epochs else 0.0


# -- the command line ------------------------------------------------------------------------

def write_job_config(run_dir: Path, cfg: RunConfig) -> Path:
    """Write `cfg` (in config.json's format) to run_dir/JOB_CONFIG_FILE, atomically; the
    trainer of fit_command reads it. Returns its path."""
    path = Path(run_dir) / JOB_CONFIG_FILE
    atomic_write_json(path, cfg.to_dict())
    return path


def fit_command(cfg: RunConfig, out: Path, threads: int) -> list[str]:
    """The `python -m trainer fit` argument list that trains a new run into `out` with the
    settings write_job_config(out, cfg) wrote: every setting travels in that file, so none
    can be left behind by a flag forgotten here. With cfg.train.world_size > 1 it starts that
    many processes (torchrun), sharing the threads."""
    return [*_trainer(cfg), "--config", str(Path(out) / JOB_CONFIG_FILE), "--out", str(out),
            *_this_machine(cfg, threads), "--quiet"]


def resume_command(cfg: RunConfig, out: Path, threads: int, lr: float | None = None) -> list[str]:
    """The `python -m trainer fit --resume` argument list that continues the run in `out`
    (whose config.json, `cfg`, holds its settings), at learning rate `lr` if given."""
    new_lr = ["--lr", repr(float(lr))] if lr is not None else []
    return [*_trainer(cfg), "--resume", "--out", str(out), *_this_machine(cfg, threads), *new_lr, "--quiet"]


def _trainer(cfg: RunConfig) -> list[str]:
    """`python -m trainer fit`, in cfg.train.world_size processes."""
    nproc = ["--nproc", str(cfg.train.world_size)] if cfg.train.world_size > 1 else []
    return [sys.executable, "-m", "trainer", "fit", *nproc]


def _this_machine(cfg: RunConfig, threads: int) -> list[str]:
    """Where the job trains: the config's device, and `threads` shared out among its processes."""
    return ["--device", cfg.train.device, "--threads", str(max(1, threads // cfg.train.world_size))]


def _settings(cfg: RunConfig) -> dict:
    """What makes two jobs the same job: the settings, not the informational fields."""
    d = cfg.to_dict()
    for name in INFORMATIONAL:
        d.pop(name, None)
    d["train"].pop("threads", None)
    return d


# -- processes ---------------------------------------------------------------------------------

def pid_alive(pid: object) -> bool:
    """Whether process `pid` is running (a zombie counts as finished): for a child this app
    started, whether it has exited; for any other, the trainer's check (liveness.process_alive)."""
    proc = _PROCS.get(pid) if isinstance(pid, int) else None
    if proc is not None:
        return proc.poll() is None
    return process_alive(pid)


def read_job(run_dir: Path) -> dict | None:
    try:
        job = json.loads((Path(run_dir) / JOB_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return job if isinstance(job, dict) else None


def last_error_line(run_dir: Path) -> str:
    """The trainer's last `error: ...` line in train.log (its one-line message), or ''."""
    try:
        lines = (Path(run_dir) / LOG_FILE).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return ""
    for line in reversed(lines):
        if line.startswith("error: "):
            return line[len("error: "):].strip()[:500]
    return ""


# -- what the pages ask every second, shared by the sessions ---------------------------------
# Every open page with a job in view asks job_state and queue_position once a second (the
# sidebar's job line, the progress bar): with 8 jobs in a 40-run folder that was 85 ms of
# file reads per session per second, more than 2 cores for 30 sessions (issue 17). The
# answers are kept for STATE_MAX_AGE_S and shared by every session of this server; a job
# record or status written since (the files' modification times) is read at once, and what
# this process starts or cancels clears them. Decisions (start, resume, cancel) read afresh.
STATE_MAX_AGE_S = 0.5
_kept: dict[tuple, tuple[float, object]] = {}
_kept_lock = threading.Lock()


def _shared(key: tuple, compute):
    now = time.monotonic()
    with _kept_lock:
        hit = _kept.get(key)
    if hit is not None and now - hit[0] < STATE_MAX_AGE_S:
        return hit[1]
    value = compute()
    with _kept_lock:
        if len(_kept) > 10_000:  # old keys (files since rewritten): drop them all, they are cheap to refill
            _kept.clear()
        _kept[key] = (now, value)
    return value


def _forget() -> None:
    with _kept_lock:
        _kept.clear()


def _mtime(path: Path) -> int:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return 0


def job_state(run_dir: Path) -> JobState | None:
    """The state of the run's training job, or None if it never had one (at most
    STATE_MAX_AGE_S old where the job's files have not changed since)."""
    run_dir = Path(run_dir)
    key = ("state", str(run_dir), _mtime(run_dir / JOB_FILE), _mtime(run_dir / "status.json"))
    return _shared(key, lambda: _job_state(run_dir))


def _job_state(run_dir: Path) -> JobState | None:
    """job_state, read now."""
    run_dir = Path(run_dir)
    status = read_status_dead_as_failed(run_dir)
    job = read_job(run_dir)
    if status is None and job is None:
        return None
    status = status or {"state": "queued"}
    pid = status.get("pid") if isinstance(status.get("pid"), int) else (job or {}).get("pid")
    state, message = status["state"], str(status.get("message") or "")
    if state in ACTIVE and not pid_alive(pid):
        state = "failed"
        message = last_error_line(run_dir) or message or \
            "the training process stopped without finishing: retrain the run"
    epochs = status.get("epochs") or (job or {}).get("config", {}).get("train", {}).get("epochs") or 0
    epoch = int(status.get("epoch") or 0)
    return JobState(state, epoch, int(epochs), message, pid if isinstance(pid, int) else None,
                    _eta(run_dir, status, epoch, int(epochs)) if state in ACTIVE else None)


def _eta(run_dir: Path, status: dict, epoch: int, epochs: int) -> float | None:
    """Seconds left: the mean time per finished epoch (from metrics.jsonl) times the epochs left."""
    started = status.get("started")
    if not isinstance(started, (int, float)):
        return None
    last = _last_timed_row(run_dir)
    if last is not None and last.get("epoch"):
        done = last["epoch"]
    else:  # no row in the file's tail, or one without its epoch: count the rows, as before
        rows = [r for r in read_metrics(run_dir) if isinstance(r.get("wall_time"), (int, float))]
        if not rows:
            return None
        last, done = rows[-1], rows[-1].get("epoch") or len(rows)
    per_epoch = (last["wall_time"] - started) / max(1, done)
    return max(0.0, per_epoch * (epochs - done))


METRICS_TAIL_BYTES = 16_384  # the end of metrics.jsonl that last_metrics_row reads


def _last_timed_row(run_dir: Path) -> dict | None:
    """The last readable row of metrics.jsonl with a wall_time, from the file's last
    METRICS_TAIL_BYTES only; None if there is none there. The job line asks for the time left
    every second: reading the whole file made that grow with the run's epochs (issue 17)."""
    return last_metrics_row(run_dir, lambda row: isinstance(row.get("wall_time"), (int, float)))


def last_metrics_row(run_dir: Path, wanted=lambda row: True) -> dict | None:
    """The last readable row of metrics.jsonl (a dict) for which wanted(row) holds, from the
    file's last METRICS_TAIL_BYTES only; None if there is none there (or no file)."""
    try:
        with open(Path(run_dir) / "metrics.jsonl", "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - METRICS_TAIL_BYTES))
            tail = f.read().decode("utf-8", errors="replace")
    except OSError:
        return None
    lines = tail.splitlines()
    if size > METRICS_TAIL_BYTES:
        lines = lines[1:]  # the first line may be cut
    for line in reversed(lines):
        try:
            row = json.loads(line)
        except (ValueError, RecursionError):
            continue
        if isinstance(row, dict) and wanted(row):
            return row
    return None


@contextmanager
def _runs_lock(root: Path):
    """An exclusive lock on the runs folder (held only while a job is being started)."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".jobs.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def active_job_with_settings(root: Path, cfg: RunConfig) -> str | None:
    """The name of a queued/running run in `root` with exactly these settings, if any."""
    want = _settings(cfg)
    for d in sorted(Path(root).iterdir()) if Path(root).is_dir() else []:
        job = read_job(d) if d.is_dir() else None
        if job and job.get("config") and _same(job["config"], want):
            js = _job_state(d)
            if js is not None and js.active:
                return d.name
    return None


def _same(saved: dict, want: dict) -> bool:
    try:
        return _settings(RunConfig.from_dict(saved)) == want
    except TrainerError:
        return False


def train_threads(cores: int | None = None) -> int:
    """Torch threads for a job the app starts: $VAE_TRAIN_THREADS, else this machine's cores
    (`cores`, by default those this process may use) less one, kept for the app's server and
    the browser, shared among the max_concurrent_jobs() jobs that may train at once; between
    1 and 4. On 2 cores a second training thread does not speed up the default model, and it
    made the app itself wait (README, Performance). Where the jobs' single threads would take
    every core anyway (2 jobs on 2 cores), the jobs run at a lower priority (job_slot.job_nice)
    so that the server is served first."""
    env = os.environ.get("VAE_TRAIN_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(4, (cores - 1) // max_concurrent_jobs()))


def max_concurrent_jobs() -> int:
    """How many jobs train at once: $VAE_MAX_JOBS, default 1 (this is a 2-core machine); the
    others wait in the queue (job_slot) and start by themselves, oldest first."""
    try:
        return max(1, int(os.environ.get("VAE_MAX_JOBS", "1")))
    except ValueError:
        return 1


def _env_count(name: str, default: int) -> int:
    try:
        return max(1, int(os.environ.get(name, str(default))))
    except ValueError:
        return default


def max_queued_jobs() -> int:
    """How many jobs the runs folder may hold queued or training at once: $VAE_MAX_QUEUED,
    default 8 (at one job at a time and a minute a job, the last waits about 8 minutes)."""
    return max(_env_count("VAE_MAX_QUEUED", 8), max_concurrent_jobs())


def max_jobs_per_session() -> int:
    """How many jobs one browser session may have queued or training at once:
    $VAE_MAX_JOBS_PER_SESSION, default 2 (a second seed beside the first)."""
    return _env_count("VAE_MAX_JOBS_PER_SESSION", 2)


def current_session() -> str | None:
    """The id of the Streamlit session whose script calls this, or None outside one (the
    command line, a test, a bench)."""
    try:
        from streamlit.runtime.scriptrunner import get_script_run_ctx

        ctx = get_script_run_ctx(suppress_warning=True)
    except Exception:  # streamlit missing or not running: no session
        return None
    return getattr(ctx, "session_id", None) if ctx is not None else None


def active_jobs(root: Path) -> list[tuple[str, dict]]:
    """(name, job.json) of every job in `root` that is queued or training now."""
    out = []
    for d in sorted(Path(root).iterdir()) if Path(root).is_dir() else []:
        job = read_job(d) if d.is_dir() else None
        if job is not None:
            js = _job_state(d)
            if js is not None and js.active:
                out.append((d.name, job))
    return out


def check_room(root: Path, session: str | None) -> None:
    """Raise QueueFull, saying why and what to do, when this session or the runs folder has
    as many jobs queued or training as it may. Called with the runs lock held."""
    active = active_jobs(root)
    mine = [name for name, job in active if session is not None and job.get("session") == session]
    per_session = max_jobs_per_session()
    if session is not None and len(mine) >= per_session:
        raise QueueFull(f"you already have {len(mine)} job(s) queued or training ({', '.join(mine)}; at most "
                        f"{per_session} per person): wait until it has finished, or cancel it, then press Train again")
    limit = max_queued_jobs()
    if len(active) >= limit:
        raise QueueFull(f"the training queue is full: {len(active)} jobs are queued or training (at most {limit} "
                        "at once on this server); your settings are kept, press Train again when one has finished")


def queue_position(run_dir: Path) -> tuple[int, int] | None:
    """(position, length) of the run in the queue of jobs waiting for a slot, position 1
    first; None when it is not waiting."""
    run_dir = Path(run_dir)
    # keyed on the runs folder's mtime too: a new run folder (a job just queued) is seen at once
    queue = _shared(("queue", str(run_dir.parent), _mtime(run_dir.parent)),
                    lambda: job_slot.waiting_jobs(run_dir.parent))
    return (queue.index(run_dir.name) + 1, len(queue)) if run_dir.name in queue else None


def start(root: Path, name: str, cfg: RunConfig, threads: int, max_jobs: int | None = None,
          session: str | None = None) -> Path:
    """Launch `python -m trainer fit` for `cfg` into `root/name`; returns the run folder.

    The job goes through the queue (job_slot): at most `max_jobs` (default
    max_concurrent_jobs()) train at once, the rest wait. Raises JobBusy if that run is
    already training, or if another run with the very same settings is (a double click, a
    second tab), QueueFull (a JobBusy) when `session` (default: the calling Streamlit
    session, current_session()) or the runs folder may not queue another job (check_room),
    and TrainerError for a bad name or config.
    """
    session = session if session is not None else current_session()
    root = Path(root).resolve()
    cfg.validate()
    run_dir = safe_run_path(root, check_name(name))  # never a symlink out of the runs folder
    with _runs_lock(root):
        js = _job_state(run_dir) if run_dir.is_dir() else None
        if js is not None and js.active:
            raise JobBusy(f"{name} is already training (epoch {js.epoch} of {js.epochs})")
        twin = active_job_with_settings(root, cfg)
        if twin is not None:
            raise JobBusy(f"a run with exactly these settings is already training: {twin}")
        if run_dir.exists() and any(run_dir.iterdir()):
            raise TrainerError(f"a run named {name} already exists: choose another name or delete it first")
        check_room(root, session)
        run_dir.mkdir(parents=True, exist_ok=True)
        try:  # O_EXCL: exactly one job per run folder, whatever else happens concurrently
            fd = os.open(run_dir / JOB_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            raise JobBusy(f"{name} is already being started") from None
        os.close(fd)
        _launch(root, run_dir, cfg, fit_command(cfg, run_dir, threads), threads, max_jobs, job_config=cfg,
                session=session)
    return run_dir


def resume(root: Path, name: str, threads: int, max_jobs: int | None = None, lr: float | None = None,
           session: str | None = None) -> Path:
    """Continue a failed or cancelled run from its last saved epoch (`python -m trainer fit
    --resume`), through the same queue, at learning rate `lr` if given (else the run's).
    Raises JobBusy if it is training, QueueFull as start does, TrainerError if it has no
    usable checkpoint."""
    session = session if session is not None else current_session()
    from trainer.checkpoints import read_train_state
    from trainer.runs import load_config

    root = Path(root).resolve()
    run_dir = safe_run_path(root, check_name(name))  # never a symlink out of the runs folder
    cfg = load_config(run_dir)
    if lr is not None:
        cfg.train.lr = float(lr)
        cfg.validate()  # TrainerError for a learning rate out of range
    epoch = read_train_state(run_dir)["epoch"]
    with _runs_lock(root):
        js = _job_state(run_dir)
        if js is not None and js.active:
            raise JobBusy(f"{name} is already training (epoch {js.epoch} of {js.epochs})")
        check_room(root, session)
        _launch(root, run_dir, cfg, resume_command(cfg, run_dir, threads, lr), threads, max_jobs,
                message=f"resuming from epoch {epoch}", session=session)
    return run_dir


def _launch(root: Path, run_dir: Path, cfg: RunConfig, command: list[str], threads: int,
            max_jobs: int | None, message: str = "", job_config: RunConfig | None = None,
            session: str | None = None) -> None:
    """Start `command` (a trainer command line) for run_dir through the queue; job.json and a
    `queued` status record it. A new run passes its settings as `job_config`, written to
    JOB_CONFIG_FILE first (fit_command's --config). Called with the runs lock held."""
    limit = max_jobs if max_jobs is not None else max_concurrent_jobs()
    # waits for one of `limit` slots, then execs the trainer (same process, same pid)
    queued = [sys.executable, "-m", "explorer.services.job_slot", str(root), str(limit), "--", *command]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)}
    env["OMP_NUM_THREADS"] = str(max(1, threads))
    try:
        if job_config is not None:
            write_job_config(run_dir, job_config)
        with open(run_dir / LOG_FILE, "ab") as log:
            proc = subprocess.Popen(queued, cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    except OSError as e:
        if job_config is not None:  # a new run: take back its empty job.json and its settings
            (run_dir / JOB_FILE).unlink(missing_ok=True)
            (run_dir / JOB_CONFIG_FILE).unlink(missing_ok=True)
        raise TrainerError(f"cannot start the training process ({e.strerror or e})") from None
    _PROCS[proc.pid] = proc
    _forget()
    atomic_write_json(run_dir / JOB_FILE, {"pid": proc.pid, "config": cfg.to_dict(), "command": command[1:],
                                           "started": time.time(), "session": session})
    status = read_status_dead_as_failed(run_dir)
    if status is None or message:  # the trainer overwrites this with "running"
        write_status(run_dir, "queued", pid=proc.pid, epoch=(status or {}).get("epoch", 0),
                     epochs=cfg.train.epochs, message=message)


def cancel(run_dir: Path, wait_s: float = 15.0) -> JobState | None:
    """Stop the run's job: SIGTERM to its process group (the trainer finishes the current
    step, keeps the last epoch's checkpoint and marks the run cancelled), SIGKILL if it has
    not stopped after `wait_s` seconds. Returns the final state."""
    run_dir = Path(run_dir)
    js = _job_state(run_dir)
    if js is None or not js.active or js.pid is None:
        return js
    pid = js.pid
    _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + wait_s
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if pid_alive(pid):
        _signal_group(pid, signal.SIGKILL)
        while pid_alive(pid) and time.monotonic() < deadline + 5:
            time.sleep(0.05)
    status = read_status_dead_as_failed(run_dir)
    if status is None or status.get("state") in ACTIVE:  # stopped before the trainer could say so
        write_status(run_dir, "cancelled", message="cancelled before the first epoch finished")
    _PROCS.pop(pid, None)
    _forget()
    return _job_state(run_dir)


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)  # start_new_session: the group id is the job's pid
    except ProcessLookupError:
        pass
    except PermissionError:
        os.kill(pid, sig)


# -- names -------------------------------------------------------------------------------------

def check_name(name: str) -> str:
    """A run name given in the app, surrounding spaces trimmed: trainer.run_names' rule, at
    most MAX_APP_RUN_NAME characters. Raises TrainerError saying what is wrong."""
    return check_run_name(name.strip() if isinstance(name, str) else name, MAX_APP_RUN_NAME)


def suggest_name(root: Path, cfg: RunConfig, base: str | None = None) -> str:
    """A free run name that says what the run is, e.g. digits-2d, digits-2d-2, gmm2d-2d-beta4."""
    if base is None:
        data = Path(cfg.data.split(":")[0]).stem or "data"
        base = f"{data}-{cfg.model.latent_dim}d"
        if cfg.model.arch != ModelConfig().arch:
            base += f"-{cfg.model.arch}"
        if cfg.train.beta != 1:
            base += f"-beta{cfg.train.beta:g}"
        if cfg.train.seed != 0:
            base += f"-seed{cfg.train.seed}"
    base = run_name_from(base, MAX_APP_RUN_NAME - 10)  # room for the "-2" that makes it free
    name, i = base, 2
    while (Path(root) / name).exists() or name in RESERVED_NAMES:
        name, i = f"{base}-{i}", i + 1
    return name


def unused_seed(root: Path, cfg: RunConfig) -> int:
    """A seed that no run in `root` with otherwise the same settings has used (for Retrain
    with a new seed)."""
    want = _settings(cfg)
    want["train"].pop("seed")
    used = {cfg.train.seed}
    for d in Path(root).iterdir() if Path(root).is_dir() else []:
        job = read_job(d) if d.is_dir() else None
        saved = (job or {}).get("config")
        if not isinstance(saved, dict):
            continue
        try:
            other = RunConfig.from_dict(saved)
        except TrainerError:
            continue
        s = _settings(other)
        seed = s["train"].pop("seed")
        if s == want:
            used.add(seed)
    return max(used) + 1
