"""trainer: the tutorial's VAE (chapter 1), trained and evaluated; see api.py for the API.

    from trainer import fit, load_run, RunConfig

The names below are imported on first use (PEP 562), so that `import trainer.liveness`
or `import trainer.fileio` does not import torch: the app's training queue
(explorer.services.job_slot) checks processes without it.
"""

from __future__ import annotations

import importlib

# public name -> the module of this package that defines it
_HOMES = {
    "Run": "api", "fit": "api", "load_run": "api", "evaluate_run": "api",
    "RunConfig": "config", "ModelConfig": "config", "TrainConfig": "config",
    "Dataset": "data", "load_dataset": "data",
    "elbo_terms": "elbo", "log_px": "elbo", "reliability": "elbo",
    "export_run": "bundle", "import_bundle": "bundle", "encode_run": "bundle", "BundleError": "bundle",
    "TrainerError": "errors",
}

__all__ = list(_HOMES)


def __getattr__(name: str):
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{home}", __name__), name)
    globals()[name] = value  # imported once; later lookups do not come here
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
