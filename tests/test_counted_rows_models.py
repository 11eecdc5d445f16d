"""MGCN, GUME and EGRA score a batch's distinct rows once, weighted by their counts
(:class:`prismrec.losses.CountedRows`), in their in-batch InfoNCE terms (MGCN's ``cl``, GUME's
``bm`` and ``um``'s first InfoNCE, EGRA's entity-weighted ``align``): the terms and every
parameter's gradient are those of the plain row sets with their repeats, checked in float64 on a
batch with many repeated users and items, in ``loss(batch, forward())`` and in ``batch_loss``."""

from __future__ import annotations

import pytest
import torch

from prismrec import losses
from prismrec.data.derive import corrupt_modality
from prismrec.data import load_dataset
from prismrec.losses import CountedRows
from prismrec.models import egra, gume, mgcn
from prismrec.nn import propagation
from tests.builders import build_model
from prismrec.data.synthetic import write_planted_dataset

CASES = [
    ("mgcn", {}),
    ("gume", {}),
    ("gume", {"noise_mode": "modulus"}),
    ("egra", {}),
    ("egra", {"entity_weighting": "linear"}),
    ("egra", {"entity_weighting": "none", "graph_fusion": "separate"}),
    ("egra", {"backbone": "gume"}),
]


def _plain(rows: torch.Tensor) -> CountedRows:
    """The row set as it is, repeats included (no counts: the plain terms' path)."""
    return CountedRows(rows, None)


def _batch(dataset, size=96, seed=5):
    """A batch over few users and items: most rows repeat."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randint(0, min(dataset.n_users, 12), (size,), generator=g)
    i = torch.randint(0, min(dataset.n_items, 15), (size,), generator=g)
    j = torch.randint(0, dataset.n_items, (size,), generator=g)
    return u, i, j


def _terms_and_grads(net, compute):
    """The terms of ``compute()`` and each term's gradient of every parameter, the noise drawn
    from the same generator state each time."""
    state = net.generator_states()
    terms = compute()
    net.load_generator_states(state)
    params = [p for p in net.parameters() if p.requires_grad]
    grads = {}
    for name, value in terms.items():
        got = torch.autograd.grad(value, params, retain_graph=True, allow_unused=True)
        grads[name] = [torch.zeros_like(p) if g is None else g for p, g in zip(params, got)]
    return {k: v.detach() for k, v in terms.items()}, grads


def _assert_counted_rows_are_the_plain_rows(net, batch, monkeypatch):
    monkeypatch.setattr(propagation, "ROW_SHARE", 0.0)  # full products (the row blocks are float32)
    net.batch_loss(batch)  # creates any generator a model makes lazily
    for compute in (lambda: net.loss(batch, net()), lambda: net.batch_loss(batch)):
        got, got_grads = _terms_and_grads(net, compute)
        with monkeypatch.context() as patch:
            for module in (mgcn, gume, egra, losses):
                patch.setattr(module, "counted_rows", _plain)
            want, want_grads = _terms_and_grads(net, compute)
        assert got.keys() == want.keys()
        for name in want:
            torch.testing.assert_close(got[name], want[name], rtol=1e-10, atol=1e-12, msg=f"term {name}")
            for a, b in zip(got_grads[name], want_grads[name]):
                torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12, msg=f"gradient of {name}")


@pytest.mark.parametrize("name,settings", CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CASES)])
def test_counted_rows_give_the_terms_and_gradients_of_the_batch(planted, name, settings, monkeypatch):
    net = build_model(name, planted, 0, **settings).double()
    net.train()
    _assert_counted_rows_are_the_plain_rows(net, _batch(planted), monkeypatch)


@pytest.fixture(scope="module")
def bare_nodes(tmp_path_factory):
    """Planted data with 40 % of the image rows and 40 % of the text rows missing (zero-filled):
    some items, and users with only such items, have no modality at all."""
    root = tmp_path_factory.mktemp("bare")
    src = write_planted_dataset(root / "p", n_users=40, n_items=30, per_user=3, seed=2)
    image = corrupt_modality(src, root / "p-image", "image", "drop", 0.4, seed=4)
    return load_dataset(corrupt_modality(image, root / "p-both", "text", "drop", 0.4, seed=5), impute="zero")


@pytest.mark.parametrize("name", ["mgcn", "gume", "egra"])
def test_counted_rows_leave_out_the_nodes_without_a_modality(bare_nodes, name, monkeypatch):
    net = build_model(name, bare_nodes, 0).double()
    net.train()
    assert net.encoder.fused_presence() is not None and not net.encoder.fused_presence().all()
    _assert_counted_rows_are_the_plain_rows(net, _batch(bare_nodes), monkeypatch)


@pytest.mark.parametrize("mode", ["softmax", "linear", "none"])
def test_entity_weights_of_counted_rows_are_the_repeated_rows_weights(mode):
    g = torch.Generator().manual_seed(0)
    a = torch.rand(6, generator=g, dtype=torch.float64) * 2 - 1
    counts = torch.tensor([1, 3, 2, 1, 4, 2])
    want = losses.entity_weights(a.repeat_interleave(counts), mode, -1, 0.5)
    got = losses.entity_weights(a, mode, -1, 0.5, counts).repeat_interleave(counts)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
