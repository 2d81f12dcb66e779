"""The VAE of the tutorial's chapter 1: encoder q(z|x), decoder p(x|z), prior N(0, I).

Shapes: N = batch, D = data dimension (C*H*W for images), d = latent dimension.

    encode(x)          x: (N, *shape)   -> DiagonalGaussian q(z|x) with mu, logvar: (N, d)
    reparameterize(q)  z = mu + sigma * eps, eps ~ N(0, I)          (eq 1.16-1.24)
    decode(z)          z: (..., d)      -> decoder output (..., D): what the likelihood takes
                       (the mean f(z) for the Gaussian, logits for the Bernoulli ones)
    decoder_mean(out)                   -> E[x|z] (..., D), what a decoded image shows
    log_px_given_z(x, out)              -> log p(x|z) per sample, nats, constant included
    generate(n)                         -> n decoded prior samples (Fig 1.7)

A model may hold a `Standardizer` (trainer.preprocess, `set_standardizer`): its networks then
see x' = (x - m) / s, while x, decoded means and every log-density stay in the data's own
units (log p(x|z) gets the change of variables' -sum_j log s_j). Without one (images, the
built-ins) nothing is transformed.

The likelihood is an object from `trainer.likelihoods.LIKELIHOODS`, the architecture a class
from `ARCHITECTURES`, both picked by name; nothing else is ever imported from a config file.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from typing import TYPE_CHECKING

from . import config, likelihoods
from .errors import TrainerError
from .likelihoods import LOG_2PI

if TYPE_CHECKING:
    from .config import ModelConfig


# The encoder's log-variance is bounded below, softly, at LOGVAR_MIN (posterior sigma >= exp(-15),
# about 3e-7 in the data's units). Without a bound, unscaled data can drive sigma to 1e-30 and
# below: exp(logvar) then underflows float32 (at about -87 to -103), 1/sigma^2 overflows, and
# the KL (which has -logvar in it) and any log q(z|x) become inf or NaN. -30 keeps every
# quantity finite with a wide margin and lies far below any posterior a useful model learns.
LOGVAR_MIN = -30.0


def bounded_logvar(raw: torch.Tensor) -> torch.Tensor:
    """LOGVAR_MIN + softplus(raw - LOGVAR_MIN): equal to raw (bit for bit) above LOGVAR_MIN + 20,
    smooth below, never under LOGVAR_MIN; its gradient, sigmoid(raw - LOGVAR_MIN), stays positive
    near the bound (a hard clamp's would be 0), so a unit pushed there can recover."""
    soft = LOGVAR_MIN + F.softplus(raw - LOGVAR_MIN)
    return torch.where(raw > LOGVAR_MIN + 20.0, raw, soft)


class DiagonalGaussian:
    """N(mu, diag(exp(logvar))) over the last dimension, as diffusers' DiagonalGaussianDistribution."""

    def __init__(self, mu: torch.Tensor, logvar: torch.Tensor):
        self.mu = mu  # (N, d)
        self.logvar = logvar  # (N, d) or broadcastable to it
        self.std = torch.exp(0.5 * logvar)

    def sample(self, n: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """z = mu + sigma * eps; shape (N, d), or (n, N, d) when n is given."""
        shape = self.mu.shape if n is None else (n, *self.mu.shape)
        eps = torch.randn(shape, generator=generator, device=self.mu.device, dtype=self.mu.dtype)
        return self.mu + self.std * eps

    def kl_per_dim(self) -> torch.Tensor:
        """KL(q || N(0, I)) per latent dimension (eq 1.34, diagonal case): (N, d), nats."""
        var = torch.exp(self.logvar)
        return 0.5 * (var + self.mu.pow(2) - 1.0 - self.logvar).expand_as(self.mu)

    def kl(self) -> torch.Tensor:
        """KL(q || N(0, I)) summed over dimensions: (N,), nats."""
        return self.kl_per_dim().sum(-1)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log q(z) for z of shape (..., N, d): (..., N), nats."""
        return -0.5 * (((z - self.mu) / self.std).pow(2) + self.logvar + LOG_2PI).sum(-1)


def log_standard_normal(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I) over the last dimension: (...,), nats."""
    return -0.5 * (z.pow(2) + LOG_2PI).sum(-1)


class VAE(nn.Module):
    """Encoder and decoder networks around a shared likelihood and sigma_dec.

    Subclasses build `encoder_net` and `decoder_net`; `encoder_net(x)` returns (mu, logvar).
    An architecture is a subclass listed in ARCHITECTURES, with a one-line `help` (the CLI's
    and the Train form's) and, if it cannot take every data shape, a `check_data_shape`.
    """

    help = ""

    @classmethod
    def check_data_shape(cls, cfg: ModelConfig, data_shape: tuple[int, ...]) -> None:
        """Raise TrainerError if this architecture cannot take samples of `data_shape`."""

    def __init__(self, cfg: ModelConfig, data_shape: tuple[int, ...]):
        super().__init__()
        self.cfg = cfg
        self.data_shape = tuple(data_shape)  # shape of one x, e.g. (1, 8, 8) or (2,)
        self.data_dim = math.prod(self.data_shape)  # D
        self.latent_dim = cfg.latent_dim  # d
        self.likelihood = likelihoods.get(cfg.likelihood)
        # sigma_dec lives in log space: learned as a parameter, or fixed as a buffer (1 for a
        # likelihood without a noise scale, where it is never used).
        if self.likelihood.has_sigma_dec and cfg.sigma_dec == "learned":
            self.log_sigma_dec = nn.Parameter(torch.zeros(()))
        else:
            fixed = float(cfg.sigma_dec) if self.likelihood.has_sigma_dec else 1.0
            self.register_buffer("log_sigma_dec", torch.tensor(math.log(fixed)))
        # standardisation (set_standardizer): m and s (D,) float32, and -sum_j log s_j; not in
        # the checkpoint's weights (it is saved as standardize.json), None for the data's own units
        self.register_buffer("x_shift", None, persistent=False)
        self.register_buffer("x_scale", None, persistent=False)
        self.register_buffer("x_log_det", None, persistent=False)
        self.standardizer = None  # the trainer.preprocess.Standardizer, or None

    def set_standardizer(self, s) -> None:
        """Let the networks see x' = (x - s.mean) / s.scale (trainer.preprocess.Standardizer,
        D values), or None: x as it is."""
        self.standardizer = s
        if s is None:
            self.x_shift = self.x_scale = self.x_log_det = None
            return
        if len(s.mean) != self.data_dim:
            raise TrainerError(f"the standardisation has {len(s.mean)} values, the data {self.data_dim}")
        device = self.log_sigma_dec.device
        self.x_shift = torch.tensor(s.mean, dtype=torch.float32, device=device)  # (D,)
        self.x_scale = torch.tensor(s.scale, dtype=torch.float32, device=device)  # (D,)
        self.x_log_det = torch.tensor(s.log_det, dtype=torch.float32, device=device)  # -sum_j log s_j

    def standardized(self, x_flat: torch.Tensor) -> torch.Tensor:
        """x' = (x - m) / s for x (..., D) flat; x itself without a standardizer."""
        if self.x_shift is None:
            return x_flat
        return (x_flat - self.x_shift) / self.x_scale

    # -- the three steps of pytorch/examples' VAE ---------------------------------------
    def encode(self, x: torch.Tensor) -> DiagonalGaussian:
        if self.x_shift is not None:
            x = self.standardized(x.reshape(len(x), -1)).reshape(x.shape)
        mu, raw_logvar = self.encoder_net(x)
        return DiagonalGaussian(mu, bounded_logvar(raw_logvar))

    @staticmethod
    def reparameterize(q: DiagonalGaussian, n: int | None = None,
                       generator: torch.Generator | None = None) -> torch.Tensor:
        return q.sample(n, generator)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Decoder output for z (..., d): (..., D) flat, in the likelihood's terms (see
        decoder_mean for E[x|z])."""
        lead = z.shape[:-1]
        out = self.decoder_net(z.reshape(-1, self.latent_dim))
        return out.reshape(*lead, self.data_dim)

    # -- likelihood -----------------------------------------------------------------------
    @property
    def sigma_dec(self) -> torch.Tensor:
        return torch.exp(self.log_sigma_dec)

    def reported_sigma_dec(self) -> float | None:
        """sigma_dec as a number for metrics, or None for a likelihood without one."""
        return float(self.sigma_dec.detach()) if self.likelihood.has_sigma_dec else None

    def log_px_given_z(self, x_flat: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """log p(x|z) for x (N, D) and decoder output (..., N, D): (..., N), nats (the
        likelihood's log_prob, normalising constant included). With a standardizer: the
        density of x' plus -sum_j log s_j (change of variables), the density of x in its units."""
        if self.x_shift is None:
            return self.likelihood.log_prob(x_flat, out, self.log_sigma_dec)
        return self.likelihood.log_prob(self.standardized(x_flat), out, self.log_sigma_dec) + self.x_log_det

    def decoder_mean(self, out: torch.Tensor) -> torch.Tensor:
        """E[x|z] for decoder output (..., D): what a decoded image shows (data units)."""
        mean = self.likelihood.mean(out)
        return mean if self.x_shift is None else mean * self.x_scale + self.x_shift

    def init_from_data(self, x_train) -> None:
        """Start the decoder at the data (vae-math.md, practical points): the output bias at
        which the decoder's mean is the data mean (likelihood.output_bias_start), and a learned
        sigma_dec = `initial_sigma_dec`.
        x_train: a tensor (N, *shape), or rows on disk (trainer.mapped.MappedRows, data larger
        than memory) whose mean and variance are summed chunk by chunk."""
        if isinstance(x_train, torch.Tensor):
            x = x_train.reshape(len(x_train), -1).float()
            mean, var = x.mean(0), None
        else:  # x: the evenly spaced rows initial_sigma_dec would take, var: (D,) over all rows
            mean, var, x = x_train.column_stats()
        if self.x_shift is not None:  # the networks' units: x' = (x - m) / s
            shift, scale = self.x_shift.to(x.device), self.x_scale.to(x.device)
            x, mean = (x - shift) / scale, (mean.to(x.device) - shift) / scale
            var = None if var is None else var / scale.double().pow(2)
        with torch.no_grad():
            bias = self.output_bias()
            if bias is not None:
                bias.copy_(self.likelihood.output_bias_start(mean).reshape(bias.shape))
            if isinstance(self.log_sigma_dec, nn.Parameter):
                self.log_sigma_dec.fill_(math.log(initial_sigma_dec(x, self.latent_dim, var=var)))

    def output_bias(self) -> torch.Tensor | None:
        raise NotImplementedError

    def generate(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Generation (Fig 1.7): z ~ N(0, I), returns the decoded means (n, *data_shape)."""
        p = next(self.parameters())
        z = torch.randn(n, self.latent_dim, generator=generator, device=p.device, dtype=p.dtype)
        return self.decoder_mean(self.decode(z)).reshape(n, *self.data_shape)


def initial_sigma_dec(x: torch.Tensor, latent_dim: int, max_rows: int = 1024,
                      var: torch.Tensor | None = None) -> float:
    """Start value for a learned sigma_dec, from the training data x (N, D).

    A learned sigma_dec moves only about lr per Adam step, so where it starts matters. The
    RMS deviation from the mean (the calibrated optimum for a decoder that outputs the mean)
    is exactly the noise level at which using a latent dimension stops paying: on isotropic
    data such as gmm2d the posterior then collapses. Start instead from the noise level of
    the best *linear* decoder with d latent dimensions (probabilistic PCA, Tipping & Bishop
    1999): sigma^2 = mean variance outside the top-d principal directions. A trained
    nonlinear decoder does at least as well. When d >= D that residual is 0, so the value is
    kept at least a quarter of the RMS deviation. The principal directions come from at
    most `max_rows` evenly spaced rows; deterministic. `var` (D,): the per-value variance of
    the whole data set when x holds only those rows (data read from disk in chunks).
    """
    n, D = x.shape
    var = x.var(0, unbiased=False) if var is None else var
    total_var = float(var.double().sum())  # trace of the covariance
    floor = max(0.25 * math.sqrt(total_var / D), 1e-3)
    if latent_dim >= D:
        return floor
    rows = x[:: max(1, n // max_rows)][:max_rows].float()
    rows = rows - rows.mean(0)
    gram = rows.T @ rows if D <= len(rows) else rows @ rows.T  # same non-zero eigenvalues
    eigenvalues = torch.linalg.eigvalsh(gram.double() / len(rows)).flip(0)  # descending
    top = float(eigenvalues[:latent_dim].clamp_min(0).sum())
    residual = max(total_var - top, 0.0) / (D - latent_dim)
    return max(math.sqrt(residual), floor)


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class MLPEncoder(nn.Module):
    def __init__(self, sizes: list[int], latent_dim: int):
        super().__init__()
        self.net = _mlp(sizes + [2 * latent_dim])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.net(x.reshape(len(x), -1))  # (N, 2d)
        mu, logvar = h.chunk(2, dim=-1)
        return mu, logvar


class MLPVAE(VAE):
    """D -> hidden... -> (mu, logvar); d -> reversed hidden... -> D. ReLU between layers."""

    help = "fully connected, ReLU between layers (--hidden sizes)"

    def __init__(self, cfg: ModelConfig, data_shape):
        super().__init__(cfg, data_shape)
        self.encoder_net = MLPEncoder([self.data_dim, *cfg.hidden], cfg.latent_dim)
        self.decoder_net = _mlp([cfg.latent_dim, *reversed(cfg.hidden), self.data_dim])

    def output_bias(self):
        return self.decoder_net[-1].bias


class LinearEncoder(nn.Module):
    """Affine mean; log-variance a learned vector that does not depend on x (Example 1.3)."""

    def __init__(self, data_dim: int, latent_dim: int):
        super().__init__()
        self.mean = nn.Linear(data_dim, latent_dim)
        self.logvar = nn.Parameter(torch.zeros(latent_dim))

    def forward(self, x):
        mu = self.mean(x.reshape(len(x), -1))
        return mu, self.logvar.expand_as(mu)


class LinearVAE(VAE):
    """The linear-Gaussian example's model: affine encoder mean, per-dim encoder variance,
    affine decoder mean."""

    help = "affine encoder mean and decoder (the linear Gaussian examples 1.3-1.6)"

    def __init__(self, cfg: ModelConfig, data_shape):
        super().__init__(cfg, data_shape)
        self.encoder_net = LinearEncoder(self.data_dim, cfg.latent_dim)
        self.decoder_net = nn.Linear(cfg.latent_dim, self.data_dim)

    def output_bias(self):
        return self.decoder_net.bias


class ConvEncoder(nn.Module):
    def __init__(self, data_shape, channels: list[int], latent_dim: int):
        super().__init__()
        self.shape_in = tuple(data_shape)  # (C, H, W) of one image
        c, h, w = data_shape
        layers: list[nn.Module] = []
        for ch in channels:  # each layer halves H and W
            layers += [nn.Conv2d(c, ch, 4, stride=2, padding=1), nn.ReLU()]
            c, h, w = ch, h // 2, w // 2
        self.conv = nn.Sequential(*layers, nn.Flatten())
        self.fc = nn.Linear(c * h * w, 2 * latent_dim)

    def forward(self, x):
        h = self.fc(self.conv(x.reshape(len(x), *self.shape_in)))
        mu, logvar = h.chunk(2, dim=-1)
        return mu, logvar


class ConvDecoder(nn.Module):
    def __init__(self, data_shape, channels: list[int], latent_dim: int):
        super().__init__()
        c, self.h, self.w = data_shape
        k = len(channels)
        self.h0, self.w0 = -(-self.h // 2**k), -(-self.w // 2**k)  # ceil: crop at the end
        self.c0 = channels[-1]
        self.fc = nn.Linear(latent_dim, self.c0 * self.h0 * self.w0)
        layers: list[nn.Module] = []
        outs = list(reversed(channels[:-1])) + [c]
        cin = self.c0
        for i, ch in enumerate(outs):
            layers.append(nn.ConvTranspose2d(cin, ch, 4, stride=2, padding=1))
            if i < len(outs) - 1:
                layers.append(nn.ReLU())
            cin = ch
        self.deconv = nn.Sequential(*layers)
        self.out_bias = nn.Parameter(torch.zeros(data_shape))  # per-pixel output bias

    def forward(self, z):
        h = F.relu(self.fc(z)).reshape(len(z), self.c0, self.h0, self.w0)
        img = self.deconv(h)[:, :, : self.h, : self.w] + self.out_bias
        return img.reshape(len(z), -1)


class ConvVAE(VAE):
    """Two (or more) stride-2 4x4 convolutions down, transposed convolutions up; images only."""

    help = "convolutional, for images of at least 16x16"

    @classmethod
    def check_data_shape(cls, cfg, data_shape):
        k = len(cfg.conv_channels)
        if len(data_shape) != 3 or min(data_shape[1:]) < 16 or min(data_shape[1:]) < 2**k:
            raise TrainerError(
                f"conv needs images of at least 16x16 (this data has shape {list(data_shape)}): use --arch mlp")

    def __init__(self, cfg: ModelConfig, data_shape):
        super().__init__(cfg, data_shape)
        self.encoder_net = ConvEncoder(self.data_shape, cfg.conv_channels, cfg.latent_dim)
        self.decoder_net = ConvDecoder(self.data_shape, cfg.conv_channels, cfg.latent_dim)

    def output_bias(self):
        return self.decoder_net.out_bias


ARCHITECTURES: dict[str, type[VAE]] = {"mlp": MLPVAE, "conv": ConvVAE, "linear": LinearVAE}
if tuple(ARCHITECTURES) != config.ARCHITECTURES:  # the names config validation accepts, torch-free
    raise ImportError(f"trainer.config.ARCHITECTURES must list {tuple(ARCHITECTURES)}")


def build_model(cfg: ModelConfig, data_shape) -> VAE:
    """Build the architecture named in cfg for data of the given shape; raises TrainerError."""
    data_shape = tuple(int(s) for s in data_shape)
    if cfg.arch not in ARCHITECTURES:
        raise TrainerError(f"unknown architecture {cfg.arch!r}: choose one of {', '.join(ARCHITECTURES)}")
    arch = ARCHITECTURES[cfg.arch]
    arch.check_data_shape(cfg, data_shape)
    return arch(cfg, data_shape)
