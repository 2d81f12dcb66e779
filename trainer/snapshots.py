"""Latent snapshots: the test set's posterior means saved every few epochs while a run trains,
so that the latent map can replay how the codes moved (its epoch player).

    <run>/latent_snapshots.safetensors
        mu       (S, n, d) float32  posterior means mu(x) of the first n test samples, one
                                    row block per snapshot, in the order of the test split
        epochs   (S,) int64         the epochs after which they were taken (0: before training)
        metadata {"format": "vae-latent-snapshots/1", "n": n, "every": every} (strings)

Bounded: n = min(N_test, MAX_SAMPLES, MAX_VALUES // d) and at most MAX_SNAPSHOTS snapshots,
about 4 * MAX_SNAPSHOTS * min(MAX_SAMPLES * d, MAX_VALUES) bytes (under 2 MB for a 2-D
latent, at most 24 MB). Snapshots are taken at epoch 0, every `every` epochs
(ceil(epochs / (MAX_SNAPSHOTS - 1))) and at the last epoch; a resumed run that goes past the
bound drops every second older snapshot. The file is rewritten atomically after each one
(trainer/fileio.py), by the callback in trainer/api.py; the training loop knows nothing of it.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from . import fileio

FILENAME = "latent_snapshots.safetensors"
FORMAT = "vae-latent-snapshots/1"
MAX_SNAPSHOTS = 60
MAX_SAMPLES = 2000  # test samples per snapshot, the first ones of the split
MAX_VALUES = 100_000  # n * d per snapshot, at most


def every_for(epochs: int) -> int:
    """Epochs between snapshots for a run of `epochs` epochs."""
    return max(1, math.ceil(epochs / (MAX_SNAPSHOTS - 1)))


def read(run_dir: str | Path) -> tuple[np.ndarray, np.ndarray] | None:
    """(epochs (S,), mu (S, n, d)) of a run folder's snapshots; None when it has none (or the
    file is not one: snapshots are a view, never worth an error)."""
    path = Path(run_dir) / FILENAME
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            if (f.metadata() or {}).get("format") != FORMAT:
                return None
            epochs, mu = f.get_tensor("epochs").numpy(), f.get_tensor("mu").numpy()
    except Exception:  # missing, half-written by an old version, damaged: no snapshots
        return None
    if mu.ndim != 3 or len(epochs) != len(mu):
        return None
    return epochs.astype(np.int64), mu.astype(np.float32)


class Recorder:
    """Takes the snapshots of one training run: `after_epoch(epoch)` from the run's callback."""

    def __init__(self, out: Path, model, x_test, epochs: int):
        self.out, self.model, self.x_test, self.epochs = Path(out), model, x_test, epochs
        d = model.latent_dim
        self.n = max(1, min(len(x_test), MAX_SAMPLES, MAX_VALUES // d))
        self.every = every_for(epochs)
        old = read(out)
        if old is not None and old[1].shape[1:] == (self.n, d):
            self.epochs_taken, self.mu = list(old[0]), list(old[1])
        else:
            self.epochs_taken, self.mu = [], []

    def due(self, epoch: int) -> bool:
        return epoch not in self.epochs_taken and (epoch % self.every == 0 or epoch >= self.epochs)

    @torch.no_grad()
    def after_epoch(self, epoch: int) -> None:
        """Take a snapshot after `epoch` (0: before training) if one is due, and save them all."""
        if not self.due(epoch):
            return
        x = self.x_test[0:self.n]  # (n, *shape), a tensor or rows read from disk
        x = torch.as_tensor(x).to(next(self.model.parameters()).device)
        mu = self.model.encode(x).mu.float().cpu().numpy()  # (n, d)
        self.epochs_taken.append(int(epoch))
        self.mu.append(mu)
        while len(self.mu) > MAX_SNAPSHOTS:  # keep the first and the newest, thin the rest
            keep = sorted(set(range(0, len(self.mu) - 1, 2)) | {len(self.mu) - 1})
            self.epochs_taken = [self.epochs_taken[k] for k in keep]
            self.mu = [self.mu[k] for k in keep]
        self.save()

    def save(self) -> None:
        from safetensors.torch import save

        tensors = {"mu": torch.from_numpy(np.stack(self.mu)).contiguous(),
                   "epochs": torch.tensor(self.epochs_taken, dtype=torch.int64)}
        meta = {"format": FORMAT, "n": str(self.n), "every": str(self.every)}
        fileio.atomic_write_bytes(self.out / FILENAME, save(tensors, metadata=meta), durable=False)
