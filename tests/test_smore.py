"""SMORE: dense reference, spectral filters, fusion graph, switches, config errors, smoke run."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from prismrec.graph.union import max_union
from prismrec.nn.spectral import SpectralFilter
from tests.reference.smore_ref import smore_forward, smore_loss
from tests.builders import build_model

BATCH = (torch.tensor([0, 1, 5, 7, 7]), torch.tensor([3, 4, 5, 9, 11]), torch.tensor([6, 7, 8, 100, 150]))


def build(dataset, seed=0, **overrides):
    return build_model("smore", dataset, seed, **overrides)


def leaf(t):
    return t.detach().double().clone().requires_grad_(True)


def linear(layer):
    return (leaf(layer.weight), leaf(layer.bias) if layer.bias is not None else None)


def reference_params(net):
    image, text = net.modalities
    return {
        "user": leaf(net.user_emb.weight),
        "item": leaf(net.item_emb.weight),
        "image_emb": leaf(net.projectors[image].features),
        "text_emb": leaf(net.projectors[text].features),
        "image_trs": linear(net.projectors[image].linear),
        "text_trs": linear(net.projectors[text].linear),
        "k_v": leaf(net.filters[image].weight),
        "k_t": leaf(net.filters[text].weight),
        "k_f": leaf(net.fusion_filter.weight),
        "gate_v": linear(net.item_gates[image][0]),
        "gate_t": linear(net.item_gates[text][0]),
        "gate_f": linear(net.item_gates["fusion"][0]),
        "query_v": (linear(net.queries[image][0]), linear(net.queries[image][2])),
        "query_t": (linear(net.queries[text][0]), linear(net.queries[text][2])),
        "prefer_v": linear(net.preference_gates[image][0]),
        "prefer_t": linear(net.preference_gates[text][0]),
        "prefer_f": linear(net.preference_gates["fusion"][0]),
    }


def flat(p):
    """The reference leaves, in a fixed order."""
    out = []
    for v in p.values():
        stack = [v]
        while stack:
            x = stack.pop(0)
            if isinstance(x, tuple):
                stack = list(x) + stack
            elif x is not None:
                out.append(x)
    return out


def ours_flat(net):
    image, text = net.modalities
    lin = lambda layer: [layer.weight] + ([layer.bias] if layer.bias is not None else [])  # noqa: E731
    return (
        [net.user_emb.weight, net.item_emb.weight, net.projectors[image].features, net.projectors[text].features]
        + lin(net.projectors[image].linear) + lin(net.projectors[text].linear)
        + [net.filters[image].weight, net.filters[text].weight, net.fusion_filter.weight]
        + lin(net.item_gates[image][0]) + lin(net.item_gates[text][0]) + lin(net.item_gates["fusion"][0])
        + lin(net.queries[image][0]) + lin(net.queries[image][2]) + lin(net.queries[text][0]) + lin(net.queries[text][2])
        + lin(net.preference_gates[image][0]) + lin(net.preference_gates[text][0]) + lin(net.preference_gates["fusion"][0])
    )


@pytest.mark.parametrize("n_ui_layers,knn", [(4, (40, 15)), (2, (5, 8))])
def test_matches_dense_reference_forward_losses_and_gradients(planted, n_ui_layers, knn):
    net = build(planted, dropout=0.0, reg_weight=0.1, cl_weight=0.5, n_ui_layers=n_ui_layers,
                image_knn_k=knn[0], text_knn_k=knn[1])
    net.train()
    out = net()
    p = reference_params(net)
    r = torch.from_numpy(planted.train.toarray()).double()
    feats = [planted.features[m].double() for m in net.modalities]
    users, items, side, content = smore_forward(r, feats, p, knn[0], knn[1], n_ui_layers, 1)
    torch.testing.assert_close(out.user.double(), users, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out.item.double(), items, atol=1e-6, rtol=1e-5)

    terms = net.loss(BATCH, out)
    assert set(terms) == {"bpr", "reg", "cl"}
    ref = smore_loss(users, items, side, content, *BATCH, 0.1, 0.5)
    for name, value in zip(("bpr", "reg", "cl"), ref):
        torch.testing.assert_close(terms[name].double(), value, atol=1e-6, rtol=1e-5)

    sum(terms.values()).backward()
    sum(ref).backward()
    theirs, ours = flat(p), ours_flat(net)
    assert len(theirs) == len(ours)
    for a, b in zip(ours, theirs):
        assert b.grad is not None and b.grad.abs().sum() > 0
        torch.testing.assert_close(a.grad.double(), b.grad, atol=1e-7, rtol=1e-4)


def test_spectral_filter_is_a_circular_convolution():
    torch.manual_seed(0)
    f = SpectralFilter(8)
    f.reset_parameters()
    x = torch.randn(3, 8)
    y = f(f.spectrum(x))
    # the kernel in the signal domain: the filter's response to a unit impulse
    impulse = torch.zeros(1, 8)
    impulse[0, 0] = 1.0
    kernel = f(f.spectrum(impulse))[0] * np.sqrt(8)  # ortho scaling: 1/sqrt(d) per transform pair
    circ = torch.stack([torch.roll(kernel, s) for s in range(8)], dim=1)  # circ[j, s] = kernel[j - s]
    torch.testing.assert_close(y, x @ circ.T / np.sqrt(8), atol=1e-5, rtol=1e-5)
    # identity filter: K = 1 returns the input
    with torch.no_grad():
        f.weight.zero_()
        f.weight[:, 0] = 1.0
    torch.testing.assert_close(f(f.spectrum(x)), x, atol=1e-5, rtol=1e-5)


def test_max_union_keeps_negative_entries_and_takes_the_max():
    a = sp.csr_matrix(np.array([[0.5, -0.2, 0.0], [0.0, 0.1, 0.0], [0.0, 0.0, 0.0]]))
    b = sp.csr_matrix(np.array([[0.7, 0.0, 0.0], [0.0, -0.3, 0.4], [0.0, 0.0, 0.0]]))
    np.testing.assert_allclose(max_union([a, b]).toarray(), [[0.7, -0.2, 0], [0, 0.1, 0.4], [0, 0, 0]], rtol=1e-6)
    with pytest.raises(ValueError, match="one shape"):
        max_union([a, sp.csr_matrix((2, 2))])


def test_switches_and_dropout(planted):
    base = build(planted)
    base.eval()
    ref = base()
    again = base()
    torch.testing.assert_close(ref.item, again.item)  # eval: no dropout
    base.train()
    torch.manual_seed(1)
    a = base().user
    torch.manual_seed(2)
    b = base().user
    assert not torch.allclose(a, b)  # training forwards drop preference-gate entries
    nodrop = build(planted, dropout=0.0)
    nodrop.train()
    torch.testing.assert_close(nodrop().user, nodrop().user)
    for overrides in ({"fusion_graph": "mean"}, {"n_ii_layers": 0}, {"image_knn_k": 5}, {"modalities": ["text"]}):
        other = build(planted, **overrides)
        other.eval()
        assert not torch.allclose(other().item, ref.item), overrides
    mean = build(planted, fusion_graph="mean")
    assert mean.fusion_graph.nnz == base.fusion_graph.nnz  # same union of entries, other values
    assert not torch.equal(mean.fusion_graph.matrix.values(), base.fusion_graph.matrix.values())
    frozen = build(planted, train_features=False)
    assert not any("features" in n for n, _ in frozen.named_parameters())


def test_config_errors(planted):
    with pytest.raises(ValueError, match="dropout must be in"):
        build(planted, dropout=1.0)
    with pytest.raises(ValueError, match="fusion_graph must be"):
        build(planted, fusion_graph="min")
    with pytest.raises(ValueError, match="exceeds the number of items"):
        build(planted, image_knn_k=10_000)
