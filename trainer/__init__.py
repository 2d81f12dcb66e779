"""trainer: the tutorial's VAE (chapter 1), trained and evaluated; see api.py for the API."""

from .api import Run, evaluate_run, fit, load_run
from .config import ModelConfig, RunConfig, TrainConfig
from .data import Dataset, load_dataset
from .elbo import elbo_terms, log_px
from .errors import TrainerError

__all__ = ["Run", "fit", "load_run", "evaluate_run", "RunConfig", "ModelConfig", "TrainConfig",
           "Dataset", "load_dataset", "elbo_terms", "log_px", "TrainerError"]
