"""LGMRec (AAAI'24): dense reference, deterministic evaluation, switches, smoke run."""

import dataclasses

import numpy as np
import pytest
import torch

from prismrec.data import load_dataset
from prismrec.data.synthetic import write_planted_dataset
from prismrec.experiment.config import resolve_config
from prismrec.experiment.runs import run_experiment
from prismrec.models import get_model
from prismrec.nn.hypergraph import hypergraph_propagate
from tests.reference.lgmrec_ref import lgmrec_reference
from tests.builders import build_model, uneven_degrees


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lgmrec") / "tiny"
    data = load_dataset(
        write_planted_dataset(
            folder, n_users=40, n_items=30, per_user=6, modalities={"image": 5, "text": 7, "audio": 3}
        )
    )
    return uneven_degrees(data)



def build(dataset, seed=0, **overrides):
    return build_model("lgmrec", dataset, seed, **overrides)


def reference_params(net) -> dict:
    params = {"user_emb": net.user_emb, "item_emb": net.item_emb}
    for m, inputs in net.inputs.items():
        params.update({f"feat_{m}": inputs.features, f"w_{m}": inputs.projection, f"v_{m}": inputs.hyper})
    return {k: v.detach().clone().requires_grad_(k.split("_")[0] != "feat") for k, v in params.items()}


BATCH = (torch.tensor([0, 3, 3, 7, 12, 39]), torch.tensor([1, 1, 4, 9, 29, 0]), torch.tensor([2, 5, 6, 8, 10, 11]))
SETTINGS = [
    dict(modalities=["image", "text"], n_ui_layers=2, n_mm_layers=2, n_hyper_layer=1, hyper_num=4,
         keep_rate=0.5, alpha=0.3),
    dict(modalities=["image", "text", "audio"], n_ui_layers=2, n_mm_layers=1, n_hyper_layer=2, hyper_num=3,
         keep_rate=0.4, alpha=0.6, cf_model="mf", hcl_order=["image", "text", "audio"]),  # mf: n_ui_layers unread
    dict(modalities=["text"], n_ui_layers=3, n_mm_layers=0, n_hyper_layer=1, hyper_num=2, keep_rate=1.0, alpha=1.0),
]


def reference_cfg(settings, cl_weight, reg_weight):
    keys = ("n_ui_layers", "n_mm_layers", "n_hyper_layer", "keep_rate", "alpha")
    return {**{k: settings[k] for k in keys}, "cf_model": settings.get("cf_model", "lightgcn"),
            "cl_weight": cl_weight, "reg_weight": reg_weight, "tau": 0.2}


@pytest.mark.parametrize("settings", SETTINGS)
def test_training_forward_loss_and_gradients_match_dense_reference(tiny, settings):
    # Large weights so every term shows in the gradients.
    net = build(tiny, cl_weight=0.05, reg_weight=0.01, **settings)
    net.train()
    params = reference_params(net)
    train = torch.tensor(tiny.train.toarray(), dtype=torch.float32)

    torch.manual_seed(21)  # same Gumbel noise and dropout masks, drawn in the reference's order
    out = net()
    terms = net.loss(BATCH, out)
    torch.manual_seed(21)
    ref = lgmrec_reference(train, params, settings["modalities"], BATCH, reference_cfg(settings, 0.05, 0.01))

    close = dict(rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.user, ref["user"], **close)
    torch.testing.assert_close(out.item, ref["item"], **close)
    expected = {"bpr", "reg"} | ({"hcl"} if len(settings["modalities"]) > 1 else set())
    assert set(terms) == expected
    for name in expected:
        torch.testing.assert_close(terms[name], ref[name], **close, msg=name)
    total = sum(terms.values())
    total.backward()
    ref["total"].backward()
    ours = {"user_emb": net.user_emb, "item_emb": net.item_emb}
    for m, inputs in net.inputs.items():
        ours.update({f"w_{m}": inputs.projection, f"v_{m}": inputs.hyper})
    for name, p in ours.items():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
        torch.testing.assert_close(p.grad, params[name].grad, rtol=1e-4, atol=1e-6, msg=name)


def test_evaluation_is_deterministic_and_matches_noise_free_reference(tiny):
    settings = SETTINGS[0]
    net = build(tiny, **settings)
    net.eval()
    params = reference_params(net)
    train = torch.tensor(tiny.train.toarray(), dtype=torch.float32)
    with torch.no_grad():
        out, again = net(), net()
        cfg = reference_cfg(settings, 1e-4, 1e-6)
        ref = lgmrec_reference(train, params, settings["modalities"], BATCH, cfg, noise=False)
    torch.testing.assert_close(out.item, again.item, rtol=0, atol=0)
    torch.testing.assert_close(out.user, ref["user"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.item, ref["item"], rtol=1e-5, atol=1e-6)
    # Exported views: Z = behavior + modality, behavior = the collaborative embedding C.
    torch.testing.assert_close(out.aux["behavior"], ref["cge"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.aux["behavior"] + out.aux["modality"], torch.cat([out.user, out.item]))
    # The reference's noisy evaluation is a switch.
    noisy = build(tiny, eval_gumbel_noise=True, **settings)
    noisy.eval()
    with torch.no_grad():
        assert not torch.equal(noisy().item, noisy().item)


def test_hypergraph_propagation_by_hand():
    torch.manual_seed(0)
    h_items, h_users, x = torch.rand(5, 3), torch.rand(4, 3), torch.randn(5, 2)
    users, items = hypergraph_propagate(h_items, h_users, x, 2)
    lam1 = h_items.T @ x
    lam2 = h_items.T @ (h_items @ lam1)
    torch.testing.assert_close(items, h_items @ lam2)
    torch.testing.assert_close(users, h_users @ lam2)
    with pytest.raises(ValueError, match="n_layers >= 1"):
        hypergraph_propagate(h_items, h_users, x, 0)


def test_features_frozen_and_config_validation(tiny):
    order = ["image", "text", "audio"]  # three modalities: L_hcl's order is explicit
    net = build(tiny, hcl_order=order)
    assert net.modalities == ["image", "text", "audio"]
    assert not net.inputs["image"].features.requires_grad
    assert not any(k.endswith("features") for k in net.state_dict())
    unit = build(tiny, feature_norm="l2", hcl_order=order).inputs["audio"].features
    torch.testing.assert_close(unit, torch.nn.functional.normalize(tiny.features["audio"], dim=1))
    torch.testing.assert_close(net.inputs["audio"].features, tiny.features["audio"])  # default: raw
    for bad, message in [
        (dict(keep_rate=0.0), "keep_rate .* must be in \\(0, 1\\]"),
        (dict(n_hyper_layer=0), "n_hyper_layer must be >= 1"),
        (dict(cl_tau=0.0), "temperatures must be > 0"),
        (dict(modalities=[]), "needs at least 1 modality;"),
    ]:
        with pytest.raises(ValueError, match=message):
            build(tiny, hcl_order=order, **bad)
    grids = {f.name: f.metadata.get("grid") for f in dataclasses.fields(get_model("lgmrec").Config)}
    assert grids["hyper_num"] == [4, 64] and grids["alpha"] == [0.2, 0.3, 0.6]


def test_smoke_run_trains(tiny):
    cfg = resolve_config("lgmrec", tiny.name, {"epochs": 2, "threads": 1, "hcl_order": ["image", "text", "audio"]})
    result = run_experiment(cfg, [1], None, dataset=tiny, progress=False)
    assert result["status"] == "ok" and 0.0 <= result["test"]["recall@20"] <= 1.0


@pytest.mark.parametrize("pre_rep", ["behavior", "modality"])
def test_egra_pretrains_with_lgmrec(planted, tmp_path, pre_rep):
    """EGRA's pretrained-model swap: ``pre_model=lgmrec`` trains LGMRec as stage 1 and reads its
    exported item views (``behavior`` = C_I, ``modality`` = Z_I − C_I)."""
    cache = tmp_path / "cache"
    cfg = resolve_config("egra", planted.name, {"epochs": 1, "threads": 1, "pre_model": "lgmrec", "pre_rep": pre_rep,
                                             "pretrain_epochs": 1, "pretrain_search": "none",
                                             "pretrain_cache": str(cache)})
    result = run_experiment(cfg, [2], tmp_path / "run", dataset=planted, progress=False)
    assert result["status"] == "ok"
    (pre_dir,) = [p for p in cache.iterdir() if not p.name.startswith(".")]
    assert pre_dir.name.startswith(f"lgmrec-{planted.name}-train")
    exported = torch.from_numpy(np.load(pre_dir / "export" / f"item.{pre_rep}.npy"))
    assert exported.shape == (planted.n_items, 64) and bool(torch.isfinite(exported).all())
