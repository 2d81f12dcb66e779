"""The training step's two implementations agree: trainer.fastpath (FusedAdam, FastStep)
against the reference (torch.optim.Adam, autograd through elbo.elbo_terms), issue 18."""

from __future__ import annotations

import math

import pytest
import torch

from trainer import RunConfig
from trainer.data import load_dataset
from trainer.distributed import DistributedTrainer
from trainer.elbo import elbo_terms
from trainer.errors import TrainerError
from trainer.fastpath import FusedAdam
from trainer.train import Callbacks, Trainer


@pytest.mark.parametrize("skip_some", [False, True], ids=["every-step-all", "some-skipped"])
def test_fused_adam_is_torch_adam_bit_for_bit(skip_some):
    """The same kernel with the same arguments: identical weights and moments after many
    steps, with every parameter stepping each time (one shared step count) and when a
    parameter has no gradient in some steps (torch skips it then: the counts part), and
    a state_dict that torch.optim.Adam loads and continues from identically."""
    gen = torch.Generator().manual_seed(0)
    shapes = [(7, 5), (5,), ()]
    start = [torch.randn(s, generator=gen) for s in shapes]
    ours = [p.clone().requires_grad_() for p in start]
    theirs = [p.clone().requires_grad_() for p in start]
    adam_ours, adam_theirs = FusedAdam(ours, lr=3e-3), torch.optim.Adam(theirs, lr=3e-3, fused=True)
    for step in range(30):
        grads = [torch.randn(s, generator=gen) * 10 ** (step % 5 - 2) for s in shapes]
        for params in (ours, theirs):
            for i, (p, g) in enumerate(zip(params, grads)):
                p.grad = None if (skip_some and i == 1 and step % 3 == 0) else g.clone()
        adam_ours.step()
        adam_theirs.step()
    for a, b in zip(ours, theirs):
        assert torch.equal(a, b)
    sd_ours, sd_theirs = adam_ours.state_dict()["state"], adam_theirs.state_dict()["state"]
    assert sd_ours.keys() == sd_theirs.keys()
    for i in sd_ours:
        for name in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(sd_ours[i][name], sd_theirs[i][name]), (i, name)
    # each parameter's step is a tensor of its own in the state (a checkpoint saves them apart)
    assert len({id(sd_ours[i]["step"]) for i in sd_ours}) == len(sd_ours)
    # torch.optim.Adam's state loaded into ours (as --resume does) continues alike
    resumed = [p.detach().clone().requires_grad_() for p in theirs]
    adam_resumed = FusedAdam(resumed, lr=3e-3)
    adam_resumed.load_state_dict(adam_theirs.state_dict())
    grads = [torch.randn(s, generator=gen) for s in shapes]
    for params, adam in ((resumed, adam_resumed), (theirs, adam_theirs)):
        for p, g in zip(params, grads):
            p.grad = g.clone()
        adam.step()
    for a, b in zip(resumed, theirs):
        assert torch.equal(a, b)


def test_fused_adam_has_no_state_before_its_first_step():
    p = torch.zeros(3, requires_grad=True)
    assert FusedAdam([p], lr=1e-3).state_dict()["state"] == {}  # as torch.optim.Adam: a checkpoint at epoch 0


TRAIN_KEYS = ("train_elbo", "train_recon", "train_kl", "train_objective", "test_elbo", "sigma_dec")


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", 0)


def config(arch: str, likelihood: str, sigma_dec="learned", **train) -> RunConfig:
    cfg = RunConfig(data="digits")
    cfg.model.arch, cfg.model.likelihood, cfg.model.sigma_dec = arch, likelihood, sigma_dec
    cfg.train.epochs, cfg.train.device, cfg.train.seed = 1, "cpu", 3
    for k, v in train.items():
        setattr(cfg.train, k, v)
    return cfg


def train_both(cfg: RunConfig, data, prepare=lambda model: None):
    """One run per step implementation from the same seed: {step: (trainer, metrics rows)}."""
    out = {}
    for step in ("autograd", "fast"):
        trainer = Trainer(cfg, data, step=step)
        assert (trainer.fast_step is not None) == (step == "fast")
        prepare(trainer.model)
        rows: list[dict] = []
        trainer.run(Callbacks(on_epoch=rows.append))
        out[step] = trainer, rows
    return out


def assert_same(runs, tol: float = 1e-5):
    (ref, ref_rows), (fast, fast_rows) = runs["autograd"], runs["fast"]
    ref_w, fast_w = ref.model.state_dict(), fast.model.state_dict()
    assert ref_w.keys() == fast_w.keys()
    for name in ref_w:
        diff = (ref_w[name] - fast_w[name]).abs().max().item()
        assert diff <= tol, f"{name}: the fast step's weights differ from autograd's by {diff:.2e}"
    for a, b in zip(ref_rows, fast_rows):
        for key in TRAIN_KEYS:
            if a[key] is None:
                assert b[key] is None
            else:
                assert math.isclose(a[key], b[key], rel_tol=1e-5, abs_tol=1e-5), (key, a[key], b[key])
    assert ref.step == fast.step


CASES = [("gaussian", "learned"), ("gaussian", 0.3), ("bernoulli", "learned"), ("continuous-bernoulli", "learned")]


@pytest.mark.parametrize("arch", ["mlp", "linear"])
@pytest.mark.parametrize("likelihood,sigma_dec", CASES)
def test_the_fast_step_gives_autograds_weights_after_an_epoch(digits, arch, likelihood, sigma_dec):
    runs = train_both(config(arch, likelihood, sigma_dec), digits)
    assert_same(runs)
    # and the weights really trained: the initial weights are far from both
    start = Trainer(config(arch, likelihood, sigma_dec), digits, step="autograd").model.state_dict()
    final = runs["fast"][0].model.state_dict()
    assert max((start[k] - final[k]).abs().max().item() for k in start) > 1e-3


@pytest.mark.parametrize("latent_dim", [1, 5, 16])
def test_every_latent_width_agrees(digits, latent_dim):
    """A z 2 to 8 wide takes the transposed products of the first decoder layer's backward
    (fastpath._Buffers), 1 wide and from 9 wide the direct ones: both agree with autograd."""
    cfg = config("mlp", "gaussian", mc_samples=2)
    cfg.model.latent_dim = latent_dim
    assert_same(train_both(cfg, digits))


@pytest.mark.parametrize("arch", ["mlp", "linear"])
def test_several_noise_draws_a_kl_weight_and_warm_up_agree_too(digits, arch):
    cfg = config(arch, "bernoulli", mc_samples=3, beta=0.5, kl_warmup=2, epochs=2, batch_size=100)
    assert_same(train_both(cfg, digits))


@pytest.mark.parametrize("arch", ["mlp", "linear"])
def test_the_log_variance_bound_and_its_gradient_agree(digits, arch):
    """Encoder log-variances far below LOGVAR_MIN + 20 (model.bounded_logvar's soft branch,
    gradient sigmoid(raw - LOGVAR_MIN)) in both steps."""
    def push_down(model):
        with torch.no_grad():
            if arch == "mlp":
                model.encoder_net.net[-1].bias[model.latent_dim:] = -45.0
            else:
                model.encoder_net.logvar.fill_(-45.0)

    runs = train_both(config(arch, "gaussian", 0.3), digits, push_down)
    assert_same(runs)
    q = runs["fast"][0].model.encode(digits.x_test[:64])
    assert float(q.logvar.detach().max()) < -10  # still in the bound's soft region: the branch was trained through


def test_other_architectures_and_several_processes_take_the_reference_step(digits, monkeypatch):
    assert Trainer(config("mlp", "gaussian"), digits).fast_step is not None  # the default
    cfg = config("conv", "gaussian")
    cfg.data, cfg.model.conv_channels = "shapes:n=64,size=16", [4, 8]
    assert Trainer(cfg, load_dataset(cfg.data, 0), step="fast").fast_step is None  # no fast conv step
    assert not DistributedTrainer.fast_step_allowed  # DDP averages autograd's gradients
    monkeypatch.setenv("VAE_TRAIN_STEP", "autograd")
    assert Trainer(config("mlp", "gaussian"), digits).fast_step is None
    monkeypatch.setenv("VAE_TRAIN_STEP", "quick")
    with pytest.raises(TrainerError, match="unknown training step 'quick'"):
        Trainer(config("mlp", "gaussian"), digits)


def test_a_standardised_table_takes_the_reference_step(tables):
    cfg = config("mlp", "gaussian")
    cfg.data = str(tables["wine"])
    trainer = Trainer(cfg, load_dataset(cfg.data, 0))
    assert trainer.model.standardizer is not None and trainer.fast_step is None  # x' = (x - m) / s: autograd
    cfg.standardize = False
    assert Trainer(cfg, load_dataset(cfg.data, 0)).fast_step is not None


def autograd_gradients(model, x, eps, w):
    """The reference: autograd's gradient of minus the batch mean of recon - w kl."""
    terms = elbo_terms(model, x, eps=eps)
    loss = -(terms["recon"] - w * terms["kl"]).sum() / len(x)
    names, params = zip(*model.named_parameters())
    return dict(zip(names, torch.autograd.grad(loss, params)))


@pytest.mark.parametrize("arch", ["mlp", "linear"])
@pytest.mark.parametrize("likelihood,sigma_dec", CASES)
@pytest.mark.parametrize("logvar_start", [None, -36.0])
def test_one_steps_gradients_are_autograds(digits, arch, likelihood, sigma_dec, logvar_start):
    """The gradient itself, before Adam (which hides a gradient's scale): every parameter's,
    relative to its largest entry. logvar_start -36 puts the encoder's raw log-variances in
    the bound's soft region, where their gradient is scaled by sigmoid(raw - LOGVAR_MIN)."""
    cfg = config(arch, likelihood, sigma_dec, mc_samples=2)
    trainer = Trainer(cfg, digits, step="fast")
    model = trainer.model
    if logvar_start is not None:
        with torch.no_grad():
            if arch == "mlp":
                model.encoder_net.net[-1].bias[model.latent_dim:] = logvar_start
                model.encoder_net.net[-1].weight[model.latent_dim:] *= 0.01
            else:
                model.encoder_net.logvar.fill_(logvar_start)
    gen = torch.Generator().manual_seed(5)
    batch = torch.randperm(len(digits.x_train), generator=gen)[:100]
    eps = torch.randn(2, 100, model.latent_dim, generator=gen)
    w = 0.7
    expected = autograd_gradients(model, digits.x_train[batch], eps, w)
    recon, kl = trainer.fast_step(batch, eps, w)
    for name, p in model.named_parameters():
        ref = expected[name]
        scale = ref.abs().max().item()
        assert scale > 0, name
        err = (p.grad - ref).abs().max().item() / scale
        assert err < 1e-4, f"{name}: the fast step's gradient differs from autograd's by {err:.1e} of its largest entry"
    with torch.no_grad():
        terms = elbo_terms(model, digits.x_train[batch], eps=eps)
    assert math.isclose(recon, float(terms["recon"].sum()), rel_tol=1e-5)
    assert math.isclose(kl, float(terms["kl"].sum()), rel_tol=1e-5, abs_tol=1e-5)
