"""The baseline of the digits and benchmark-model goals (issue 18): a plain eager PyTorch VAE
training loop, the way pytorch/examples' VAE writes one: nn.Sequential encoder and decoder,
autograd, torch.optim.Adam with its defaults. Same layers, likelihood, batch, learning rate
and data as the trainer's run it is compared with; nothing of the trainer is used.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def mlp(sizes: list[int]) -> nn.Sequential:
    layers = [m for a, b in zip(sizes[:-1], sizes[1:]) for m in (nn.Linear(a, b), nn.ReLU())]
    return nn.Sequential(*layers[:-1])  # no ReLU after the last layer


class EagerLoop:
    """`epoch()` trains one pass over x (N, *shape) and returns its seconds."""

    def __init__(self, x: torch.Tensor, hidden: list[int], latent_dim: int, likelihood: str,
                 batch_size: int, lr: float, seed: int = 0):
        torch.manual_seed(seed)
        self.x, self.B, self.d, self.likelihood = x.reshape(len(x), -1), batch_size, latent_dim, likelihood
        D = self.x.shape[1]
        self.encoder = mlp([D, *hidden, 2 * latent_dim])
        self.decoder = mlp([latent_dim, *reversed(hidden), D])
        self.log_sigma_dec = nn.Parameter(torch.zeros(()))  # learned; unused by the Bernoulli
        params = [*self.encoder.parameters(), *self.decoder.parameters()]
        params += [self.log_sigma_dec] if likelihood == "gaussian" else []
        self.optimizer = torch.optim.Adam(params, lr=lr)

    def epoch(self) -> float:
        import time

        t0 = time.perf_counter()
        for idx in torch.randperm(len(self.x)).split(self.B):
            x = self.x[idx]
            mu, logvar = self.encoder(x).chunk(2, dim=-1)
            z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)  # reparameterization
            out = self.decoder(z)
            if self.likelihood == "gaussian":  # log N(x; out, sigma^2 I)
                recon = (-0.5 * (x - out).pow(2).sum(-1) * torch.exp(-2 * self.log_sigma_dec)
                         - x.shape[1] * (self.log_sigma_dec + 0.5 * math.log(2 * math.pi)))
            else:  # Bernoulli with logits out
                recon = -F.binary_cross_entropy_with_logits(out, x, reduction="none").sum(-1)
            kl = 0.5 * (logvar.exp() + mu.pow(2) - 1 - logvar).sum(-1)
            loss = -(recon - kl).mean()
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
        return time.perf_counter() - t0
