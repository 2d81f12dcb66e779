"""The public Python surface: train into a run folder, and open one to explore it.

    from trainer import fit, load_run, RunConfig
    fit(RunConfig(data="digits"), "runs/digits-2d")
    run = load_run("runs/digits-2d")
    q = run.encode(x)                       # DiagonalGaussian, q.mu: (N, d)
    terms = run.elbo_terms(x, mc_samples=1) # dict of per-sample tensors, nats
    run.log_px(x, k=1000)                   # importance-sampled log p(x), (N,)
    run.decode(z), run.generate(64)         # images (N, *shape), mean of p(x|z)
"""

from __future__ import annotations

import json
import os
import platform
import signal
import threading
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from . import checkpoints, distributed, fileio, likelihoods, posterior, preprocess, run_names, runs, snapshots
from .config import RunConfig
from .data import Dataset, load_dataset
from .elbo import elbo_terms, evaluate, log_px, log_px_and_se, reliability
from .errors import TrainerError
from .model import VAE, DiagonalGaussian
from .train import Callbacks, NonFiniteLoss, pick_device, set_threads


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__}
    for pkg in ("safetensors", "scikit-learn"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


SYNC_EVERY_S = 2.0  # checkpoints are fsynced at most this often (and at the last epoch and on a stop)


class _StopFlag:
    """Set by SIGTERM/SIGINT (or by a caller) to stop after the current step."""

    def __init__(self):
        self.event = threading.Event()

    def __call__(self, *_):
        self.event.set()


# Training settings a resumed run keeps (as it keeps its data and model): changing them
# midway would make it another run.
RESUME_FIXED = ("batch_size", "beta", "kl_warmup", "mc_samples", "seed")


def fit(cfg: RunConfig, out_dir: str | Path, resume: bool = False,
        on_epoch: Callable[[dict], None] | None = None,
        on_step: Callable[[int, int, int, int], None] | None = None,
        stop: threading.Event | None = None, handle_signals: bool = False,
        lr: float | None = None) -> str:
    """Train `cfg` into the run folder `out_dir`; returns the final state ("done" or
    "cancelled"). A user error raises TrainerError after marking the run failed.
    One process at a time trains into a folder (runs.RunLock): a second gets TrainerError.
    With resume, training goes on with the saved settings: cfg.train.epochs may extend them,
    threads and device are this call's, and the others must match. `lr` then sets a new
    learning rate for the rest of the run (e.g. lower, after a non-finite loss), recorded in
    its config.json."""
    out = run_names.check_out_folder(out_dir)
    cfg.validate()
    d = distributed.init_from_env(cfg.train.device)  # launched by torchrun: None in a single process
    if d is not None and not d.is_writer:  # ranks other than 0 train their shares and write nothing
        return distributed.follow(cfg, d, stop, handle_signals)
    with distributed.stop_followers_on_error(), runs.RunLock(out, create=not resume):
        try:
            return _fit_locked(cfg, out, resume, on_epoch, on_step, stop, handle_signals, lr)
        except OSError as e:  # disk full or read-only folder: the files already saved are intact
            message = _cannot_write(out, e)
            _mark_failed_if_ours(out, message)
            raise TrainerError(message) from None
        except TrainerError:
            raise
        except BaseException as e:  # a bug or an interrupt: say so in status.json, then propagate
            _mark_failed_if_ours(out, f"training stopped by an unexpected {type(e).__name__}")
            raise


def _mark_failed_if_ours(out: Path, message: str) -> None:
    """Mark the run failed if this process is the one the status names (best effort)."""
    status = runs.read_status_raw(out) or {}
    if status.get("state") in ("queued", "running") and status.get("pid") == os.getpid():
        try:
            runs.write_status(out, "failed", message=message)
        except OSError:
            pass


def _resume_conflicts(saved: RunConfig, cfg: RunConfig) -> list[str]:
    """The settings of `cfg` that a resumed run cannot take over from `saved`: the data, any
    model field, and the training fields in RESUME_FIXED."""
    differ = ["data"] if saved.data != cfg.data else []
    differ += ["standardize"] if saved.standardize != cfg.standardize else []
    differ += [f.name for f in fields(saved.model) if getattr(saved.model, f.name) != getattr(cfg.model, f.name)]
    return differ + [name for name in RESUME_FIXED if getattr(saved.train, name) != getattr(cfg.train, name)]


def _fit_locked(cfg: RunConfig, out: Path, resume: bool, on_epoch, on_step, stop, handle_signals, lr) -> str:
    """fit's work, with the run folder locked: the folder and settings (_prepare), the data
    and the trainer, its starting point (_restore, or a first checkpoint), then training,
    reported in the folder by a _Reporter. Errors of the training loop are mapped here."""
    cfg = _prepare(cfg, out, resume, lr)
    if resume:  # the folder is ours (locked): what a killed run's half-done writes left goes
        fileio.remove_temp_files(out, runs.TRAINING_FILES)
    threads = set_threads(cfg.train.threads)
    device = distributed.run_device(cfg.train.device)  # under torchrun: this rank's GPU, or the CPU
    should_stop = _stop_signal(stop, handle_signals)
    trainer = _make_trainer(cfg, out, resume, device)
    if resume:
        _restore(trainer, cfg, out)
    else:
        cfg.versions = {**_versions(), "threads": str(threads), "device": device.type}
        fileio.atomic_write_json(out / "config.json", cfg.to_dict())
        preprocess.save(out, trainer.model.standardizer)  # standardize.json, before the first weights
        checkpoints.save_checkpoint(out, trainer.model, trainer.state_tensors(), {"epoch": 0, "step": 0})

    on_epoch = _record_linear_path(out, trainer, resume, on_epoch)  # linear runs: their (t, s) per epoch
    reporter = _Reporter(out, trainer, cfg.train.epochs, on_epoch, on_step)
    reporter.start()
    try:
        state = trainer.run(Callbacks(on_step=reporter.on_step, on_epoch=reporter.on_epoch, should_stop=should_stop))
    except (NonFiniteLoss, distributed.PeersLost) as e:
        try:
            checkpoints.sync_checkpoint(out)  # the last good checkpoint, made durable
        except OSError:
            pass  # the error to report is the loss, not the disk
        runs.write_status(out, "failed", message=str(e))
        raise
    except OSError as e:  # disk full, read-only folder: the previous files are intact
        message = _cannot_write(out, e)
        try:
            runs.write_status(out, "failed", message=message)
        except OSError:
            pass
        raise TrainerError(message) from None
    reporter.finish(state)
    return state


def _cannot_write(out: Path, e: OSError) -> str:
    return f"cannot write to the run folder {out} ({e.strerror or e}): the last saved checkpoint is kept"


def _prepare(cfg: RunConfig, out: Path, resume: bool, lr: float | None) -> RunConfig:
    """The settings the run trains with, its folder ready for them. A new run: `cfg`, in a
    folder that holds no run yet (created if missing). A resumed run: its config.json, which
    `cfg` must not contradict (_resume_conflicts), with cfg's epochs, threads and device,
    and the learning rate `lr` if given (recorded in config.json)."""
    if not resume:
        if (out / "model.safetensors").exists() or (out / "metrics.jsonl").exists():
            raise TrainerError(f"{out} already holds a run: use --resume to continue it or choose another --out")
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise TrainerError(f"cannot create the run folder {out} ({e.strerror})") from None
        return cfg
    saved = runs.load_config(out)
    differ = _resume_conflicts(saved, cfg)
    if differ:
        verb = "differs" if len(differ) == 1 else "differ"
        raise TrainerError(f"--resume: {', '.join(differ)} {verb} from {out}/config.json; a resumed run keeps "
                           "its settings (only --epochs and --lr may change): leave those out or train "
                           "into a new folder")
    saved.train.epochs = cfg.train.epochs  # resuming may extend the number of epochs
    saved.train.threads, saved.train.device = cfg.train.threads, cfg.train.device  # this machine's
    if lr is not None and lr != saved.train.lr:  # and go on at another learning rate
        saved.train.lr = lr
        saved.validate()
        fileio.atomic_write_json(out / "config.json", saved.to_dict())
    return saved


def _stop_signal(stop: threading.Event | None, handle_signals: bool) -> Callable[[], bool]:
    """Whether to stop after the current step: `stop` set by the caller, or (handle_signals)
    a SIGTERM/SIGINT received."""
    stop_flag = _StopFlag()
    if stop is not None:
        stop_flag.event = stop
    if handle_signals:
        signal.signal(signal.SIGTERM, stop_flag)
        signal.signal(signal.SIGINT, stop_flag)
    return stop_flag.event.is_set


def _make_trainer(cfg: RunConfig, out: Path, resume: bool, device: torch.device):
    """The run's data, checked against its likelihood, and a trainer for it (a
    DistributedTrainer under torchrun); cfg.data_shape is filled in. A bad data set marks
    the run failed (unless a resume finds no status to mark) and raises TrainerError."""
    try:
        data = load_dataset(cfg.data, cfg.train.seed)
        likelihoods.get(cfg.model.likelihood).check_data(data)
        cfg.data_shape = list(data.shape)
        if not resume:
            fileio.atomic_write_json(out / runs.DATA_INFO, data.names())  # the names the app shows
        return distributed.make_trainer(cfg, data, device)
    except TrainerError as e:
        if (out / "status.json").exists() or not resume:
            runs.write_status(out, "failed", message=str(e), pid=os.getpid())
        raise


def _restore(trainer, cfg: RunConfig, out: Path) -> None:
    """Put a resumed run's trainer where its last checkpoint left it: the weights, Adam's
    and the generators' state, the epoch and step counters (all from one save), and
    metrics.jsonl cut back to the rows of the epochs that checkpoint holds."""
    model = checkpoints.load_model(out, cfg)
    trainer.model.load_state_dict(model.state_dict())
    trainer.model.set_standardizer(model.standardizer)  # the run's own (standardize.json), or none
    trainer.load_state_tensors(checkpoints.load_optim_state(out, trainer.model))
    ts = checkpoints.read_train_state(out)  # weights, optimizer state and epoch from one save
    trainer.epoch, trainer.step = ts["epoch"], ts["step"]
    if trainer.epoch > cfg.train.epochs:
        raise TrainerError(f"--resume: {out} has already trained {trainer.epoch} epochs; "
                           f"give --epochs above {trainer.epoch} to train more")
    _truncate_metrics(out, trainer.epoch)


def _truncate_metrics(out: Path, epoch: int) -> None:
    """Keep only the metrics rows of epochs <= the checkpoint's epoch (atomically)."""
    rows = [r for r in runs.read_metrics(out) if isinstance(r.get("epoch"), int) and r["epoch"] <= epoch]
    fileio.atomic_write_bytes(out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode())


class _Reporter:
    """What the run folder hears while the trainer trains: status.json (running, its
    heartbeat at most once a second, the final state) and, after every epoch, the metrics
    row, the checkpoint and, every few epochs, the test codes (trainer/snapshots.py). Every
    epoch's checkpoint is saved atomically (a killed process leaves the last epoch's), but
    fsynced at most every SYNC_EVERY_S and at the last epoch: fsyncing a few MB costs as much as a whole digits epoch, and a power cut can lose
    only those seconds of training. The metrics rows are fsynced with the checkpoint, the
    running status (progress, superseded by the next write) never; the final status is.
    The caller's on_step and on_epoch are called after."""

    def __init__(self, out: Path, trainer, epochs: int, on_epoch: Callable[[dict], None] | None,
                 on_step: Callable[[int, int, int, int], None] | None):
        self.out, self.trainer, self.epochs = out, trainer, epochs
        self.user_on_epoch, self.user_on_step = on_epoch, on_step
        self.last_beat = self.last_sync = time.monotonic()
        # the test set's codes every few epochs, for the latent map's epoch player
        self.snapshots = snapshots.Recorder(out, trainer.model, trainer.x_test, epochs)

    def start(self) -> None:
        """Status `running`, naming this process, from the epoch the trainer starts at."""
        runs.write_status(self.out, "running", epoch=self.trainer.epoch, epochs=self.epochs, pid=os.getpid(),
                          message="", started=time.time())
        self.snapshots.after_epoch(self.trainer.epoch)
        self.last_beat = self.last_sync = time.monotonic()

    def on_step(self, step: int, epoch: int, i: int, n: int) -> None:
        if time.monotonic() - self.last_beat > 1.0:  # heartbeat at most once a second
            self.last_beat = time.monotonic()
            runs.write_status(self.out, "running", durable=False, epoch=epoch, epochs=self.epochs, batch=i + 1,
                              batches=n)
        if self.user_on_step:
            self.user_on_step(step, epoch, i, n)

    def on_epoch(self, row: dict) -> None:
        trainer = self.trainer
        row = {**row, "wall_time": time.time()}
        durable = trainer.epoch >= self.epochs or time.monotonic() - self.last_sync >= SYNC_EVERY_S
        # The row first: if the save then fails, --resume drops rows past the saved epoch.
        fileio.append_jsonl(self.out / "metrics.jsonl", row, durable=durable)
        checkpoints.save_checkpoint(self.out, trainer.model, trainer.state_tensors(),
                                    {"epoch": trainer.epoch, "step": trainer.step}, durable=durable)
        if durable:
            self.last_sync = time.monotonic()
        self.snapshots.after_epoch(trainer.epoch)
        runs.write_status(self.out, "running", durable=False, epoch=trainer.epoch, epochs=self.epochs)
        if self.user_on_epoch:
            self.user_on_epoch(row)

    def finish(self, state: str) -> None:
        """The final status (done or cancelled); a stop makes its last checkpoint durable first."""
        if state != "done":
            checkpoints.sync_checkpoint(self.out)
        epoch = self.trainer.epoch
        message = "" if state == "done" else f"cancelled after epoch {epoch}; the checkpoint of that epoch is kept"
        runs.write_status(self.out, state, epoch=epoch, epochs=self.epochs, message=message)


LINEAR_PATH = "linear_path.json"  # a linear run's (t, s) per epoch (Examples 1.3-1.6)


def _record_linear_path(out: Path, trainer, resume: bool, on_epoch):
    """For a `linear` run, an on_epoch callback that first adds the epoch's (t, s) (the
    encoder's sigma and sigma_dec: posterior.linear_path_point) to LINEAR_PATH in the run
    folder, then calls on_epoch; other runs keep on_epoch as it is. A new run's file starts
    with epoch 0 (the initial model), a resumed run's keeps the epochs its checkpoint holds.
    Not fsynced: a path lost in a crash is only a picture."""
    if trainer.model.cfg.arch != "linear":
        return on_epoch
    path = out / LINEAR_PATH
    saved = read_linear_path(out) if resume else None
    rows = [r for r in saved if r["epoch"] <= trainer.epoch] if saved else []
    if not rows:
        rows = [{"epoch": trainer.epoch, **posterior.linear_path_point(trainer.model)}]
    fileio.atomic_write_json(path, {"path": rows}, durable=False)

    def record(row: dict) -> None:
        rows.append({"epoch": trainer.epoch, **posterior.linear_path_point(trainer.model)})
        fileio.atomic_write_json(path, {"path": rows}, durable=False)
        if on_epoch:
            on_epoch(row)

    return record


def read_linear_path(run_dir: str | Path) -> list[dict] | None:
    """A linear run's saved (t, s) per epoch: [{"epoch", "t", "s"}, ...], or None when the run
    has none (not linear, trained before it was recorded) or the file is not one we wrote."""
    try:
        rows = fileio.read_json(Path(run_dir) / LINEAR_PATH, "linear path")["path"]
        return [{"epoch": int(r["epoch"]), "t": float(r["t"]), "s": float(r["s"])} for r in rows]
    except (TrainerError, KeyError, TypeError, ValueError):
        return None


@dataclass
class Run:
    """A run folder opened for exploring: config, metrics, status and the trained model."""

    path: Path
    config: RunConfig
    model: VAE

    @property
    def metrics(self) -> list[dict]:
        return runs.read_metrics(self.path)

    @property
    def status(self) -> dict | None:
        return runs.read_status_dead_as_failed(self.path)

    @property
    def data_info(self) -> dict:
        """The data's names (data.json): name, feature_names, label_name, label_names,
        class_names; {} for a run trained before they were kept."""
        return runs.read_data_info(self.path)

    def load_data(self) -> Dataset:
        """The run's data set with its train/test split (same seed, same split)."""
        return load_dataset(self.config.data, self.config.train.seed)

    def _x(self, x) -> torch.Tensor:
        return torch.as_tensor(np.asarray(x), dtype=torch.float32).reshape(-1, *self.model.data_shape)

    @torch.no_grad()
    def encode(self, x) -> DiagonalGaussian:
        return self.model.encode(self._x(x))

    @torch.no_grad()
    def decode(self, z) -> torch.Tensor:
        """Images (or vectors) for latent codes z (N, d): the mean of p(x|z), (N, *shape)."""
        z = torch.as_tensor(np.asarray(z), dtype=torch.float32).reshape(-1, self.model.latent_dim)
        return self.model.decoder_mean(self.model.decode(z)).reshape(-1, *self.model.data_shape)

    @torch.no_grad()
    def elbo_terms(self, x, mc_samples: int = 1, seed: int = 0) -> dict[str, torch.Tensor]:
        gen = torch.Generator().manual_seed(seed)
        return elbo_terms(self.model, self._x(x), mc_samples, gen, with_se=True)  # recon_se when M >= 2

    @torch.no_grad()
    def log_px(self, x, k: int = 1000, seed: int = 0) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        return log_px(self.model, self._x(x), k, gen)

    @torch.no_grad()
    def log_px_and_se(self, x, k: int = 1000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """log_px's estimate and its Monte Carlo standard error, (N,) each, float64 nats."""
        gen = torch.Generator().manual_seed(seed)
        return log_px_and_se(self.model, self._x(x), k, gen)

    @torch.no_grad()
    def generate(self, n: int, seed: int = 0) -> torch.Tensor:
        """n samples of the model (Fig 1.7): z ~ N(0, I) decoded to the mean of p(x|z), (n, *shape)."""
        return self.model.generate(n, torch.Generator().manual_seed(seed))


def load_run(path: str | Path) -> Run:
    """Open a run folder: validated config and weights (nothing unpickled); raises TrainerError."""
    path = Path(path)
    if not path.is_dir():
        raise TrainerError(f"{path}: no such run folder")
    cfg = runs.load_config(path)
    model = checkpoints.load_model(path, cfg)
    return Run(path, cfg, model)


def evaluate_run(run: Run, split: str = "test", k: int = 1000, mc_samples: int = 1, seed: int = 0,
                 batch_size: int = 500, device: str = "cpu", closed_forms: bool = False,
                 quadrature: bool = True) -> dict:
    """Per-sample means over a split (nats, log-likelihood sign): elbo, recon, kl, log_px, gap,
    active_units, and exact_log_px where the data set knows it. `device` ("cpu", "cuda" or
    "auto") is where the model runs; the noise differs between devices, so the estimates
    on a GPU differ from the CPU's by Monte Carlo noise (run.model itself stays put).
    closed_forms adds trainer.posterior.eval_extras: the quadrature log p(x) for d <= 2 and
    the linear model's exact ELBO, KL to the true posterior and log p(x) (on the CPU)."""
    import copy

    data = run.load_data()
    x = data.x_test if split == "test" else data.x_train
    where = pick_device(device)
    model = run.model if where.type == "cpu" else copy.deepcopy(run.model).to(where)
    ev = evaluate(model, x, mc_samples, seed, batch_size, k=k, exact_log_px=data.exact_log_px)
    out = {"n": ev.n, "split": split, "k": k, "mc_samples": mc_samples, **ev.means()}
    out["gap"] = out["log_px"] - out["elbo"]
    # standard errors of the means (elbo_se, recon_se, kl_se, log_px_se, gap_se, ...), the draws
    # behind each figure (recon and elbo: mc_samples of z per sample; log_px: k; kl: closed
    # form) and whether the means can be shown as numbers (None, or "unreliable: why")
    out.update(ev.standard_errors())
    out["draws"] = {"recon": mc_samples, "elbo": mc_samples, "kl": 0, "log_px": k}
    out["posteriors_unresolved"] = ev.unresolved_posteriors  # samples whose q(z|x) float32 cannot resolve
    out["reliability"] = reliability(out["log_px"], out["elbo"], out["gap_se"],
                                     unresolved=(out["posteriors_unresolved"], ev.n))
    out["active_units"] = ev.active_units
    out["kl_per_dim"] = ev.kl_per_dim_mean()
    if run.model.likelihood.has_sigma_dec:
        out["sigma_dec"] = run.model.reported_sigma_dec()
    if closed_forms:  # log_px_quadrature (d <= 2); elbo_exact, ... (linear + Gaussian): trainer.posterior
        out.update(posterior.eval_extras(run.model, x, quadrature=quadrature))
    return out
