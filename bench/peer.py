"""The peer: pythae 0.1.2's VAE and trainer (pip install -r requirements-bench.txt).

Built the way pythae's documentation shows for a custom architecture: our layer sizes as a
`BaseEncoder` (mu and log-variance heads) and a `BaseDecoder` (sigmoid output, as its "bce"
reconstruction loss needs), `VAEConfig(reconstruction_loss="bce")`, Adam via
`BaseTrainerConfig`, and its `BaseTrainer`, whose `train_step(epoch)` is its training loop
(DataLoader over a `BaseDataset`, per-sample dict collation, forward, backward, Adam). The
benchmark times `train_step` alone: pythae's per-epoch evaluation, best-model deep copies and
saving are left out, which only flatters the peer.

Weights convert both ways with our MLPVAE (the two heads are the two halves of our last
encoder layer; sigmoid(our logits) is its output), so each side's log p(x) estimator can be
run on the other side's model.
"""

from __future__ import annotations

import logging
import tempfile

import torch
from torch import nn


def available() -> str | None:
    """pythae's version, or None when it is not installed."""
    try:
        from importlib.metadata import version

        import pythae  # noqa: F401
        return version("pythae")
    except Exception:  # ImportError, or a broken install
        return None


def build(data_shape: tuple[int, ...], hidden: list[int], latent_dim: int):
    """pythae VAE with our MLP layers: D -> hidden... -> (mu, log_var); d -> reversed -> D."""
    from pythae.models import VAE, VAEConfig
    from pythae.models.base.base_utils import ModelOutput
    from pythae.models.nn import BaseDecoder, BaseEncoder

    data_dim = int(torch.tensor(data_shape).prod())

    def mlp(sizes):
        layers = []
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        return nn.Sequential(*layers)

    class Encoder(BaseEncoder):
        def __init__(self):
            BaseEncoder.__init__(self)
            self.net = mlp([data_dim, *hidden])
            self.embedding = nn.Linear(hidden[-1], latent_dim)
            self.log_var = nn.Linear(hidden[-1], latent_dim)

        def forward(self, x):
            h = self.net(x.reshape(len(x), -1))
            return ModelOutput(embedding=self.embedding(h), log_covariance=self.log_var(h))

    class Decoder(BaseDecoder):
        def __init__(self):
            BaseDecoder.__init__(self)
            self.net = nn.Sequential(*mlp([latent_dim, *reversed(hidden)]), nn.Linear(hidden[0], data_dim),
                                     nn.Sigmoid())

        def forward(self, z):
            return ModelOutput(reconstruction=self.net(z).reshape(len(z), *data_shape))

    config = VAEConfig(input_dim=tuple(data_shape), latent_dim=latent_dim, reconstruction_loss="bce")
    return VAE(config, encoder=Encoder(), decoder=Decoder())


class PeerTrainer:
    """pythae's BaseTrainer on (x_train, x_test), ready to run `epoch()` one at a time."""

    def __init__(self, model, x_train: torch.Tensor, batch_size: int, lr: float, seed: int = 0):
        from pythae.data.datasets import BaseDataset
        from pythae.trainers import BaseTrainer, BaseTrainerConfig

        logging.getLogger("pythae").setLevel(logging.WARNING)
        logging.getLogger("pythae.trainers.base_trainer.base_trainer").setLevel(logging.WARNING)
        self._tmp = tempfile.TemporaryDirectory(prefix="bench-pythae-")
        config = BaseTrainerConfig(output_dir=self._tmp.name, per_device_train_batch_size=batch_size,
                                   per_device_eval_batch_size=batch_size, learning_rate=lr,
                                   num_epochs=1, seed=seed, no_cuda=True)
        labels = torch.zeros(len(x_train))
        self.trainer = BaseTrainer(model, BaseDataset(x_train, labels), None, config)
        self.trainer.prepare_training()  # seed, Adam, output folder, callbacks
        # Its progress bars and console printer draw to the terminal: not the work compared.
        handler = self.trainer.callback_handler
        handler.callbacks = [c for c in handler.callbacks
                             if type(c).__name__ not in ("ProgressBarCallback", "MetricConsolePrinterCallback")]
        self.n = len(x_train)
        self.epochs = 0

    def epoch(self) -> float:
        """One pass of pythae's training loop; returns its mean loss (-ELBO estimate, nats)."""
        self.epochs += 1
        return float(self.trainer.train_step(self.epochs))

    def close(self) -> None:
        self._tmp.cleanup()


def to_ours(peer, ours) -> None:
    """Copy a pythae VAE's weights into our MLPVAE of the same sizes (Bernoulli likelihood)."""
    enc, dec = ours.encoder_net.net, ours.decoder_net
    with torch.no_grad():
        for i, layer in enumerate(peer.encoder.net):
            if isinstance(layer, nn.Linear):
                enc[i].weight.copy_(layer.weight)
                enc[i].bias.copy_(layer.bias)
        enc[-1].weight.copy_(torch.cat([peer.encoder.embedding.weight, peer.encoder.log_var.weight]))
        enc[-1].bias.copy_(torch.cat([peer.encoder.embedding.bias, peer.encoder.log_var.bias]))
        for i, layer in enumerate(peer.decoder.net):
            if isinstance(layer, nn.Linear):
                dec[i].weight.copy_(layer.weight)
                dec[i].bias.copy_(layer.bias)


def from_ours(ours, peer) -> None:
    """Copy our MLPVAE's weights into a pythae VAE of the same sizes."""
    enc, dec = ours.encoder_net.net, ours.decoder_net
    d = ours.latent_dim
    with torch.no_grad():
        for i, layer in enumerate(peer.encoder.net):
            if isinstance(layer, nn.Linear):
                layer.weight.copy_(enc[i].weight)
                layer.bias.copy_(enc[i].bias)
        peer.encoder.embedding.weight.copy_(enc[-1].weight[:d])
        peer.encoder.embedding.bias.copy_(enc[-1].bias[:d])
        peer.encoder.log_var.weight.copy_(enc[-1].weight[d:])
        peer.encoder.log_var.bias.copy_(enc[-1].bias[d:])
        for i, layer in enumerate(peer.decoder.net):
            if isinstance(layer, nn.Linear):
                layer.weight.copy_(dec[i].weight)
                layer.bias.copy_(dec[i].bias)


def log_px(peer, x: torch.Tensor, k: int = 1000, seed: int = 0) -> torch.Tensor:
    """pythae's own importance-sampled estimate, per sample (N,), as log p(x) in nats.

    `VAE.get_nll` returns the mean over x of logsumexp(log w) - log K, i.e. log p(x) despite
    its name (read its code); it loops over samples one at a time, so calling it per sample
    gives the same numbers and their spread too.
    """
    torch.manual_seed(seed)
    peer.eval()
    with torch.no_grad():
        return torch.tensor([peer.get_nll(x[i:i + 1], n_samples=k, batch_size=min(k, 100)) for i in range(len(x))])
