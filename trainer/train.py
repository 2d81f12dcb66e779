"""The training loop: stochastic gradient ascent on the ELBO (Def. 1.4, Theorem 1.4).

It knows nothing about files or user interfaces: it reports through callbacks, and the
caller (api.fit) saves checkpoints, writes metrics and handles signals.

Speed: the data set is one tensor on the device, batches are `index_select`ed from a
per-epoch permutation (no per-sample Python), Adam is one fused kernel a step
(fastpath.FusedAdam, torch.optim.Adam's own kernel without its Python), and denormals are
flushed to zero (Adam's moments of dead units otherwise go subnormal and slow later epochs).
Two steps compute the same thing: `reference_step`, autograd through elbo.elbo_terms (every
architecture, and the several-process trainer), and for the mlp and linear architectures
fastpath.FastStep, the same forward and backward written out by hand in far fewer operator
calls (the default where it applies; `Trainer(..., step="autograd")` or the environment
variable VAE_TRAIN_STEP=autograd selects the reference).
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from dataclasses import dataclass
from typing import Callable

import torch

from . import preprocess
from .config import RunConfig
from .data import Dataset
from .elbo import Evaluation, elbo_terms, evaluate
from .errors import TrainerError
from .fastpath import FastStep, FusedAdam, supports
from .model import build_model

STEPS = ("fast", "autograd")  # Trainer(step=...): the hand-written step where it applies, or autograd


class NonFiniteLoss(TrainerError):
    """The loss became NaN or infinite; the weights of the last finished epoch are kept."""


NO_GPU = "--device cuda was asked for but no CUDA GPU is available: use --device cpu"


def pick_device(name: str) -> torch.device:
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise TrainerError(NO_GPU)
        return torch.device("cuda")
    return torch.device("cpu")


def set_threads(threads: int) -> int:
    """Set torch's CPU thread count explicitly (0 = all cores) and return it."""
    import os

    n = threads or os.cpu_count() or 1
    torch.set_num_threads(n)
    torch.set_flush_denormal(True)
    return n


def kl_weight(cfg: RunConfig, epoch: int, frac: float) -> float:
    """beta, ramped linearly from 0 over the first kl_warmup epochs; epoch is 0-based, frac in (0, 1]."""
    t = cfg.train
    if t.kl_warmup <= 0:
        return t.beta
    return t.beta * min(1.0, (epoch + frac) / t.kl_warmup)


def test_metrics(ev: Evaluation) -> dict:
    """An evaluation as the test-split fields of a metrics row: elbo, recon, kl (per-sample
    means, nats) and active_units."""
    return {**ev.means(), "active_units": ev.active_units}


@dataclass
class Callbacks:
    on_step: Callable[[int, int, int, int], None] = lambda step, epoch, i, n: None  # after each step
    on_epoch: Callable[[dict], None] = lambda row: None  # after each epoch, with its metrics row
    should_stop: Callable[[], bool] = lambda: False  # checked after each step


class Trainer:
    """Holds the model, optimizer and random generators of one run.

    step: "fast" (fastpath.FastStep where the architecture and likelihood allow it, else
    autograd) or "autograd" (always the reference); by default $VAE_TRAIN_STEP, else "fast".
    Both give the same numbers up to float rounding."""

    fast_step_allowed = True  # trainer.distributed's subclass shares each batch: autograd only

    def __init__(self, cfg: RunConfig, data: Dataset, device: torch.device | None = None,
                 step: str | None = None):
        self.cfg = cfg
        self.device = device or pick_device(cfg.train.device)
        torch.manual_seed(cfg.train.seed)  # weight initialisation
        self.model = build_model(cfg.model, data.shape).to(self.device)
        self.model.set_standardizer(preprocess.for_training(cfg, data))  # None: the data's own units
        self.model.init_from_data(data.x_train)
        self.model.to(self.device)
        self.x_train = data.x_train.to(self.device)
        self.x_test = data.x_test.to(self.device)
        self.optimizer = _adam(self.model.parameters(), cfg.train.lr, self.device)
        step = step or os.environ.get("VAE_TRAIN_STEP", "").strip() or "fast"
        if step not in STEPS:
            raise TrainerError(f"unknown training step {step!r}: choose one of {', '.join(STEPS)}")
        self.fast_step = None  # FastStep when this run takes it
        if step == "fast" and self.fast_step_allowed and supports(self.model, self.x_train):
            self.fast_step = FastStep(self.model, self.x_train, cfg.train.batch_size, cfg.train.mc_samples)
        self.gen_shuffle = torch.Generator().manual_seed(cfg.train.seed + 1)
        self.gen_eps = torch.Generator(device=self.device).manual_seed(cfg.train.seed + 2)
        self.epoch = 0  # epochs completed
        self.step = 0  # optimizer steps taken

    # -- state for --resume: Adam's moments and the generators, as plain tensors ----------
    def state_tensors(self) -> dict[str, torch.Tensor]:
        out = {"rng.shuffle": self.gen_shuffle.get_state(), "rng.eps": self.gen_eps.get_state().cpu()}
        for i, s in self.optimizer.state_dict()["state"].items():
            for name, v in s.items():
                out[f"adam.{i}.{name}"] = torch.as_tensor(v).detach().cpu().contiguous()
        return out

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        sd = self.optimizer.state_dict()
        state: dict[int, dict] = {}
        for key, v in tensors.items():
            if key.startswith("adam."):
                _, i, name = key.split(".", 2)
                state.setdefault(int(i), {})[name] = v.to(self.device) if name != "step" else v
        sd["state"] = state
        try:
            self.optimizer.load_state_dict(sd)
            self.gen_shuffle.set_state(tensors["rng.shuffle"])
            self.restore_eps_generator(tensors["rng.eps"])
        except (KeyError, ValueError, RuntimeError) as e:
            raise TrainerError(f"optim.safetensors does not match this run ({str(e)[:80]}): retrain instead of resuming") from None

    def restore_eps_generator(self, state: torch.Tensor) -> None:
        """Continue the noise stream from a saved state (a uint8 CPU tensor on every device).
        A state saved by another kind of device (a run trained on a GPU, resumed on the CPU,
        or back) cannot continue here: CPU generators keep a Mersenne Twister state, CUDA's a
        Philox seed and offset. The stream then restarts from a seed taken from the saved
        bytes, so the same checkpoint still resumes to the same numbers. (Such a run cannot
        repeat an uninterrupted one anyway: the two devices round differently.)"""
        if state.shape == self.gen_eps.get_state().shape:
            self.gen_eps.set_state(state.cpu())
        else:
            digest = hashlib.sha256(state.cpu().numpy().tobytes()).digest()
            self.gen_eps.manual_seed(int.from_bytes(digest[:8], "little") >> 1)

    def nonfinite_loss(self) -> NonFiniteLoss:
        return NonFiniteLoss(
            f"the loss became non-finite at epoch {self.epoch + 1}, step {self.step}: "
            f"lower the learning rate (now {self.cfg.train.lr:g}); the last good checkpoint is kept")

    def run(self, callbacks: Callbacks = Callbacks()) -> str:
        """Train until cfg.train.epochs are done or callbacks.should_stop(); returns
        "done" or "cancelled". Raises NonFiniteLoss if the loss stops being finite.
        trainer.distributed.DistributedTrainer runs this same loop, overriding the four
        methods below it that differ when several processes share each batch."""
        cfg, model = self.cfg, self.model
        B, M, d = cfg.train.batch_size, cfg.train.mc_samples, model.latent_dim
        n = len(self.x_train)
        n_batches = math.ceil(n / B)
        eps_dtype = next(model.parameters()).dtype
        self.before_run()
        model.train()
        while self.epoch < cfg.train.epochs:
            t0 = time.perf_counter()
            perm = torch.randperm(n, generator=self.gen_shuffle).to(self.device)
            sums = torch.zeros(4, dtype=torch.float64, device=self.device)  # recon, kl, elbo, objective
            fast_sums = [0.0, 0.0, 0.0, 0.0]  # the same, from the fast step's Python floats (float64 too)
            for i in range(n_batches):
                batch = perm[i * B:(i + 1) * B]  # (b,) indices of this step's batch
                # eps ~ N(0, I) for the reparameterization z = mu + sigma * eps (eq 1.24): (M, b, d)
                eps = torch.randn((M, len(batch), d), generator=self.gen_eps, device=self.device,
                                  dtype=eps_dtype)
                w = kl_weight(cfg, self.epoch, (i + 1) / n_batches)
                if self.fast_step is not None:
                    finite = self.fast_step_sums(batch, eps, w, fast_sums)
                else:
                    finite = self.reference_step(batch, eps, w, sums)
                self.step += 1
                callbacks.on_step(self.step, self.epoch, i, n_batches)
                not_finite, stop = self.agree(not finite, callbacks.should_stop())
                if not_finite:
                    raise self.nonfinite_loss()
                if stop:
                    return "cancelled"
            if self.fast_step is not None:
                sums += torch.tensor(fast_sums, dtype=torch.float64, device=self.device)  # 0 + s: s exactly
            train_time = time.perf_counter() - t0
            self.epoch += 1
            test = self.end_of_epoch(sums)
            callbacks.on_epoch(self.epoch_row((sums / n).tolist(), n, train_time, test))
        return "done"

    # -- one step: the loss of the batch, its gradient, Adam -------------------------------
    def reference_step(self, batch: torch.Tensor, eps: torch.Tensor, w: float, sums: torch.Tensor) -> bool:
        """One step by autograd; adds the batch's sums of recon, kl, elbo and the objective
        to `sums` (4,). Returns whether the loss was finite (Adam steps only then)."""
        terms, weight = self.batch_terms(batch, eps)  # per-sample terms of this process's rows
        objective = terms["recon"] - w * terms["kl"]  # (rows,), what training maximises
        objective_sum = objective.sum()
        loss = -objective_sum * weight  # minus the objective's mean over the batch
        self.optimizer.zero_grad(set_to_none=True)
        self.backward(loss)
        finite = math.isfinite(float(loss.detach()))
        if finite:  # a non-finite loss is reported by run(), after the step's callbacks
            self.optimizer.step()
        if weight:
            with torch.no_grad():
                sums += torch.stack([terms["recon"].sum(), terms["kl"].sum(), terms["elbo"].sum(),
                                     objective_sum]).double()
        return finite

    def fast_step_sums(self, batch: torch.Tensor, eps: torch.Tensor, w: float, sums: list[float]) -> bool:
        """reference_step's work by fastpath.FastStep: the same sums of recon, kl, elbo and the
        objective (added in float64, as Python floats: two tensor operations a step fewer), the
        same Adam step, the same answer."""
        recon, kl = self.fast_step(batch, eps, w)
        objective = recon - w * kl
        finite = math.isfinite(objective)
        if finite:
            self.optimizer.step()
        sums[0] += recon
        sums[1] += kl
        sums[2] += recon - kl
        sums[3] += objective
        return finite

    # -- what differs when several processes share each batch (trainer.distributed) -------
    def before_run(self) -> None:
        """Called once at the start of run()."""

    def batch_terms(self, batch: torch.Tensor, eps: torch.Tensor) -> tuple[dict[str, torch.Tensor], float]:
        """ELBO terms of the rows of `batch` this process computes, and the weight that turns
        their objective's sum into the batch mean: all rows, 1/b."""
        xb = self.x_train.index_select(0, batch)  # (b, *shape)
        return elbo_terms(self.model, xb, eps=eps), 1.0 / len(batch)

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def agree(self, not_finite: bool, stop: bool) -> tuple[bool, bool]:
        """Whether to raise NonFiniteLoss and whether to stop, as every process must decide alike."""
        return not_finite, stop

    def end_of_epoch(self, sums: torch.Tensor) -> dict:
        """The test split's metrics (fixed noise); `sums` (the epoch's training sums) are complete here."""
        return test_metrics(evaluate(self.model, self.x_test, 1, seed=self.cfg.train.seed + 3))

    def epoch_row(self, s: list[float], n: int, train_time: float, test: dict) -> dict:
        """The metrics row of the epoch just finished (also used by trainer.distributed).
        s: per-sample means of the training recon, kl, elbo and objective; n: training
        samples; test: test_metrics() of the test split's evaluation. Raises NonFiniteLoss if the ELBO is not finite."""
        cfg, model = self.cfg, self.model
        row = {
            "epoch": self.epoch, "step": self.step, "epoch_time_s": train_time,
            "samples_per_s": n / train_time if train_time > 0 else None,
            "train_elbo": s[2], "train_recon": s[0], "train_kl": s[1], "train_objective": s[3],
            "test_elbo": test["elbo"], "test_recon": test["recon"], "test_kl": test["kl"],
            "active_units": test["active_units"], "kl_weight": kl_weight(cfg, self.epoch - 1, 1.0),
            "sigma_dec": model.reported_sigma_dec(),
        }
        if not (math.isfinite(row["train_elbo"]) and math.isfinite(row["test_elbo"])):
            # the last step left weights that give a NaN/inf ELBO: do not save them
            raise NonFiniteLoss(
                f"the ELBO became non-finite at the end of epoch {self.epoch}: lower the learning rate "
                f"(now {cfg.train.lr:g}); the last good checkpoint is kept")
        return row


def _adam(params, lr: float, device: torch.device):
    """Adam with torch's defaults: fastpath.FusedAdam where the fused kernel exists, else
    torch.optim.Adam (fused if it can be)."""
    params = list(params)
    if FusedAdam.available(params):
        return FusedAdam(params, lr)
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, TypeError):  # fused not available for this device/build
        return torch.optim.Adam(params, lr=lr)
