"""Section 8: quality beside the peer, on digits.

Ours and pythae's VAE, same layers (64-512-256-(2)), Bernoulli likelihood, Adam 1e-3,
batch 128, same epochs, are trained; then each side's importance-sampled log p(x) estimator
(K samples from q(z|x)) is run on *both* models (the weights convert exactly, see peer.py).
On one model the two estimators must agree within their noise: a gap there is a bug in one
of them. Between the models, the difference is what training gave each side.
"""

from __future__ import annotations

import math

import torch

from trainer.config import ModelConfig
from trainer.data import load_dataset
from trainer.elbo import log_px
from trainer.model import build_model
from trainer.train import Callbacks, Trainer

from . import peer
from .common import Context, use_threads


def _mean_se(v: torch.Tensor) -> tuple[float, float]:
    v = v.double()
    return float(v.mean()), float(v.std() / math.sqrt(len(v)))


def section_8(ctx: Context) -> None:
    s = ctx.sizes
    version = peer.available()
    if not version:
        ctx.row("8", "log p(x) beside pythae", None, "nats", note="pythae not installed: pip install -r requirements-bench.txt")
        ctx.sections["8_quality"] = {"skipped": "pythae not installed"}
        return
    use_threads(ctx.threads)
    data = load_dataset("digits", 0)
    cfg_model = ModelConfig(hidden=list(s.hidden), latent_dim=2, likelihood="bernoulli")
    from trainer import RunConfig

    cfg = RunConfig(data="digits", model=cfg_model)
    cfg.train.epochs, cfg.train.batch_size, cfg.train.lr, cfg.train.device = s.quality_epochs, s.batch_size, s.lr, "cpu"
    ours = Trainer(cfg, data, torch.device("cpu"))
    ours.run(Callbacks())
    ours_model = ours.model.eval()

    torch.manual_seed(0)
    peer_model = peer.build(tuple(data.shape), list(s.hidden), 2)
    peer_trainer = peer.PeerTrainer(peer_model, data.x_train, s.batch_size, s.lr, seed=0)
    for _ in range(s.quality_epochs):
        peer_trainer.epoch()
    peer_trainer.close()
    use_threads(ctx.threads)
    peer_model.eval()

    # Each model in the other side's form, so both estimators run on both.
    peer_as_ours = build_model(cfg_model, data.shape)
    peer.to_ours(peer_model, peer_as_ours)
    ours_as_peer = peer.build(tuple(data.shape), list(s.hidden), 2)
    peer.from_ours(ours_model, ours_as_peer)

    x, k = data.x_test, s.quality_k
    with torch.no_grad():
        est = {
            ("ours", "ours"): log_px(ours_model, x, k, torch.Generator().manual_seed(0)),
            ("pythae", "ours"): log_px(peer_as_ours, x, k, torch.Generator().manual_seed(0)),
        }
    est[("ours", "pythae")] = peer.log_px(ours_as_peer, x, k, seed=0)
    est[("pythae", "pythae")] = peer.log_px(peer_model, x, k, seed=0)
    table = {f"{m} model, {e} estimator": dict(zip(("mean", "se"), _mean_se(v))) for (m, e), v in est.items()}
    result = {"epochs": s.quality_epochs, "k": k, "n_test": len(x), "peer": f"pythae {version}", "log_px": table}
    for model_name in ("ours", "pythae"):
        diff = est[(model_name, "ours")].double() - est[(model_name, "pythae")].double()  # same x: paired
        mean, se = _mean_se(diff)
        result[f"{model_name} model: our estimator - pythae's"] = {"mean": mean, "se": se}
        agree = abs(mean) <= 3 * se
        ctx.row("8", f"{model_name} model: log p(x), ours vs pythae's estimator", mean, "nats", None, "",
                "agree within noise", agree,
                f"ours {table[f'{model_name} model, ours estimator']['mean']:.2f}, pythae's "
                f"{table[f'{model_name} model, pythae estimator']['mean']:.2f} (paired se {se:.3f})")
    gap = est[("ours", "ours")].double() - est[("pythae", "ours")].double()
    mean, se = _mean_se(gap)
    result["ours model - pythae model (our estimator)"] = {"mean": mean, "se": se}
    ctx.row("8", f"held-out log p(x): our model - pythae's, {s.quality_epochs} epochs", mean, "nats", None, "",
            note=f"ours {table['ours model, ours estimator']['mean']:.2f}, pythae "
                 f"{table['pythae model, ours estimator']['mean']:.2f} nats/sample (K={k}, paired se {se:.2f})")
    ctx.sections["8_quality"] = result
