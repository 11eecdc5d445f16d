"""The trainer's direct fused-Adam step updates exactly as ``torch.optim.Adam.step`` does."""

from __future__ import annotations

import pytest
import torch

from prismrec.train.trainer import _fused_adam_groups, adam_step, release_grads


def _run(step, **adam):
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(5, 3)), torch.nn.Parameter(torch.randn(4)),
              torch.nn.Parameter(torch.randn(2, 2))]
    groups = [{"params": params[:2]}, {"params": params[2:], "lr": 0.05, "weight_decay": 0.1}]
    optimizer = torch.optim.Adam(groups, lr=0.01, fused=True, **adam)
    for t in range(6):
        optimizer.zero_grad(set_to_none=True)
        used = params if t % 3 else params[:2]  # the third parameter has no gradient every third step
        sum((p * torch.randn_like(p)).sum() for p in used).backward()
        step(optimizer)
    return params, optimizer.state_dict()


@pytest.mark.parametrize("adam", [{}, {"betas": (0.8, 0.9), "eps": 1e-6}, {"amsgrad": True}])
def test_direct_step_equals_adam_step_bit_for_bit(adam):
    got, got_state = _run(adam_step, **adam)
    want, want_state = _run(lambda o: o.step(), **adam)
    for g, w in zip(got, want):
        assert torch.equal(g, w)
    for k, st in want_state["state"].items():
        for name, value in st.items():
            assert torch.equal(got_state["state"][k][name], value), (k, name)


def test_direct_path_is_taken_only_where_it_is_exact():
    p = torch.nn.Parameter(torch.ones(3))
    p.grad = torch.ones(3)
    fused = torch.optim.Adam([p], fused=True)
    assert _fused_adam_groups(fused) is None  # no state yet: the first step creates it
    fused.step()
    assert _fused_adam_groups(fused) is not None
    hooked = fused.register_step_post_hook(lambda *a: None)
    assert _fused_adam_groups(fused) is None
    hooked.remove()
    plain = torch.optim.Adam([p])
    plain.step()
    assert _fused_adam_groups(plain) is None  # not fused
    amsgrad = torch.optim.Adam([p], fused=True, amsgrad=True)
    amsgrad.step()
    assert _fused_adam_groups(amsgrad) is None


def test_release_grads_is_zero_grad_set_to_none():
    """``release_grads`` leaves every gradient ``None`` as ``zero_grad(set_to_none=True)`` does, and
    an optimiser class with its own ``zero_grad`` gets that call."""
    params = [torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))]
    optimizer = torch.optim.Adam([{"params": params[:1]}, {"params": params[1:]}], fused=True)
    for p in params:
        p.grad = torch.ones_like(p)
    release_grads(optimizer)
    assert all(p.grad is None for p in params)

    class Counting(torch.optim.SGD):
        calls = 0

        def zero_grad(self, set_to_none: bool = True) -> None:
            Counting.calls += 1
            super().zero_grad(set_to_none)

    release_grads(Counting(params, lr=0.1))
    assert Counting.calls == 1
