"""The training step without autograd, for the `mlp` and `linear` architectures (issue 18).

Eager autograd spends most of a small model's step outside the arithmetic: a few hundred
operator calls (views, transposes, temporaries, the graph's bookkeeping), each costing
microseconds. Here the same step is written out by hand, the way a textbook derives it:

    forward   h_{l+1} = relu(h_l W_l^T + b_l)   one `addmm` into a preallocated buffer, ReLU in place
    ELBO      recon (eq 1.31), kl (eq 1.34) summed over the batch
    backward  dLoss/d(decoder output) in closed form for the likelihood (below), then per layer
              W.grad = g^T h, b.grad = sum(g), g <- (g W) masked where h = 0
    Adam      one fused kernel for every parameter (FusedAdam)

with the same noise eps, the same log-variance bound (model.bounded_logvar) and the same
Adam as the reference step (trainer.train.Trainer.reference_step, autograd), so the two give
the same weights up to float rounding (tests/trainer/test_trainer_fastpath.py checks 1e-5
after an epoch, for every likelihood and for sigma_dec learned and fixed).

The loss is minus the batch mean of the objective recon - w kl, with M noise draws per x:

    Loss = -(1/b) sum_n [ (1/M) sum_m log p(x_n | z_mn) - w KL_n ],   z_mn = mu_n + sigma_n eps_mn

Its gradient with respect to the decoder output out_mn (the same for every layer above it):

    gaussian              (out - x) / sigma_dec^2 / (b M);   d/d log sigma_dec: D - SSQ / sigma_dec^2 / (b M)
    bernoulli             (sigmoid(out) - x) / (b M)
    continuous-bernoulli  (sigmoid(out) - x - dlogC(out)) / (b M),  dlogC(eta) = 1/eta - 1/sinh(eta)

and through z = mu + sigma eps and the closed-form KL:

    dLoss/dmu = sum_m g_z + (w/b) mu,    dLoss/dlogvar = (sigma/2) sum_m g_z eps + (w/2b)(sigma^2 - 1)
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .likelihoods import LOG_2PI
from .model import LOGVAR_MIN, LinearVAE, MLPVAE, VAE

LIKELIHOODS = ("gaussian", "bernoulli", "continuous-bernoulli")  # those with a closed-form gradient here


class FusedAdam:
    """Adam as `torch.optim.Adam(params, lr, fused=True)` computes it, bit for bit (the same
    `torch._fused_adam_` kernel with the same arguments), without torch.optim's Python around
    it: that costs about 0.25 ms a step, and building a torch.optim optimizer imports
    torch._dynamo, about 1 s of a fresh process's start. state_dict() / load_state_dict()
    read and write torch.optim.Adam's format, so checkpoints do not depend on which is used."""

    def __init__(self, params, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.params = list(params)
        self.lr, self.betas, self.eps = lr, betas, eps
        # Adam's step count t of each parameter (read by the kernel, counted here). While every
        # parameter steps together (always, on the fast step) they share one tensor: one add a
        # step instead of one per parameter (a _foreach_add_ over 10 scalars costs ~20 us).
        self._set_steps([0.0] * len(self.params))
        self.exp_avgs = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]
        self.exp_avg_sqs = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]
        self.started = False  # torch.optim.Adam creates its state at the first step: none before

    @staticmethod
    def available(params) -> bool:
        return hasattr(torch, "_fused_adam_") and all(
            p.dtype in (torch.float32, torch.float64) and p.device.type in ("cpu", "cuda") for p in params)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        """One Adam step of every parameter that has a gradient (as torch.optim skips the others)."""
        grads = [p.grad for p in self.params]
        if all(g is not None for g in grads):  # the usual case: no lists to build
            if self.shared_step:
                self.steps[0].add_(1)  # every parameter's t, at once
                self.started = True
                torch._fused_adam_(self.params, grads, self.exp_avgs, self.exp_avg_sqs, [], self.steps, amsgrad=False,
                                   lr=self.lr, beta1=self.betas[0], beta2=self.betas[1], weight_decay=0.0,
                                   eps=self.eps, maximize=False, grad_scale=None, found_inf=None)
                return
            params, m, v, steps = self.params, self.exp_avgs, self.exp_avg_sqs, self.steps
        else:
            self._unshare_steps()  # some parameters step without the others: their t part
            on = [i for i, p in enumerate(self.params) if p.grad is not None]
            params, grads = [self.params[i] for i in on], [self.params[i].grad for i in on]
            m, v, steps = [self.exp_avgs[i] for i in on], [self.exp_avg_sqs[i] for i in on], [self.steps[i] for i in on]
        if not params:
            return
        self.started = True
        torch._foreach_add_(steps, 1)
        torch._fused_adam_(params, grads, m, v, [], steps, amsgrad=False, lr=self.lr, beta1=self.betas[0],
                           beta2=self.betas[1], weight_decay=0.0, eps=self.eps, maximize=False,
                           grad_scale=None, found_inf=None)

    def state_dict(self) -> dict:
        state = {} if not self.started else {
            i: {"step": s.clone(), "exp_avg": m, "exp_avg_sq": v}  # a step of its own (safetensors refuses shared tensors)
            for i, (s, m, v) in enumerate(zip(self.steps, self.exp_avgs, self.exp_avg_sqs)) if float(s) > 0}
        return {"state": state, "param_groups": [{"lr": self.lr, "params": list(range(len(self.params)))}]}

    def load_state_dict(self, sd: dict) -> None:
        """Take Adam's state in torch.optim.Adam's format; ValueError when it does not fit."""
        state = sd["state"]
        for i, s in state.items():
            if not 0 <= int(i) < len(self.params):
                raise ValueError(f"state for parameter {i}, which this model does not have")
            p = self.params[int(i)]
            if tuple(s["exp_avg"].shape) != tuple(p.shape) or tuple(s["exp_avg_sq"].shape) != tuple(p.shape):
                raise ValueError(f"Adam's moments for parameter {i} have another shape than it")
        counts = [0.0] * len(self.params)  # no state: not stepped yet
        for i, s in state.items():
            i = int(i)
            self.exp_avgs[i].copy_(s["exp_avg"])
            self.exp_avg_sqs[i].copy_(s["exp_avg_sq"])
            counts[i] = float(s["step"])
        self._set_steps(counts)
        self.started = bool(state)

    def _set_steps(self, counts: list[float]) -> None:
        """Adam's step counts, one tensor shared by all when they are equal (on one device)."""
        if len(set(counts)) <= 1 and len({p.device for p in self.params}) <= 1:
            one = torch.full((), counts[0] if counts else 0.0, dtype=torch.float32,
                             device=self.params[0].device if self.params else "cpu")
            self.steps, self.shared_step = [one] * len(self.params), True
        else:
            self.steps = [torch.full((), c, dtype=torch.float32, device=p.device) for c, p in zip(counts, self.params)]
            self.shared_step = False

    def _unshare_steps(self) -> None:
        if self.shared_step:
            self.steps, self.shared_step = [s.clone() for s in self.steps], False


def supports(model: VAE, x_train) -> bool:
    """Whether FastStep can train this model: an `mlp` or `linear` VAE in float32 with a
    likelihood of LIKELIHOODS, its data one tensor in memory, not standardised (a model with
    a trainer.preprocess standardizer, x' = (x - m) / s, trains on the autograd step)."""
    return (type(model) in (MLPVAE, LinearVAE) and model.likelihood.name in LIKELIHOODS
            and getattr(model, "x_shift", None) is None
            and isinstance(x_train, torch.Tensor) and all(p.dtype == torch.float32 for p in model.parameters()))


def _layers(net: nn.Module) -> list[nn.Linear]:
    """The Linear layers of an MLP (nn.Sequential of Linear and ReLU, ReLU between) or one Linear."""
    if isinstance(net, nn.Linear):
        return [net]
    layers = list(net)
    for i, layer in enumerate(layers):  # Linear, ReLU, Linear, ..., Linear
        want = nn.Linear if i % 2 == 0 else nn.ReLU
        if type(layer) is not want:
            raise ValueError(f"fastpath: unexpected layer {layer!r}")
    return [layer for layer in layers if isinstance(layer, nn.Linear)]


class _Buffers:
    """Every tensor one step of b rows writes, and the views of them it reads, made once per
    batch size (a full batch and the epoch's last one): a view costs an operator call too."""

    def __init__(self, step: "FastStep", b: int):
        M, d, D = step.M, step.d, step.D
        like = dict(dtype=step.x.dtype, device=step.x.device)
        self.x = torch.empty(b, D, **like)
        # activations (after ReLU) per layer: encoder rows b, decoder rows M b
        self.enc_h = [torch.empty(b, layer.out_features, **like) for layer in step.enc]
        self.dec_h = [torch.empty(M * b, layer.out_features, **like) for layer in step.dec]
        # gradients with respect to each layer's output, and their transposes (for W.grad = g^T h)
        self.g_code = torch.empty(b, step.enc[-1].out_features, **like)  # dLoss/d(mu, raw logvar)
        self.enc_g = [torch.empty(b, layer.in_features, **like) for layer in step.enc[1:]] + [self.g_code]
        self.g_out = torch.empty(M * b, D, **like)  # dLoss/d(decoder output)
        self.dec_g = [torch.empty(M * b, layer.in_features, **like) for layer in step.dec[1:]] + [self.g_out]
        self.enc_gt = [g.t() for g in self.enc_g]
        self.dec_gt = [g.t() for g in self.dec_g]
        self.g_z = torch.empty(M * b, d, **like)  # dLoss/dz
        self.g_z3 = self.g_z.view(M, b, d)
        self.g_mu = self.g_z3[0] if M == 1 else None
        # A z 2 to 8 wide: MKL's products with an output that narrow (g_z = g W, (M b, d); the
        # first decoder layer's W.grad = g^T z, (H, d)) take 3-4x the time of the same products
        # transposed ((d, M b) and (d, H), written here and copied), which give the same numbers
        # (tested bit for bit on the digits model, d = 2). At d = 1 and from d = 12 the direct
        # products are as fast or faster.
        narrow = 2 <= d <= 8
        self.g_z_t = torch.empty(d, M * b, **like) if narrow else None
        self.w_grad_t = torch.empty(d, step.dec[0].out_features, **like) if narrow else None
        self.g_z_t_t = self.g_z_t.t() if narrow else None  # their transposes, (M b, d) and (H, d): views
        self.w_grad_t_t = self.w_grad_t.t() if narrow else None
        self.z = torch.empty(M, b, d, **like)
        self.z_flat = self.z.view(M * b, d)
        self.z_flat_t = self.z_flat.t()
        self.enc_in = [self.x] + self.enc_h[:-1]  # the input of each encoder layer
        self.dec_in = [self.z_flat] + self.dec_h[:-1]
        self.out3 = self.dec_h[-1].view(M, b, D)
        self.g_out3 = self.g_out.view(M, b, D)
        self.g_out_flat = self.g_out.view(-1)
        self.t = torch.empty(M, b, d, **like)
        self.t0 = self.t[0]
        self.std = torch.empty(b, d, **like)
        code = self.enc_h[-1]
        if step.linear:
            self.mu, self.g_mu_out, self.g_logvar_out = code, self.g_code, None
        else:
            self.mu, self.raw = code[:, :d], code[:, d:]
            self.g_mu_out, self.g_logvar_out = self.g_code[:, :d], self.g_code[:, d:]


class FastStep:
    """One training step of an MLP or linear VAE on rows `batch` of x_train, by hand (see the
    module docstring), into buffers made once per batch size."""

    def __init__(self, model: VAE, x_train: torch.Tensor, batch_size: int, mc_samples: int):
        self.model = model
        self.x = x_train.reshape(len(x_train), -1)  # (N, D)
        self.D, self.d, self.M = model.data_dim, model.latent_dim, mc_samples
        self.likelihood = model.likelihood.name
        self.linear = isinstance(model, LinearVAE)
        if self.linear:
            self.enc, self.enc_logvar = [model.encoder_net.mean], model.encoder_net.logvar
        else:
            self.enc, self.enc_logvar = _layers(model.encoder_net.net), None
        self.dec = _layers(model.decoder_net)
        # the weights' transposes, as views (Adam and load_state_dict change the weights in place)
        self.enc_wt = [layer.weight.t() for layer in self.enc]
        self.dec_wt = [layer.weight.t() for layer in self.dec]
        self.learned_sigma = isinstance(model.log_sigma_dec, nn.Parameter)
        for p in model.parameters():  # gradients are written into these, never reallocated
            p.grad = torch.zeros_like(p)
        self.buffers: dict[int, _Buffers] = {}

    @torch.no_grad()
    def __call__(self, batch: torch.Tensor, eps: torch.Tensor, w: float) -> tuple[float, float]:
        """Forward and backward of the batch `batch` (b,) with noise eps (M, b, d) and KL
        weight w; leaves the gradient of Loss in every parameter's .grad. Returns the batch
        sums (recon, kl), nats (Python floats)."""
        model, M, d, D = self.model, self.M, self.d, self.D
        b = len(batch)
        buf = self.buffers.get(b) or self.buffers.setdefault(b, _Buffers(self, b))
        scale = 1.0 / (b * M)  # Loss averages over the b rows and M draws
        enc, dec = self.enc, self.dec
        last_enc, last_dec = len(enc) - 1, len(dec) - 1
        # -- encoder: x (b, D) -> h -> (mu, raw logvar) -----------------------------------
        x = torch.index_select(self.x, 0, batch, out=buf.x)
        for j, layer in enumerate(enc):
            h = torch.addmm(layer.bias, buf.enc_in[j], self.enc_wt[j], out=buf.enc_h[j])
            if j < last_enc:
                h.relu_()
        mu = buf.mu
        raw = self.enc_logvar.expand(b, d) if self.linear else buf.raw  # linear: Example 1.3's per-dim logvar
        # model.bounded_logvar: raw itself above LOGVAR_MIN + 20 (checked once for the batch)
        if float(raw.min()) > LOGVAR_MIN + 20.0:
            logvar, dbound = raw, None
        else:
            soft = LOGVAR_MIN + torch.nn.functional.softplus(raw - LOGVAR_MIN)
            above = raw > LOGVAR_MIN + 20.0
            logvar = torch.where(above, raw, soft)
            dbound = torch.where(above, torch.ones_like(raw), torch.sigmoid(raw - LOGVAR_MIN))
        std = torch.mul(logvar, 0.5, out=buf.std).exp_()  # (b, d), as DiagonalGaussian
        torch.addcmul(mu, std, eps, out=buf.z)  # z = mu + sigma eps: (M, b, d), eq 1.24
        # -- decoder: z (M b, d) -> out (M b, D) ----------------------------------------------
        for j, layer in enumerate(dec):
            h = torch.addmm(layer.bias, buf.dec_in[j], self.dec_wt[j], out=buf.dec_h[j])
            if j < last_dec:
                h.relu_()
        out, out3, g = buf.dec_h[-1], buf.out3, buf.g_out
        # -- the likelihood: recon's batch sum and dLoss/d(out), closed form ------------------
        if self.likelihood == "gaussian":
            log_sigma = float(model.log_sigma_dec)
            inv_var = math.exp(-2.0 * log_sigma)
            torch.sub(out3, x, out=buf.g_out3)  # out - x
            ssq = float(torch.dot(buf.g_out_flat, buf.g_out_flat))  # sum of ||x - f(z)||^2, rows and draws
            recon = -0.5 * ssq * inv_var / M - 0.5 * b * D * (LOG_2PI + 2.0 * log_sigma)  # eq 1.33
            g.mul_(inv_var * scale)
            if self.learned_sigma:
                model.log_sigma_dec.grad.fill_(D - inv_var * ssq * scale)
        else:
            bce = torch.nn.functional.binary_cross_entropy_with_logits(out3, x.expand_as(out3), reduction="sum")
            recon = -float(bce) / M
            torch.sigmoid(out, out=g)
            buf.g_out3.sub_(x)
            if self.likelihood == "continuous-bernoulli":
                lik = model.likelihood
                recon += float(lik.log_normaliser(out).sum()) / M
                g.sub_(_dlog_normaliser(out, lik.TAYLOR_BELOW))
            g.mul_(scale)
        # -- decoder backward: W.grad = g^T h, b.grad = sum(g), g <- g W through the ReLU ------
        for j in range(last_dec, -1, -1):
            layer = dec[j]
            if j > 0 or buf.g_z_t is None:
                torch.mm(buf.dec_gt[j], buf.dec_in[j], out=layer.weight.grad)
            torch.sum(buf.dec_g[j], 0, out=layer.bias.grad)
            if j > 0:
                g_in = torch.mm(buf.dec_g[j], layer.weight, out=buf.dec_g[j - 1])
                torch.ops.aten.threshold_backward.grad_input(g_in, buf.dec_in[j], 0, grad_input=g_in)
            elif buf.g_z_t is None:
                torch.mm(buf.dec_g[0], layer.weight, out=buf.g_z)
            else:  # narrow z: the same products transposed (see _Buffers), then copied
                torch.mm(buf.z_flat_t, buf.dec_g[0], out=buf.w_grad_t)  # (d, H) = z^T g
                layer.weight.grad.copy_(buf.w_grad_t_t)
                torch.mm(self.dec_wt[0], buf.dec_gt[0], out=buf.g_z_t)  # (d, M b) = W^T g^T
                buf.g_z.copy_(buf.g_z_t_t)
        # -- the KL (eq 1.34) and the reparameterization, into dLoss/d(mu, raw logvar) ---------
        var = torch.exp(logvar)  # (b, d)
        mu_norm = float(torch.linalg.vector_norm(mu))
        kl = 0.5 * (float(var.sum()) + mu_norm * mu_norm - b * d - float(logvar.sum()))
        torch.mul(buf.g_z3, eps, out=buf.t)  # (M, b, d)
        t = buf.t0 if M == 1 else buf.t.sum(0)
        t.mul_(std)  # sigma sum_m g_z eps = 2 dLoss/dlogvar through z
        var.sub_(1.0).mul_(0.5 * w / b)  # (w/2b)(sigma^2 - 1): the KL's
        g_mu = buf.g_mu if M == 1 else buf.g_z3.sum(0)
        torch.add(g_mu, mu, alpha=w / b, out=buf.g_mu_out)
        if self.linear:
            g_logvar = torch.add(var, t, alpha=0.5)
            if dbound is not None:
                g_logvar.mul_(dbound)
            torch.sum(g_logvar, 0, out=self.enc_logvar.grad)
        else:
            torch.add(var, t, alpha=0.5, out=buf.g_logvar_out)
            if dbound is not None:
                buf.g_logvar_out.mul_(dbound)
        # -- encoder backward ------------------------------------------------------------------
        for j in range(last_enc, -1, -1):
            layer = enc[j]
            torch.mm(buf.enc_gt[j], buf.enc_in[j], out=layer.weight.grad)
            torch.sum(buf.enc_g[j], 0, out=layer.bias.grad)
            if j > 0:
                g_in = torch.mm(buf.enc_g[j], layer.weight, out=buf.enc_g[j - 1])
                torch.ops.aten.threshold_backward.grad_input(g_in, buf.enc_in[j], 0, grad_input=g_in)
        return recon, kl


def _dlog_normaliser(eta: torch.Tensor, taylor_below: float) -> torch.Tensor:
    """d log C / d eta of the continuous Bernoulli's normaliser C(eta) = eta / tanh(eta / 2):
    1/eta - 1/sinh(eta), and near 0 the derivative of likelihoods.ContinuousBernoulli's series."""
    small = eta.abs() < taylor_below
    safe = torch.where(small, torch.ones_like(eta), eta)
    exact = safe.reciprocal() - torch.sinh(safe).reciprocal()
    e2 = eta * eta
    series = eta * (1.0 / 6 + e2 * (-7.0 / 360 + e2 * (31.0 / 15120)))
    return torch.where(small, series, exact)
