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

from . import distributed, likelihoods, runs
from .config import RunConfig
from .data import Dataset, load_dataset
from .elbo import elbo_terms, log_px
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
    out = runs.check_run_dir_name(out_dir)
    cfg.validate()
    d = distributed.init_from_env(cfg.train.device)  # launched by torchrun: None in a single process
    if d is not None and not d.is_writer:  # ranks other than 0 train their shares and write nothing
        return distributed.follow(cfg, d, stop, handle_signals)
    with distributed.stop_followers_on_error(), runs.RunLock(out, create=not resume):
        try:
            return _fit_locked(cfg, out, resume, on_epoch, on_step, stop, handle_signals, lr)
        except OSError as e:  # disk full or read-only folder: the files already saved are intact
            message = f"cannot write to the run folder {out} ({e.strerror or e}): the last saved checkpoint is kept"
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
    differ += [f.name for f in fields(saved.model) if getattr(saved.model, f.name) != getattr(cfg.model, f.name)]
    return differ + [name for name in RESUME_FIXED if getattr(saved.train, name) != getattr(cfg.train, name)]


def _fit_locked(cfg: RunConfig, out: Path, resume: bool, on_epoch, on_step, stop, handle_signals, lr) -> str:
    if resume:
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
            runs.atomic_write_json(out / "config.json", saved.to_dict())
        cfg = saved
    else:
        if (out / "model.safetensors").exists() or (out / "metrics.jsonl").exists():
            raise TrainerError(f"{out} already holds a run: use --resume to continue it or choose another --out")
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise TrainerError(f"cannot create the run folder {out} ({e.strerror})") from None

    threads = set_threads(cfg.train.threads)
    device = distributed.run_device(cfg.train.device)  # under torchrun: this rank's GPU, or the CPU
    stop_flag = _StopFlag()
    if stop is not None:
        stop_flag.event = stop
    if handle_signals:
        signal.signal(signal.SIGTERM, stop_flag)
        signal.signal(signal.SIGINT, stop_flag)

    try:
        data = load_dataset(cfg.data, cfg.train.seed)
        likelihoods.get(cfg.model.likelihood).check_data(data)
        cfg.data_shape = list(data.shape)
        trainer = distributed.make_trainer(cfg, data, device)  # a DistributedTrainer under torchrun
    except TrainerError as e:
        if (out / "status.json").exists() or not resume:
            runs.write_status(out, "failed", message=str(e), pid=os.getpid())
        raise

    if resume:
        model = runs.load_model(out, cfg)
        trainer.model.load_state_dict(model.state_dict())
        trainer.load_state_tensors(runs.load_optim_state(out, trainer.model))
        ts = runs.read_train_state(out)  # weights, optimizer state and epoch from one save
        trainer.epoch, trainer.step = ts["epoch"], ts["step"]
        if trainer.epoch > cfg.train.epochs:
            raise TrainerError(f"--resume: {out} has already trained {trainer.epoch} epochs; "
                               f"give --epochs above {trainer.epoch} to train more")
        _truncate_metrics(out, trainer.epoch)
    else:
        cfg.versions = {**_versions(), "threads": str(threads), "device": device.type}
        runs.atomic_write_json(out / "config.json", cfg.to_dict())
        runs.save_checkpoint(out, trainer.model, trainer.state_tensors(), {"epoch": 0, "step": 0})

    epochs = cfg.train.epochs
    runs.write_status(out, "running", epoch=trainer.epoch, epochs=epochs, pid=os.getpid(),
                      message="", started=time.time())
    last_beat = [time.monotonic()]

    def step_cb(step, epoch, i, n):
        if time.monotonic() - last_beat[0] > 1.0:  # heartbeat at most once a second
            last_beat[0] = time.monotonic()
            runs.write_status(out, "running", epoch=epoch, epochs=epochs, batch=i + 1, batches=n)
        if on_step:
            on_step(step, epoch, i, n)

    last_sync = [time.monotonic()]

    def epoch_cb(row):
        row = {**row, "wall_time": time.time()}
        # The row first: if the save then fails, --resume drops rows past the saved epoch.
        runs.append_jsonl(out / "metrics.jsonl", row)
        # Every epoch is saved atomically (a killed process leaves the last epoch's checkpoint)
        # but fsynced at most every SYNC_EVERY_S and at the last epoch: fsyncing a few MB costs
        # as much as a whole digits epoch. A power cut can lose those seconds of training.
        durable = trainer.epoch >= epochs or time.monotonic() - last_sync[0] >= SYNC_EVERY_S
        runs.save_checkpoint(out, trainer.model, trainer.state_tensors(),
                             {"epoch": trainer.epoch, "step": trainer.step}, durable=durable)
        if durable:
            last_sync[0] = time.monotonic()
        runs.write_status(out, "running", epoch=trainer.epoch, epochs=epochs)
        if on_epoch:
            on_epoch(row)

    try:
        state = trainer.run(Callbacks(on_step=step_cb, on_epoch=epoch_cb, should_stop=stop_flag.event.is_set))
    except (NonFiniteLoss, distributed.PeersLost) as e:
        try:
            runs.sync_checkpoint(out)  # the last good checkpoint, made durable
        except OSError:
            pass  # the error to report is the loss, not the disk
        runs.write_status(out, "failed", message=str(e))
        raise
    except OSError as e:  # disk full, read-only folder: the previous files are intact
        runs_msg = f"cannot write to the run folder {out} ({e.strerror or e}): the last saved checkpoint is kept"
        try:
            runs.write_status(out, "failed", message=runs_msg)
        except OSError:
            pass
        raise TrainerError(runs_msg) from None
    if state != "done":
        runs.sync_checkpoint(out)
    message = "" if state == "done" else f"cancelled after epoch {trainer.epoch}; the checkpoint of that epoch is kept"
    runs.write_status(out, state, epoch=trainer.epoch, epochs=epochs, message=message)
    return state


def _truncate_metrics(out: Path, epoch: int) -> None:
    """Keep only the metrics rows of epochs <= the checkpoint's epoch (atomically)."""
    rows = [r for r in runs.read_metrics(out) if isinstance(r.get("epoch"), int) and r["epoch"] <= epoch]
    import json

    runs.atomic_write_bytes(out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode())


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
        return runs.read_status(self.path)

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
        return elbo_terms(self.model, self._x(x), mc_samples, gen)

    @torch.no_grad()
    def log_px(self, x, k: int = 1000, seed: int = 0) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        return log_px(self.model, self._x(x), k, gen)

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
    model = runs.load_model(path, cfg)
    return Run(path, cfg, model)


def evaluate_run(run: Run, split: str = "test", k: int = 1000, mc_samples: int = 1, seed: int = 0,
                 batch_size: int = 500, device: str = "cpu") -> dict:
    """Per-sample means over a split (nats, log-likelihood sign): elbo, recon, kl, log_px, gap,
    active_units, and exact_log_px where the data set knows it. `device` ("cpu", "cuda" or
    "auto") is where the model runs; the noise differs between devices, so the estimates
    on a GPU differ from the CPU's by Monte Carlo noise (run.model itself stays put)."""
    import copy

    from .elbo import active_units

    data = run.load_data()
    x = data.x_test if split == "test" else data.x_train
    where = pick_device(device)
    model = run.model if where.type == "cpu" else copy.deepcopy(run.model).to(where)
    gen = torch.Generator(device=where).manual_seed(seed)
    sums = {"elbo": 0.0, "recon": 0.0, "kl": 0.0, "log_px": 0.0, "exact_log_px": 0.0}
    mus, kl_dims = [], []
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            xb = x[i:i + batch_size]
            xd = xb.to(where)  # xb stays on the CPU for the data set's exact log p(x)
            t = elbo_terms(model, xd, mc_samples, gen)
            for key in ("elbo", "recon", "kl"):
                sums[key] += float(t[key].double().sum())
            sums["log_px"] += float(log_px(model, xd, k, gen).double().sum())
            if data.exact_log_px is not None:
                sums["exact_log_px"] += float(data.exact_log_px(xb).double().sum())
            mus.append(t["mu"].cpu())
            kl_dims.append(t["kl_per_dim"].double().sum(0).cpu())
    n = len(x)
    out = {"n": n, "split": split, "k": k, "mc_samples": mc_samples}
    out.update({key: v / n for key, v in sums.items()})
    out["gap"] = out["log_px"] - out["elbo"]
    out["active_units"] = active_units(torch.cat(mus))
    out["kl_per_dim"] = (torch.stack(kl_dims).sum(0) / n).tolist()
    if data.exact_log_px is None:
        del out["exact_log_px"]
    if run.model.likelihood.has_sigma_dec:
        out["sigma_dec"] = run.model.reported_sigma_dec()
    return out
