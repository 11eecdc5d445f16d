"""``--set device=cuda`` is clean, checked without a GPU (:mod:`tests.standin_device`).

Every registered model trains three steps (forward, every loss term, backward, Adam step) and is
validated on a stand-in accelerator: the CPU computing, with a non-CPU device's rules. A host
tensor meeting device tensors (what a GPU refuses) fails at once; the steps after the first of
an epoch must make no host round trip (``.item()``, ``.cpu()``, a host-built tensor copied to
the device); validation copies its metric values to the host once. The values are the CPU run's.
The trainer's batch path is run as on a GPU: batches copied from pinned memory without blocking,
graphs never copied again, loss terms read back once per group of batches.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from prismrec.data import load_dataset
from prismrec.data.sampler import BPRSampler
from prismrec.data.synthetic import write_planted_dataset
from prismrec.eval import Evaluator
from prismrec.graph import SparseOperator
from prismrec.models import MODELS
from prismrec.train import trainer
from tests.builders import build_model
from tests.standin_device import STANDIN, DeviceMismatch, StandInDevice, StandInTensor, to_host

HOST_ROUND_TRIPS = ("read", "to_host", "to_device")

# The registry's models with their defaults, and the variants whose branches differ most.
VARIANTS = [
    ("siger", {"extended_branch": True, "perturb_at": "layers", "perturb_target": "per_modality",
               "anchor_form": "A3"}),
    ("egra", {"backbone": "gume"}),
    ("egra", {"item_links": "raw", "graph_fusion": "separate"}),
    ("lattice", {"graph_grad": False}),
]
CASES = [(name, {}) for name in sorted(MODELS)] + VARIANTS


def _case_id(case) -> str:
    name, settings = case
    return name + "".join(f"-{k}={v}" for k, v in settings.items() if not isinstance(v, (list, dict)))


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """80 users, 50 items, image + text features: seconds per model."""
    folder = write_planted_dataset(tmp_path_factory.mktemp("device") / "planted", n_users=80, n_items=50,
                                   per_user=10, seed=3)
    return load_dataset(folder)


def _model(name, dataset, settings):
    return build_model(name, dataset, 0, **settings)


def _batches(dataset, n=3, size=48):
    g = torch.Generator().manual_seed(5)
    return [tuple(torch.randint(0, m, (size,), generator=g) for m in (dataset.n_users, dataset.n_items,
                                                                     dataset.n_items)) for _ in range(n)]


def _steps(net, dataset, batches, device, dev: StandInDevice | None = None):
    """On ``device``: validation, epoch 0's hook, then one Adam step per batch (the trainer's GPU
    path, ``loss(batch, forward())``); the first step is phase ``epoch``, the others ``step``.
    Returns the validation metrics, the first step's loss terms and gradients (host values;
    later steps are not compared: Adam's first updates are ``±lr`` wherever a gradient is not
    exactly 0, so rounding-level differences in tiny gradients become ``lr``-sized)."""
    phase = dev.phase if dev is not None else (lambda name: _nothing())
    with phase("valid"):
        metrics = Evaluator(dataset, ks=(5, 10), batch_size=32).evaluate(net, "valid")
    optimizer = torch.optim.Adam(net.parameters(), lr=0.01)  # not fused: the stand-in is no fused device
    torch.manual_seed(11)  # the same dropout and noise draws on both devices
    with phase("epoch"):
        net.train()
        net.on_epoch_start(0)
    for index, batch in enumerate(batches):
        batch = tuple(t.to(device) for t in batch)  # the trainer's copies: tested below
        with phase("epoch" if index == 0 else "step"):
            terms = net.loss(batch, net())
            optimizer.zero_grad(set_to_none=True)
            sum(terms.values()).backward()
            if index == 0:
                first = {k: float(to_host(v.detach())) for k, v in terms.items()}
                grads = {n: to_host(p.grad).cpu().clone() for n, p in net.named_parameters() if p.grad is not None}
            optimizer.step()
    return metrics, first, grads


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _host_tensors(net: nn.Module) -> list[str]:
    """Tensors a module holds outside its parameters and buffers (``model.to`` leaves them on
    the host): plain attributes, and those inside lists, tuples and dicts."""
    found = []
    for path, module in net.named_modules():
        for attr, value in vars(module).items():
            if attr.startswith("_") and attr in ("_parameters", "_buffers", "_modules"):
                continue
            values = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else [value]
            for v in values:
                if isinstance(v, torch.Tensor) and not isinstance(v, StandInTensor) and v.dim() > 0:
                    found.append(f"{path or type(net).__name__}.{attr} {tuple(v.shape)}")
    return found


@pytest.mark.parametrize("name, settings", [pytest.param(*c, id=_case_id(c)) for c in CASES])
def test_training_step_and_validation_are_device_clean(small, name, settings):
    cpu_net = _model(name, small, settings)
    batches = _batches(small)
    cpu_metrics, cpu_terms, cpu_grads = _steps(cpu_net, small, batches, "cpu")

    net = _model(name, small, settings)
    with StandInDevice() as dev:
        net.to(STANDIN)
        assert net.device == STANDIN
        assert _host_tensors(net) == [], "tensors model.to(device) does not move (register them as buffers)"
        metrics, terms, grads = _steps(net, small, batches, STANDIN, dev)

    # the device computes what the CPU computes
    assert metrics == pytest.approx(cpu_metrics, abs=1e-9)
    assert terms == pytest.approx(cpu_terms, rel=1e-5, abs=1e-7)
    assert grads.keys() == cpu_grads.keys()
    # a gradient that is a cancellation residue (VBPR's content bias: +b for the positive, -b for
    # the negative) differs by the rounding of the terms it cancels, which the model's largest
    # gradient bounds; so the absolute tolerance has a model-wide part besides the tensor's own
    largest = max((float(g.abs().max()) for g in cpu_grads.values() if g.is_floating_point() and g.numel()), default=0.0)
    for n, want in cpu_grads.items():
        scale = float(want.abs().max()) if want.is_floating_point() and want.numel() else 0.0
        torch.testing.assert_close(grads[n], want, rtol=1e-4, atol=1e-5 * scale + 1e-6 * largest + 1e-9, msg=n)
    valid_copies = dev.of("valid", "to_host")
    assert len(valid_copies) <= 1, "validation copies to the host more than once:\n" + "\n".join(map(str, valid_copies))
    steady = dev.of("step", *HOST_ROUND_TRIPS)
    assert not steady, "host round trips in a steady-state training step:\n" + "\n".join(map(str, steady))


@pytest.mark.parametrize("name", ["lightgcn", "mgcn"])
def test_trainer_batch_path_on_a_gpu(small, name):
    """``train_epoch`` with ``device=cuda``: the epoch's (u, i, j) copied once, from pinned
    memory, non-blocking; nothing else copied to the device (graphs moved once, with the model);
    terms read back once per ``GUARD_EVERY_ON_GPU`` batches; the same loss as on the CPU."""
    cpu_net = _model(name, small, {})
    sampler = BPRSampler(small.train, batch_size=40, seed=1)
    optimizer = torch.optim.Adam(cpu_net.parameters(), lr=0.01)
    cpu_row = trainer.train_epoch(cpu_net, sampler, optimizer, 0, "cpu")

    net = _model(name, small, {})
    sampler = BPRSampler(small.train, batch_size=40, seed=1)
    with StandInDevice() as dev:
        net.to(STANDIN)
        optimizer = torch.optim.Adam(net.parameters(), lr=0.01)
        with dev.phase("epoch"):
            row = trainer.train_epoch(net, sampler, optimizer, 0, torch.device("cuda"))
    n_batches = len(sampler)
    copies = dev.of("epoch", "to_device")
    assert len(copies) == 1, "\n".join(map(str, copies))  # the epoch's (u, i, j), nothing else
    assert all(c.pinned and c.non_blocking for c in copies), "\n".join(map(str, copies))
    trips = dev.of("epoch", "read", "to_host")
    settles = [e for e in trips if e.where.startswith("prismrec/train/trainer.py")]
    assert trips == settles, "host round trips outside the trainer's grouped read-back:\n" + "\n".join(
        str(e) for e in trips if e not in settles)
    assert len(settles) == math.ceil(n_batches / trainer.GUARD_EVERY_ON_GPU)
    for k, v in cpu_row.items():
        if k.startswith("loss"):
            assert row[k] == pytest.approx(v, rel=1e-5), k


# --- the stand-in itself: each check it makes can fail ---------------------------------------

def test_standin_refuses_host_tensors_meeting_device_tensors():
    with StandInDevice():
        x = torch.randn(4, 3, device=STANDIN)
        assert isinstance(x, StandInTensor) and x.device == STANDIN
        assert torch.equal(to_host(x + torch.zeros(3, device=x.device)), to_host(x))
        assert to_host(x * torch.tensor(2.0)).shape == (4, 3)  # a host scalar is fine, as on a GPU
        with pytest.raises(DeviceMismatch, match=r"host tensor\(s\) of shape \(3,\)"):
            x + torch.zeros(3)
        with pytest.raises(DeviceMismatch):
            x.index_select(0, torch.tensor([0, 1]))
        with pytest.raises(DeviceMismatch, match="generator"):
            torch.rand(3, device=x.device, generator=torch.Generator().manual_seed(0))
        torch.rand(3, device=x.device, generator=torch.Generator(device=x.device).manual_seed(0))


def test_standin_records_host_round_trips_and_pinning():
    with StandInDevice() as dev:
        x = torch.randn(4, 3, device=STANDIN)
        with dev.phase("hot"):
            x.sum().item()
            float(x.max())
            x.cpu()
            x[0].tolist()
            torch.tensor([1, 2], device=x.device)
            torch.ones(2).to(x.device)
            torch.ones(2).pin_memory().to("cuda", non_blocking=True)
            torch.unique(torch.tensor([1, 1, 2], device=x.device))
            x[0].copy_(torch.ones(3))
            torch.empty(3).copy_(x[1])
            with pytest.raises(TypeError, match="numpy"):
                x.numpy()
    kinds = [e.kind for e in dev.of("hot")]
    assert kinds == ["read", "read", "to_host", "read", "to_device", "to_device", "to_device", "to_device",
                     "shape", "to_device", "to_host"]
    copies = dev.of("hot", "to_device")
    assert [(c.pinned, c.non_blocking) for c in copies[1:3]] == [(False, False), (True, True)]


def test_standin_sees_an_unmoved_graph_and_host_tensors_made_in_backward():
    class Leaky(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.randn(5, 3))
            self.graph = torch.eye(5)  # a plain attribute: model.to(device) leaves it behind

        def forward(self):
            return self.graph @ self.weight

    class HostBackward(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x * 2

        @staticmethod
        def backward(ctx, grad):
            return grad * torch.full(grad.shape, 2.0)  # made on the host

    with StandInDevice():
        leaky = Leaky().to(STANDIN)
        assert _host_tensors(leaky) == ["Leaky.graph (5, 5)"]
        with pytest.raises(DeviceMismatch):
            leaky()
        w = torch.randn(5, 3, device=STANDIN).requires_grad_()
        with pytest.raises(DeviceMismatch):
            HostBackward.apply(w).sum().backward()


def test_standin_sparse_graph_products_and_gradients_equal_the_cpu():
    import scipy.sparse as sp

    matrix = sp.random(6, 6, density=0.4, random_state=0, format="csr", dtype=np.float32)
    x = torch.randn(6, 3, generator=torch.Generator().manual_seed(0))
    op = SparseOperator(matrix)
    want = x.clone().requires_grad_()
    (op @ want).square().sum().backward()
    with StandInDevice():
        op_dev = SparseOperator(matrix).to(STANDIN)
        got = x.to(STANDIN).requires_grad_()
        out = op_dev @ got
        out.square().sum().backward()
        assert out.device == STANDIN and got.grad.device == STANDIN
        torch.testing.assert_close(to_host(got.grad), want.grad)


def test_standin_complex_views_and_spectral_gradients_equal_the_cpu():
    """Autograd's FFT formulas use lazily conjugated views: their values must survive."""
    x = torch.randn(5, 8, generator=torch.Generator().manual_seed(1))
    k = torch.randn(5, 2, generator=torch.Generator().manual_seed(2))

    def filtered(x, k):
        return torch.fft.irfft(torch.fft.rfft(x, dim=-1, norm="ortho") * torch.view_as_complex(k), n=8, dim=-1)

    want_x, want_k = x.clone().requires_grad_(), k.clone().requires_grad_()
    filtered(want_x, want_k).square().sum().backward()
    with StandInDevice():
        z = torch.tensor([1 + 2j]).to(STANDIN)
        assert to_host(z.conj() * 2).item() == 2 - 4j
        got_x, got_k = x.to(STANDIN).requires_grad_(), k.to(STANDIN).requires_grad_()
        filtered(got_x, got_k).square().sum().backward()
    torch.testing.assert_close(to_host(got_x.grad), want_x.grad)
    torch.testing.assert_close(to_host(got_k.grad), want_k.grad)


# --- on a real GPU, where there is one (never required) --------------------------------------

@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine (the stand-in tests above cover device=cuda)")
@pytest.mark.parametrize("name, settings", [pytest.param(*c, id=_case_id(c)) for c in CASES])
def test_real_gpu_training_step_and_validation(small, name, settings):
    """The model smoke test on the GPU itself: the same validation, terms and gradients as the
    CPU within float32 rounding of other kernels."""
    cpu_metrics, cpu_terms, cpu_grads = _steps(_model(name, small, settings), small, _batches(small), "cpu")
    net = _model(name, small, settings).to("cuda")
    metrics, terms, grads = _steps(net, small, _batches(small), "cuda")
    assert terms == pytest.approx(cpu_terms, rel=1e-4, abs=1e-6)
    for n, want in cpu_grads.items():
        scale = float(want.abs().max()) if want.is_floating_point() and want.numel() else 0.0
        torch.testing.assert_close(grads[n].cpu(), want, rtol=1e-3, atol=1e-4 * scale + 1e-8, msg=n)
    assert metrics["users"] == cpu_metrics["users"]
    assert metrics["recall@10"] == pytest.approx(cpu_metrics["recall@10"], abs=0.05)
