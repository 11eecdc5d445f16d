"""BPR-MF's, VBPR's and MGCN's loss terms as one autograd node (``losses.bpr_terms``) equal the two
loss functions' nodes up to float rounding: terms and every parameter's gradient, on both of
VBPR's batch paths, with repeated rows, an item both positive and negative, and all-zero rows;
and they are as close to the float64 values as the loss functions are."""

from __future__ import annotations


import pytest
import torch

from prismrec.data import load_dataset
from prismrec.data.synthetic import write_planted_dataset
from prismrec.experiment.config import resolve_config
from prismrec.losses import bpr_loss, l2_reg
from prismrec import losses
from prismrec.models import get_model
from prismrec.nn import propagation
from prismrec.train import seed_everything
from tests.rounding import no_worse


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bpr_terms") / "planted"
    return load_dataset(write_planted_dataset(folder, n_users=60, n_items=40, per_user=6, modalities={"image": 5}))


def _unfused(zu, zij, reg_weight, reg_form):
    """What the models computed before: the loss functions' own nodes on the split rows."""
    zi, zj = zij.chunk(2)
    return bpr_loss(zu, zi, zj), reg_weight * l2_reg(reg_form, zu, zi, zj)


def _terms_and_grads(net, batch, full: bool):
    net.zero_grad(set_to_none=True)
    terms = net.loss(batch, net()) if full else net.batch_loss(batch)
    sum(terms.values()).backward()  # as the trainer sums them
    return terms, {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}


def _batches(data, n=6, size=200):
    gen = torch.Generator().manual_seed(3)
    for k in range(n):
        u, i, j = (torch.randint(0, m, (size,), generator=gen) for m in (data.n_users, data.n_items, data.n_items))
        u[1], i[2], j[3] = u[0], i[0], i[0]  # a repeated user; an item both positive and negative
        yield u, i, j


@pytest.mark.parametrize("name,settings", [("bpr", {}), ("bpr", {"reg_weight": 0.5}), ("bpr", {"reg_form": "half_sq"}),
                                           ("vbpr", {}), ("vbpr", {"reg_weight": 1.0}), ("mgcn", {}),
                                           ("mgcn", {"reg_form": "emb_norm", "reg_weight": 0.5})])
@pytest.mark.parametrize("row_share", [1.0, 0.0], ids=["batch-rows", "full-forward"])
@pytest.mark.parametrize("full", [False, True], ids=["batch_loss", "loss"])
def test_one_node_terms_equal_the_loss_functions_to_rounding(data, monkeypatch, name, settings, row_share, full):
    monkeypatch.setattr(propagation, "ROW_SHARE", row_share)
    monkeypatch.setattr("prismrec.models.vbpr.few_rows", lambda rows, n: len(rows) <= row_share * n)
    seed_everything(0)
    net = get_model(name)(data, resolve_config(name, data.name, settings).params)
    with torch.no_grad():  # rows of trained magnitude and spread, not only the init's
        for p in net.parameters():
            p.mul_(1 + 20 * torch.rand(p.shape))
    exact_net = get_model(name)(data, resolve_config(name, data.name, settings).params)  # a copy (MGCN's CSR
    exact_net.load_state_dict(net.state_dict())                                        # graphs cannot deepcopy)
    exact_net.double()
    for batch in _batches(data):
        got, got_grads = _terms_and_grads(net, batch, full)
        assert type(got["bpr"].grad_fn).__name__ == "_BPRTermsBackward"  # the fused node is what ran
        with monkeypatch.context() as m:
            m.setattr(losses._BPRTerms, "apply", _unfused)
            want, want_grads = _terms_and_grads(net, batch, full)
            m.setattr(propagation, "ROW_SHARE", 0.0)  # float64 by full products: row blocks are built float32
            exact, exact_grads = _terms_and_grads(exact_net, batch, full)
        assert type(want["bpr"].grad_fn).__name__ != "_BPRTermsBackward"
        assert got.keys() == want.keys() and all(no_worse(got[k], want[k], exact[k]) for k in ("bpr", "reg"))
        assert got_grads.keys() == want_grads.keys() and len(want_grads) >= 2
        for n, g in want_grads.items():
            assert no_worse(got_grads[n], g, exact_grads[n]), n


def test_all_zero_rows_get_a_zero_norm_gradient(data, monkeypatch):
    seed_everything(0)
    net = get_model("bpr")(data, resolve_config("bpr", data.name, {}).params)
    with torch.no_grad():
        net.user_emb.weight[0] = 0.0
        net.item_emb.weight[:5] = 0.0
    batch = (torch.zeros(4, dtype=torch.long), torch.tensor([0, 1, 2, 3]), torch.tensor([4, 4, 1, 0]))
    got, got_grads = _terms_and_grads(net, batch, full=False)
    monkeypatch.setattr(losses._BPRTerms, "apply", _unfused)
    want, want_grads = _terms_and_grads(net, batch, full=False)
    assert torch.allclose(got["reg"], want["reg"], rtol=1e-6) and float(got["reg"].detach()) == 0.0
    for n, g in want_grads.items():  # the all-zero rows' gradients come from the BPR term alone
        assert torch.allclose(got_grads[n], g, rtol=1e-5, atol=1e-9), n


@pytest.mark.parametrize("form", ["emb_norm", "half_sq"])
@pytest.mark.parametrize("scale", [0.1, 1.0, 20.0])
def test_one_node_terms_are_as_close_to_float64_as_the_loss_functions(scale, form):
    gen = torch.Generator().manual_seed(1)
    zu, zij = scale * torch.randn(512, 16, generator=gen), scale * torch.randn(1024, 16, generator=gen)

    def run(terms, dtype):
        a, b = (x.to(dtype, copy=True).requires_grad_() for x in (zu, zij))
        values = terms(a, b)
        sum(values).backward()
        return [v.detach().double() for v in values] + [a.grad.double(), b.grad.double()]

    fused = run(lambda a, b: losses._BPRTerms.apply(a, b, 0.3, form), torch.float32)
    unfused = run(lambda a, b: _unfused(a, b, 0.3, form), torch.float32)
    exact = run(lambda a, b: _unfused(a, b, 0.3, form), torch.float64)
    assert all(no_worse(got, before, want) for got, before, want in zip(fused, unfused, exact))


def test_half_sq_value_is_the_loss_function_s_and_unknown_forms_raise():
    zu, zij = torch.randn(6, 4, requires_grad=True), torch.randn(12, 4, requires_grad=True)
    half = losses.bpr_terms(zu, zij, 0.1, "half_sq")
    assert type(half["bpr"].grad_fn).__name__ == "_BPRTermsBackward"
    zi, zj = zij.chunk(2)
    assert torch.equal(half["reg"], 0.1 * l2_reg("half_sq", zu, zi, zj))  # the same operations forward
    with pytest.raises(ValueError, match="reg_form"):
        losses.bpr_terms(zu, zij, 0.1, "l1")


@pytest.mark.parametrize("settings", [{}, {"reg_weight": 0.5}, {"reg_form": "half_sq"}])
def test_bpr_mf_closed_form_batch_equals_autograd_bit_for_bit(data, settings):
    """BPR-MF's ``batch_gradients`` (what the trainer takes on a CPU): the same terms and the same
    table gradients, bit for bit, as autograd through its ``batch_loss``, added to gradients
    already there as autograd accumulates them; and it builds no graph."""
    seed_everything(0)
    net = get_model("bpr")(data, resolve_config("bpr", data.name, settings).params)
    for k, batch in enumerate(_batches(data)):
        expected, grads = _terms_and_grads(net, batch, full=False)
        net.zero_grad(set_to_none=True)
        got = net.batch_gradients(batch)
        assert list(got) == list(expected) and not any(v.requires_grad for v in got.values())
        assert all(torch.equal(got[n], expected[n].detach()) for n in got)
        assert {n: p.grad for n, p in net.named_parameters()}.keys() == grads.keys()
        assert all(torch.equal(p.grad, grads[n]) for n, p in net.named_parameters())
        if k == 0:  # on top of earlier gradients: accumulated, as backward() accumulates
            before = {n: p.grad.clone() for n, p in net.named_parameters()}
            sum(net.batch_loss(batch).values()).backward()
            twice = {n: p.grad.clone() for n, p in net.named_parameters()}
            for n, p in net.named_parameters():
                p.grad = before[n].clone()
            net.batch_gradients(batch)
            assert all(torch.equal(p.grad, twice[n]) for n, p in net.named_parameters())
