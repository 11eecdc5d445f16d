import pytest
import torch

from prismrec.nn import PERTURB_MODES, BehaviorAwareFuser, IdEmbedding, NoiseSource, Projector, Purifier, perturb


def _features(n=7, dim=5, seed=0):
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------------- encoders
def test_projector_is_a_linear_map_of_the_features():
    feats = _features()
    proj = Projector(feats, dim=4, trainable_features=False)
    expected = feats @ proj.linear.weight.T + proj.linear.bias
    torch.testing.assert_close(proj(), expected)
    assert proj().shape == (7, 4) and proj.in_dim == 5 and proj.out_dim == 4


def test_projector_feature_storage():
    feats = _features()
    frozen = Projector(feats, 4, trainable_features=False)
    trainable = Projector(feats, 4, trainable_features=True)
    assert "features" not in dict(frozen.named_parameters())
    assert "features" not in frozen.state_dict()  # frozen copy is rebuilt, never saved
    assert isinstance(trainable.features, torch.nn.Parameter) and "features" in trainable.state_dict()
    trainable().sum().backward()
    assert trainable.features.grad is not None
    feats.add_(1.0)  # the layers hold copies
    assert not torch.equal(frozen.features, feats) and not torch.equal(trainable.features.data, feats)


def test_projector_rejects_bad_features():
    with pytest.raises(ValueError, match="2-D"):
        Projector(torch.randn(5), 4)
    bad = _features()
    bad[1, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        Projector(bad, 4)


def test_purifier_equals_hand_computation():
    torch.manual_seed(0)
    feats, item_emb = _features(), torch.randn(7, 4)
    pur = Purifier(feats, dim=4, trainable_features=True)
    lin, gate = pur.projector.linear, pur.gate
    x = feats @ lin.weight.T + lin.bias                     # X_m = F_m W_m + b_m
    expected = item_emb * torch.sigmoid(x @ gate.weight.T + gate.bias)
    torch.testing.assert_close(pur(item_emb), expected)
    with pytest.raises(ValueError, match="item_emb must be 7 x 4"):
        pur(torch.randn(6, 4))


# ------------------------------------------------------------------------------------ fuser
def _fuser_reference(fuser: BehaviorAwareFuser, views, behavior):
    """Node by node, modality by modality, straight from ALGORITHMS.md 2.8."""
    w1, b1 = fuser.query[0].weight, fuser.query[0].bias
    wq = fuser.query[2].weight[0]
    k, d = len(views), fuser.dim
    pw, pb = fuser.preference.weight, fuser.preference.bias
    rows = []
    for node in range(behavior.shape[0]):
        scores = torch.stack([wq @ torch.tanh(w1 @ h[node] + b1) for h in views])
        alpha = torch.exp(scores) / torch.exp(scores).sum()
        common = sum(alpha[m] * views[m][node] for m in range(k))
        total = common.clone()
        for m in range(k):
            p_m = torch.sigmoid(pw[m * d : (m + 1) * d] @ behavior[node] + pb[m * d : (m + 1) * d])
            total = total + p_m * (views[m][node] - common)
        rows.append(total / (k + 1))
    return torch.stack(rows)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_fuser_matches_per_node_reference(k):
    torch.manual_seed(k)
    n, d = 6, 5
    fuser = BehaviorAwareFuser(d, k)
    views = [torch.randn(n, d) for _ in range(k)]
    behavior = torch.randn(n, d)
    out = fuser(views, behavior)
    torch.testing.assert_close(out, _fuser_reference(fuser, views, behavior), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fuser(torch.stack(views), behavior), out)  # stacked input too


def test_fuser_two_modalities_is_mgcn_formula():
    torch.manual_seed(0)
    fuser = BehaviorAwareFuser(4, 2)
    hv, ht, c = torch.randn(3, 4), torch.randn(3, 4), torch.randn(3, 4)
    att = torch.softmax(torch.cat([fuser.query(hv), fuser.query(ht)], dim=-1), dim=-1)
    common = att[:, :1] * hv + att[:, 1:] * ht
    gates = torch.sigmoid(fuser.preference(c))
    expected = (gates[:, :4] * (hv - common) + gates[:, 4:] * (ht - common) + common) / 3
    torch.testing.assert_close(fuser([hv, ht], c), expected)


def test_fuser_rejects_wrong_shapes():
    fuser = BehaviorAwareFuser(4, 2)
    with pytest.raises(ValueError, match="expected 2 views"):
        fuser([torch.randn(3, 4)], torch.randn(3, 4))
    with pytest.raises(ValueError, match="behavior must be"):
        fuser([torch.randn(3, 4), torch.randn(3, 4)], torch.randn(2, 4))
    with pytest.raises(ValueError, match="n_modalities"):
        BehaviorAwareFuser(4, 0)


# ---------------------------------------------------------------------------------- perturb
def _rows_without_zeros(n=50, d=8, seed=0):
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(seed)) * torch.linspace(0.1, 5, n)[:, None]
    x[x == 0] = 1e-3
    return x


@pytest.mark.parametrize("mode, gamma", [("fixed", 0.0), ("modulus", 0.0), ("modulus", 1.0), ("modulus", -0.5), ("modulus", 2.0)])
def test_perturb_noise_norm_is_rho(mode, gamma):
    x, eps = _rows_without_zeros(), 0.1
    norms = x.norm(dim=1)
    rho = torch.full_like(norms, eps) if mode == "fixed" else eps * norms * (norms / norms.mean()) ** gamma
    view = perturb(x, eps, mode, generator=torch.Generator().manual_seed(1), gamma=gamma)
    delta = view - x
    torch.testing.assert_close(delta.norm(dim=1), rho, rtol=1e-4, atol=1e-6)
    assert torch.equal(torch.sign(delta), torch.sign(x))  # the noise keeps each coordinate's sign
    # Only some rows: their view, with the row mean m still taken over the whole matrix.
    rows = torch.tensor([3, 0, 3, 41])
    part = perturb(x, eps, mode, generator=torch.Generator().manual_seed(1), rows=rows, gamma=gamma) - x[rows]
    torch.testing.assert_close(part.norm(dim=1), rho[rows], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("gamma", [-1.0, -0.5, 0.0, 0.5, 1.0, 2.0])
def test_modulus_relative_intensity_follows_the_personal_law(gamma):
    """``‖view − x‖ / ‖x‖ = ε (‖x‖ / m)^γ`` per row (ALGORITHMS.md 5.2)."""
    x, eps = _rows_without_zeros(), 0.05
    norms = x.norm(dim=1)
    view = perturb(x, eps, "modulus", generator=torch.Generator().manual_seed(2), gamma=gamma)
    relative = (view - x).norm(dim=1) / norms
    torch.testing.assert_close(relative, eps * (norms / norms.mean()) ** gamma, rtol=1e-4, atol=1e-7)
    spread = relative.max() / relative.min()
    assert spread == pytest.approx(1.0, abs=1e-4) if gamma == 0 else spread > 1.5  # personal iff γ ≠ 0


def test_personal_intensity_changes_the_perturbation_infonce():
    """With the same draws, γ = 0 is exactly fixed noise on L2-normalised rows under a cosine
    InfoNCE (every row the same relative noise), while γ ≠ 0 gives another loss."""
    from prismrec.losses import infonce

    x = _rows_without_zeros()

    def views(gamma, rows=x, mode="modulus", eps=0.2):
        gen = torch.Generator().manual_seed(7)
        return [perturb(rows, eps, mode, generator=gen, gamma=gamma) for _ in range(2)]

    uniform = infonce(*views(0.0), tau=0.2)
    normalised = infonce(*views(0.0, rows=torch.nn.functional.normalize(x, dim=1), mode="fixed"), tau=0.2)
    torch.testing.assert_close(uniform, normalised, rtol=1e-5, atol=1e-6)
    for gamma in (-1.0, 1.0, 2.0):
        assert abs(infonce(*views(gamma), tau=0.2).item() - uniform.item()) > 1e-3


def test_perturb_views_differ_and_generator_reproduces():
    x = _rows_without_zeros()
    gen = torch.Generator().manual_seed(3)
    a, b = perturb(x, 0.1, generator=gen), perturb(x, 0.1, generator=gen)
    assert not torch.allclose(a, b)
    again = torch.Generator().manual_seed(3)
    torch.testing.assert_close(perturb(x, 0.1, generator=again), a, rtol=0, atol=0)
    torch.testing.assert_close(perturb(x, 0.1, generator=again), b, rtol=0, atol=0)


def test_perturb_gradient_flows_to_x_only_and_zero_rows_stay_finite():
    x = _rows_without_zeros(5, 4).requires_grad_()
    for mode, gamma in (("fixed", 0.0), ("modulus", 0.0), ("modulus", 1.0), ("modulus", -2.0)):
        (g,) = torch.autograd.grad(perturb(x, 0.1, mode, gamma=gamma).sum(), x)
        torch.testing.assert_close(g, torch.ones_like(x))  # ρ and δ are constants
    zero = torch.cat([torch.zeros(3, 4), torch.ones(1, 4)])
    for mode, gamma in (("fixed", 0.0), ("modulus", 0.0), ("modulus", 1.0), ("modulus", -2.0), ("modulus", -8.0)):
        view = perturb(zero, 0.1, mode, gamma=gamma)
        assert torch.isfinite(view).all() and torch.equal(view[:3], zero[:3])


def test_perturb_rejects_bad_arguments():
    with pytest.raises(ValueError, match="mode must be one of"):
        perturb(torch.ones(2, 2), 0.1, "gaussian")
    with pytest.raises(ValueError, match="eps"):
        perturb(torch.ones(2, 2), -0.1)


def test_feature_normalisation_modes():
    import pytest
    import torch

    from prismrec.nn.encoders import Projector, normalize_features

    x = torch.tensor([[3.0, 4.0], [0.0, 2.0], [6.0, 0.0]])
    torch.testing.assert_close(normalize_features(x, "l2"), torch.tensor([[0.6, 0.8], [0.0, 1.0], [1.0, 0.0]]))
    z = normalize_features(x, "standardize")
    torch.testing.assert_close(z.mean(0), torch.zeros(2), atol=1e-6, rtol=0)
    torch.testing.assert_close(z.std(0), torch.ones(2))
    assert normalize_features(x, "none") is x
    torch.testing.assert_close(Projector(x, 4, normalize="l2").features, normalize_features(x, "l2"))
    with pytest.raises(ValueError, match="feature normalisation"):
        normalize_features(x, "minmax")


# ------------------------------------------------------------------------ ID tables, noise, graphs
def test_id_embedding_is_drawn_by_reset_only():
    table = IdEmbedding(6, 4)
    assert torch.equal(table.weight, torch.zeros(6, 4))  # nothing drawn at construction
    torch.manual_seed(3)
    table.reset_parameters()
    torch.manual_seed(3)
    expected = torch.nn.init.xavier_uniform_(torch.empty(6, 4))
    torch.testing.assert_close(table.weight.detach(), expected, rtol=0, atol=0)
    torch.testing.assert_close(table(torch.tensor([4, 1])), table.weight[[4, 1]])
    assert set(table.state_dict()) == {"weight"}
    with pytest.raises(ValueError, match="init must be one of"):
        IdEmbedding(3, 2, init="zeros")


def test_model_reset_parameters_redraws_every_table_in_order(planted):
    from prismrec.experiment.config import resolve_config
    from prismrec.models import get_model

    params = resolve_config("lightgcn", planted.name, {}).params
    torch.manual_seed(0)
    built = get_model("lightgcn")(planted, params)
    other = get_model("lightgcn")(planted, params)
    assert not torch.equal(built.user_emb.weight, other.user_emb.weight)
    torch.manual_seed(0)
    other.reset_parameters()  # the same draws as at construction: E_U, then E_I
    for key, value in built.state_dict().items():
        assert torch.equal(value, other.state_dict()[key]), key


def test_noise_source_seeds_its_own_generator_from_the_global_rng():
    x = torch.randn(5, 3)
    torch.manual_seed(1)
    a = NoiseSource(0.1, "modulus")
    after = torch.rand(())
    torch.manual_seed(1)
    b = NoiseSource(0.1, "modulus")
    assert a.seed == b.seed and torch.equal(after, torch.rand(()))  # one draw for the seed
    torch.testing.assert_close(a(x), b(x))
    first, second = a(x), a(x)
    assert not torch.equal(first, second)  # two calls, two views
    expected = perturb(x, 0.1, "modulus", generator=torch.Generator().manual_seed(a.seed))
    torch.testing.assert_close(_fresh(a)(x), expected)
    assert isinstance(a.generator, torch.Generator)


def _fresh(source):
    copy = NoiseSource(source.eps, source.mode)
    copy.seed = source.seed
    return copy


def test_noise_generator_is_found_by_checkpoints(planted):
    from prismrec.experiment.config import resolve_config
    from prismrec.models import get_model

    net = get_model("gume")(planted, resolve_config("gume", planted.name, {}).params).train()
    batch = tuple(torch.randint(0, n, (32,)) for n in (planted.n_users, planted.n_items, planted.n_items))
    net.loss(batch, net())
    states = net.generator_states()
    assert list(states) == ["noise:generator"]
    net.load_generator_states(states)
    assert torch.equal(net.noise.generator.get_state(), states["noise:generator"])


def test_sparse_operator_is_a_module_of_non_persistent_buffers(planted):
    import scipy.sparse as sp

    from prismrec.experiment.config import resolve_config
    from prismrec.graph import SparseOperator
    from prismrec.models import get_model

    matrix = sp.random(5, 4, density=0.5, format="csr", random_state=0)
    op = SparseOperator(matrix)
    assert op.state_dict() == {} and {n for n, _ in op.named_buffers()} == {"matrix", "_transpose"}
    op.double()  # what a model's .to(...) does to every buffer
    assert op.matrix.dtype == op.transpose.dtype == torch.float64
    x = torch.randn(4, 2, dtype=torch.float64, requires_grad=True)
    (op @ x).sum().backward()
    torch.testing.assert_close(x.grad, torch.from_numpy(matrix.toarray().T @ torch.ones(5, 2).numpy()).double())
    net = get_model("mgcn")(planted, resolve_config("mgcn", planted.name, {}).params)
    graphs = [n for n, b in net.named_buffers() if b.layout == torch.sparse_csr]
    assert "encoder.adjacency.matrix" in graphs and len(graphs) >= 4
    assert not [k for k in net.state_dict() if k in graphs]  # model.pt holds no graph
