"""The training step's two implementations agree: trainer.fastpath (FusedAdam, FastStep)
against the reference (torch.optim.Adam, autograd through elbo.elbo_terms), issue 18."""

from __future__ import annotations

import torch

from trainer.fastpath import FusedAdam


def test_fused_adam_is_torch_adam_bit_for_bit():
    """The same kernel with the same arguments: identical weights and moments after many
    steps, also when a parameter has no gradient in some steps (torch skips it then), and
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
                p.grad = None if (i == 1 and step % 3 == 0) else g.clone()
        adam_ours.step()
        adam_theirs.step()
    for a, b in zip(ours, theirs):
        assert torch.equal(a, b)
    sd_ours, sd_theirs = adam_ours.state_dict()["state"], adam_theirs.state_dict()["state"]
    assert sd_ours.keys() == sd_theirs.keys()
    for i in sd_ours:
        for name in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(sd_ours[i][name], sd_theirs[i][name]), (i, name)
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
