"""Standardisation of non-image data: fitted on the training split, saved with the run.

Columns of a table can differ in scale by factors of 1000 (scikit-learn's wine: proline is
about 1000, hue about 1). A VAE with one sigma_dec for all columns then explains the large
column and ignores the rest, and its posterior collapses to a point. So the model sees each
column standardised, x'_j = (x_j - m_j) / s_j (m, s: the column's mean and standard
deviation over the training split), while every figure stays in the data's own units:

    p(x) = p'(x') * prod_j 1 / s_j        (change of variables, x' = (x - m) / s)
    log p(x|z) = log p'(x'|z) - sum_j log s_j

The model adds -sum_j log s_j to log p(x|z) (model.VAE.log_px_given_z), so recon, the ELBO and
log p(x) are densities of x in its own units, comparable across runs with or without
standardisation, and with the exact log p(x) of a data set that knows it. The decoder's mean
is mapped back (m + s * mean'), so decoded and generated samples are in the data's units too.

When it applies (`for_training`): RunConfig.standardize is on (the default; fit
--no-standardize turns it off), the data come from a file (the built-in examples are generated
in the units of their closed forms), are not images (those are in [0, 1] already), and the
likelihood is real-valued (a Bernoulli's support is [0, 1]). A column whose training values
are all equal has no scale: it is refused with a message naming it.

The fitted `Standardizer` is written to the run folder as `standardize.json` (next to the
checkpoint) and read back with the weights (checkpoints.load_model): a run without the file
works in the data's own units.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import TrainerError
from .fileio import atomic_write_json, read_json

FILE = "standardize.json"  # in the run folder, beside model.safetensors


@dataclass(frozen=True)
class Standardizer:
    """x' = (x - mean) / scale per value of x; mean and scale (D,) float64, scale > 0."""

    mean: tuple[float, ...]  # (D,) m_j, the training split's column means, data units
    scale: tuple[float, ...]  # (D,) s_j, the training split's standard deviations (1/N), data units
    columns: tuple[str, ...] = ()  # (D,) the columns' names, for people reading the file

    @property
    def log_det(self) -> float:
        """-sum_j log s_j, nats: what standardising adds to every log-density of x."""
        return -float(np.log(np.asarray(self.scale, dtype=np.float64)).sum())

    def to_dict(self) -> dict[str, Any]:
        return {"mean": list(self.mean), "scale": list(self.scale), "columns": list(self.columns)}

    @classmethod
    def from_dict(cls, d: Any, data_dim: int, where: str = FILE) -> "Standardizer":
        """Check a parsed standardize.json against the model's D values; raises TrainerError."""
        if not isinstance(d, dict) or set(d) - {"mean", "scale", "columns"}:
            raise TrainerError(f"{where}: must be an object with mean, scale and columns")
        mean, scale, columns = d.get("mean"), d.get("scale"), d.get("columns", [])
        for name, v in (("mean", mean), ("scale", scale)):
            if not (isinstance(v, list) and len(v) == data_dim
                    and all(isinstance(a, (int, float)) and not isinstance(a, bool) and math.isfinite(a) for a in v)):
                raise TrainerError(f"{where}: '{name}' must be a list of {data_dim} finite numbers, "
                                   "one per value of x")
        if any(s <= 0 for s in scale):
            raise TrainerError(f"{where}: every 'scale' must be above 0")
        if not (isinstance(columns, list) and all(isinstance(c, str) for c in columns)
                and len(columns) in (0, data_dim)):
            raise TrainerError(f"{where}: 'columns' must be a list of {data_dim} names")
        return cls(tuple(float(a) for a in mean), tuple(float(s) for s in scale), tuple(columns))


def fit(x_train, columns: list[str] | None = None, where: str = "the data") -> Standardizer:
    """Column means and standard deviations (1/N) of x_train (N, D): a tensor, or rows on disk
    (trainer.mapped.MappedRows, summed chunk by chunk). A column with zero variance is refused
    (TrainerError naming the columns)."""
    if isinstance(x_train, torch.Tensor):
        x = x_train.reshape(len(x_train), -1).double()
        mean, var = x.mean(0), x.var(0, unbiased=False)
    else:
        mean, var, _ = x_train.column_stats(mean_dtype=torch.float64)
    D = len(mean)
    names = list(columns) if columns and len(columns) == D else [f"x{j + 1}" for j in range(D)]
    sd = var.sqrt()
    # zero variance, or only the rounding of a sum (chunked sums of a constant column differ
    # from it by about 1e-16 relative; float32 data cannot vary by less than 6e-8 relative)
    constant = [names[j] for j in torch.nonzero(~(sd > 1e-12 * mean.abs())).flatten().tolist()]
    if constant:
        shown = ", ".join(constant[:10]) + (f" and {len(constant) - 10} more" if len(constant) > 10 else "")
        raise TrainerError(f"{where}: column(s) {shown} have the same value in every training sample (zero "
                           "variance): remove them from the file, or train with --no-standardize")
    return Standardizer(tuple(mean.tolist()), tuple(sd.tolist()), tuple(names))


def for_training(cfg, data) -> Standardizer | None:
    """The standardisation a new run of `cfg` (a RunConfig) on `data` (a trainer.data.Dataset)
    trains with, or None when it does not apply (see the module docstring)."""
    from .data import DATASETS, parse_spec
    from .likelihoods import get

    if not cfg.standardize or data.is_image or parse_spec(cfg.data)[0] in DATASETS:
        return None
    if not get(cfg.model.likelihood).real_valued:
        return None
    return fit(data.x_train, getattr(data, "feature_names", None), where=data.name)


def save(run_dir: Path, s: Standardizer | None) -> None:
    """Write standardize.json (atomically); nothing for None."""
    if s is not None:
        atomic_write_json(Path(run_dir) / FILE, s.to_dict())


def load(run_dir: Path, data_dim: int) -> Standardizer | None:
    """The run's standardize.json checked against D = data_dim, or None when it has none."""
    path = Path(run_dir) / FILE
    if not path.exists():
        return None
    return Standardizer.from_dict(read_json(path, FILE), data_dim, where=str(path))


__all__ = ["Standardizer", "fit", "for_training", "save", "load", "FILE"]
