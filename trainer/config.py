"""Settings of a run: the model, the data and the training, as dataclasses.

`RunConfig` is written to a run folder as `config.json` and read back with
`RunConfig.from_dict`, which checks every field's type and range so that a damaged or
hand-edited file gives a clear `TrainerError` instead of a crash later on.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from .errors import TrainerError

# The names a config may choose, without importing torch (the app's first start validates its
# config before its pages import torch: explorer/views/first_start.py). model.ARCHITECTURES and
# likelihoods.LIKELIHOODS hold the things themselves and check, when imported, that their
# keys are these.
ARCHITECTURES = ("mlp", "conv", "linear")
LIKELIHOODS = ("gaussian", "bernoulli", "continuous-bernoulli")


@dataclass
class ModelConfig:
    arch: str = "mlp"  # a key of model.ARCHITECTURES: "mlp" | "conv" | "linear"
    # mlp hidden sizes, encoder order. 256,128 fits the built-in data: on digits it reaches the
    # held-out ELBO of 512,256 (within seed-to-seed spread) in about half the time an epoch takes.
    hidden: list[int] = field(default_factory=lambda: [256, 128])
    latent_dim: int = 2  # d, the size of z
    likelihood: str = "gaussian"  # p(x|z), a key of likelihoods.LIKELIHOODS: gaussian (eq 1.29), bernoulli, ...
    sigma_dec: float | str = "learned"  # gaussian only: a fixed float, or "learned" (log-space scalar)
    conv_channels: list[int] = field(default_factory=lambda: [32, 64])  # conv: channels per stride-2 layer


@dataclass
class TrainConfig:
    epochs: int = 50  # passes over the training split
    batch_size: int = 128  # samples per optimizer step
    lr: float = 1e-3  # Adam learning rate
    beta: float = 1.0  # weight of the KL in the training objective (the reported elbo always uses 1)
    kl_warmup: int = 0  # epochs over which the KL weight rises linearly from 0 to beta
    mc_samples: int = 1  # M, Monte Carlo samples of z per x in the reconstruction term (eq 1.31)
    seed: int = 0  # seeds weights, split, shuffling and eps: same seed, same numbers
    device: str = "auto"  # "auto" | "cpu" | "cuda"
    threads: int = 0  # torch CPU threads; 0 = all cores of this machine
    world_size: int = 1  # training processes (torch.distributed); each takes a share of every batch


@dataclass
class RunConfig:
    data: str = "digits"  # data spec, e.g. "digits", "gmm2d:k=5", "path/to/file.npz"
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    # Non-image data from a file, with a real-valued likelihood: each column standardised with
    # the training split's mean and standard deviation (trainer.preprocess); figures stay in
    # the data's units. False: the model sees the values as they are.
    standardize: bool = True
    # Filled in when a run starts (informational, not needed to rebuild the model):
    data_shape: list[int] = field(default_factory=list)  # shape of one sample x, e.g. [1, 8, 8]
    versions: dict[str, str] = field(default_factory=dict)  # python, torch, numpy, ...

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Any) -> "RunConfig":
        """Build a config from parsed JSON, checking every field; raises TrainerError."""
        if not isinstance(d, dict):
            raise TrainerError("config.json must hold a JSON object")
        _no_unknown(d, cls, "config")
        model = _section(d.get("model", {}), ModelConfig, "model")
        train = _section(d.get("train", {}), TrainConfig, "train")
        data = d.get("data", "digits")
        if not isinstance(data, str) or not data:
            raise TrainerError("config: 'data' must be a non-empty string (a data spec)")
        shape = d.get("data_shape", [])
        if not (isinstance(shape, list) and all(_is_int(v) and v > 0 for v in shape)):
            raise TrainerError("config: 'data_shape' must be a list of positive integers")
        versions = d.get("versions", {})
        if not isinstance(versions, dict):
            raise TrainerError("config: 'versions' must be an object")
        standardize = d.get("standardize", True)
        if not isinstance(standardize, bool):
            raise TrainerError("config: 'standardize' must be true or false")
        cfg = cls(data=data, model=model, train=train, standardize=standardize, data_shape=list(shape),
                  versions={str(k): str(v) for k, v in versions.items()})
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Check ranges and choices; raises TrainerError naming the bad field."""
        m, t = self.model, self.train
        if m.arch not in ARCHITECTURES:
            raise TrainerError(f"unknown architecture {m.arch!r}: choose one of {', '.join(ARCHITECTURES)}")
        if m.likelihood not in LIKELIHOODS:
            raise TrainerError(f"unknown likelihood {m.likelihood!r}: choose one of {', '.join(LIKELIHOODS)}")
        if not m.hidden or any(h < 1 or h > 65536 for h in m.hidden):
            raise TrainerError("hidden sizes must be between 1 and 65536, e.g. --hidden 512,256")
        if not m.conv_channels or any(c < 1 or c > 4096 for c in m.conv_channels):
            raise TrainerError("conv channels must be between 1 and 4096")
        if not 1 <= m.latent_dim <= 4096:
            raise TrainerError("latent dim must be between 1 and 4096")
        if isinstance(m.sigma_dec, str):
            if m.sigma_dec != "learned":
                raise TrainerError(f"sigma_dec must be 'learned' or a positive number, not {m.sigma_dec!r}")
        elif not (math.isfinite(m.sigma_dec) and m.sigma_dec > 0):
            raise TrainerError("sigma_dec must be 'learned' or a positive finite number, e.g. --sigma-dec 0.1")
        checks = [
            (1 <= t.epochs <= 100_000, "epochs must be between 1 and 100000"),
            (1 <= t.batch_size <= 1_000_000, "batch size must be between 1 and 1000000"),
            (math.isfinite(t.lr) and t.lr > 0, "learning rate must be a positive number, e.g. --lr 1e-3"),
            (math.isfinite(t.beta) and t.beta >= 0, "beta must be a number >= 0"),
            (0 <= t.kl_warmup <= 100_000, "kl warm-up must be between 0 and 100000 epochs"),
            (1 <= t.mc_samples <= 1000, "mc samples must be between 1 and 1000"),
            (0 <= t.seed < 2**63, "seed must be a non-negative integer"),
            (t.device in ("auto", "cpu", "cuda"), "device must be auto, cpu or cuda"),
            (0 <= t.threads <= 1024, "threads must be between 0 (all cores) and 1024"),
            (1 <= t.world_size <= 65536, "the number of processes must be between 1 and 65536"),
        ]
        for ok, message in checks:
            if not ok:
                raise TrainerError(message)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _no_unknown(d: dict, cls: type, where: str) -> None:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(str(k) for k in d if k not in names)
    if unknown:
        raise TrainerError(f"{where}: unknown field(s) {', '.join(unknown)[:200]}")


def _to_float(v: int | float, name: str) -> float:
    try:
        return float(v)
    except OverflowError:  # a JSON integer too large for a float
        raise TrainerError(f"{name} is out of range") from None


def _section(d: Any, cls: type, where: str):
    """Build dataclass `cls` from dict `d`, checking each value against the field's default type."""
    if not isinstance(d, dict):
        raise TrainerError(f"config: '{where}' must be a JSON object")
    _no_unknown(d, cls, f"config.{where}")
    obj = cls()
    for f in dataclasses.fields(cls):
        if f.name not in d:
            continue
        v, default = d[f.name], getattr(obj, f.name)
        bad = TrainerError(f"config.{where}.{f.name} has the wrong type ({type(v).__name__})")
        if f.name == "sigma_dec":
            if isinstance(v, str):
                pass
            elif isinstance(v, (int, float)) and not isinstance(v, bool):
                v = _to_float(v, f"config.{where}.{f.name}")
            else:
                raise bad
        elif isinstance(default, bool):
            if not isinstance(v, bool):
                raise bad
        elif isinstance(default, int):
            if not _is_int(v):
                raise bad
        elif isinstance(default, float):
            if not (isinstance(v, (int, float)) and not isinstance(v, bool)):
                raise bad
            v = _to_float(v, f"config.{where}.{f.name}")
        elif isinstance(default, str):
            if not isinstance(v, str):
                raise bad
        elif isinstance(default, list):
            if not (isinstance(v, list) and all(_is_int(x) for x in v)):
                raise bad
            v = list(v)
        setattr(obj, f.name, v)
    return obj
