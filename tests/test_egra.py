"""EGRA (prismrec.models.egra; ALGORITHMS.md §6): graph, weighting, schedule, stages 0-4."""

import dataclasses
import json
import math
import shutil

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
import yaml
from typer.testing import CliRunner

from prismrec.cli import app
from prismrec.data import Dataset, load_dataset
from prismrec.data.synthetic import write_planted_dataset
from prismrec.eval import Evaluator
from prismrec.errors import ConfigError
from prismrec.experiment.config import resolve_config
from prismrec.experiment.export import export_representations
from prismrec.experiment.runs import run_experiment
from prismrec.experiment.stages import build_model
from prismrec.graph import intersection_links, knn_graph
from prismrec.losses import entity_weighted_infonce, entity_weights, moment_gap
from prismrec.models import get_model
from prismrec.experiment.pretrained import PretrainedError
from prismrec.models.egra import alignment_strength
from prismrec.nn import lightgcn
from prismrec.train import fit, seed_everything
from tests.test_train import random_recall_at_20

runner = CliRunner()


def _build(dataset, seed=0, **overrides):
    cfg = resolve_config("egra", dataset.name, {"seed": seed, **overrides})
    seed_everything(seed)
    return build_model(cfg, dataset)  # computes stage 0 (P) first


def _dense(operator):
    return operator.matrix.to_dense().numpy()


@pytest.fixture(scope="module")
def mgcn_run(planted, tmp_path_factory):
    """A finished 1-epoch MGCN run on the planted data (the pretraining model)."""
    run = tmp_path_factory.mktemp("runs") / "mgcn"
    run_experiment(resolve_config("mgcn", "planted", {"epochs": 1}), [7], run, dataset=planted, progress=False)
    return run


@pytest.fixture(scope="module")
def mgcn_export(mgcn_run, planted_dir):
    return export_representations(mgcn_run, data_dir=planted_dir.parent)


# ------------------------------------------------------------------ stage 1: enhanced adjacency
def _toy(tmp_path):
    """4 users x 6 items; positive P (so cosines are > 0 and the top-k has no ties)."""
    rng = np.random.default_rng(3)
    r = sp.csr_matrix(np.array([[1, 1, 0, 0, 0, 0], [0, 1, 1, 0, 0, 0],
                                [0, 0, 0, 1, 1, 0], [1, 0, 0, 0, 0, 0]], dtype=np.float32))
    empty = sp.csr_matrix((4, 6), dtype=np.float32)
    feats = {m: torch.from_numpy(rng.normal(size=(6, d)).astype(np.float32))
             for m, d in (("image", 3), ("text", 4))}
    toy = Dataset("toy", 4, 6, r, empty, empty, feats)
    p = rng.uniform(0.1, 1.0, size=(6, 3)).astype(np.float32)
    export = tmp_path / "export"
    export.mkdir()
    np.save(export / "item.npy", p)
    meta = {"source_model": "mgcn", "train_fingerprint": toy.fingerprint("train"), "run_dir": "toy-run"}
    (export / "representations.json").write_text(json.dumps(meta))
    return toy, p, r.toarray(), export


def _normalise(a):
    d = a.sum(axis=1)
    inv = np.where(d > 0, 1.0 / np.sqrt(np.where(d > 0, d, 1.0)), 0.0)
    return inv[:, None] * a * inv[None, :]


def _hand_links(p, k, weight, sym):
    pn = p / np.linalg.norm(p, axis=1, keepdims=True)
    cos = pn @ pn.T
    b = np.zeros_like(cos)
    for i in range(len(p)):
        order = [j for j in np.argsort(-cos[i], kind="stable") if j != i][:k]
        b[i, order] = 1.0 if weight == "binary" else cos[i, order]
    return {"none": b, "max": np.maximum(b, b.T), "mutual": np.minimum(b, b.T)}[sym]


@pytest.mark.parametrize("weight", ["binary", "cosine"])
@pytest.mark.parametrize("sym", ["none", "max", "mutual"])
@pytest.mark.parametrize("gamma", [0.5, 1.0])
def test_enhanced_adjacency_equals_the_dense_hand_built_one(tmp_path, gamma, sym, weight):
    toy, p, r, export = _toy(tmp_path)
    net = _build(toy, pretrained=str(export), k_pre=2, knn_k=2, gamma=gamma, pre_symmetrize=sym,
                 pre_edge_weight=weight)
    b = _hand_links(p, 2, weight, sym)
    np.testing.assert_allclose(net.item_links.toarray(), b, atol=1e-6)
    a = np.block([[np.zeros((4, 4)), r], [r.T, gamma * b]])
    expected = _normalise(a)
    np.testing.assert_allclose(_dense(net.encoder.adjacency), expected, atol=1e-6)
    np.testing.assert_allclose(_dense(net.encoder.user_item), expected[:4, 4:], atol=1e-6)
    assert net.pretrained_run == "toy-run" and net.pretrained_file == str(export / "item.npy")


def test_gamma_zero_and_separate_fusion_keep_the_plain_adjacency(tmp_path):
    toy, p, r, export = _toy(tmp_path)
    plain = _normalise(np.block([[np.zeros((4, 4)), r], [r.T, np.zeros((6, 6))]]))
    assert np.allclose(_dense(_build(toy, pretrained=str(export), k_pre=2, knn_k=2, gamma=0.0).encoder.adjacency), plain)
    net = _build(toy, pretrained=str(export), k_pre=2, knn_k=2, graph_fusion="separate", gamma=0.5)
    assert np.allclose(_dense(net.encoder.adjacency), plain)
    s_pre = _normalise(_hand_links(p, 2, "binary", "none"))
    np.testing.assert_allclose(_dense(net.encoder.behavior_item_graph), s_pre, atol=1e-6)
    assert net.encoder.behavior_item_weight == 0.5
    with torch.no_grad():  # C = LGN(Â) with C_I += γ·Ŝ_pre E_I
        c = net.encoder.behavior_view()
        base = lightgcn(net.encoder.adjacency, torch.cat([net.encoder.user_emb.weight, net.encoder.item_emb.weight]),
                        net.n_ui_layers)
        extra = 0.5 * torch.from_numpy(s_pre).float() @ net.encoder.item_emb.weight
    torch.testing.assert_close(c[:4], base[:4])
    torch.testing.assert_close(c[4:], base[4:] + extra, atol=1e-6, rtol=1e-5)


def test_filter_raw_keeps_only_raw_intersection_links(planted, mgcn_export):
    net = _build(planted, pretrained=str(mgcn_export), pre_filter_raw=True)
    raw = intersection_links(*(knn_graph(planted.features[m], 10) for m in ("image", "text")))
    kept = net.item_links.copy()
    kept.data[:] = 1
    assert kept.nnz > 0 and (kept - kept.multiply(raw)).nnz == 0
    full = _build(planted, pretrained=str(mgcn_export))
    assert full.n_item_links == planted.n_items * 10 and net.n_item_links < full.n_item_links


def test_raw_item_links_with_a_pretrained_run_are_refused(planted):
    """A run dir that the raw links would never read is an error, not silently ignored."""
    with pytest.raises(ConfigError, match="item_links=raw .* would never be read"):
        resolve_config("egra", planted.name, {"item_links": "raw", "pretrained": "/some/run"})


@pytest.mark.parametrize("settings, message", [
    ({"item_links": "raw", "pretrained": "/some/run"}, r"item_links=raw puts GUME's raw-feature links in place of P, "
                                                       r"so pretrained='/some/run' would never be read"),
    ({"vt_weight": 0.5}, r"vt_weight=0.5 only acts with backbone=gume, which is not set"),
    ({"k_pre": 200}, r"k_pre=200 exceeds the other items \(199\): B_pre links each item to k_pre others$"),
])
def test_settings_checks_refuse_before_any_work_on_every_path(planted, settings, message):
    """EGRA's settings checks (check_egra_config, nn/multiview_checks.py; the first two were
    EGRAConfig.__post_init__'s) refuse in resolve_config where they need no data, and in
    check_dataset (run before stage 0) and the constructor for a config built directly."""
    egra = get_model("egra")
    if "k_pre" not in settings:
        with pytest.raises(ConfigError, match=f"model 'egra' rejects its settings: {message}"):
            resolve_config("egra", planted.name, settings)
    config = egra.Config(**settings)  # built directly: its own checks are check_settings's, as SIGER's
    for refuse in (lambda: egra.check_dataset(config, planted), lambda: egra(planted, config)):
        with pytest.raises(ValueError, match=message):
            refuse()


def test_raw_item_links_are_gumes_and_need_no_pretrained_run(planted):
    net = _build(planted, item_links="raw")  # pretrained=auto: nothing is trained or read
    raw = intersection_links(*(knn_graph(planted.features[m], 10) for m in ("image", "text")))
    assert (net.item_links != raw).nnz == 0 and net.pretrained_run is None
    gume = get_model("gume")(planted, resolve_config("gume", planted.name, {}).params)
    torch.testing.assert_close(net.encoder.adjacency.matrix.to_dense(), gume.encoder.adjacency.matrix.to_dense())


# ------------------------------------------------------------------ stage 4: bi-level weighting
@pytest.mark.parametrize("mode", ["softmax", "linear"])
def test_entity_weights_have_mean_one_and_follow_the_sign(mode):
    a = torch.linspace(-0.9, 0.95, 17)[torch.randperm(17, generator=torch.Generator().manual_seed(0))]
    for sign in (-1, 1):
        w = entity_weights(a, mode, sign, 0.5)
        assert w.mean().item() == pytest.approx(1.0, abs=1e-6) and (w > 0).all()
        order = torch.argsort(w)
        expected = torch.argsort(-a if sign == -1 else a)  # s = −1: misaligned (low a) weigh most
        assert torch.equal(order, expected)
    if mode == "softmax":
        torch.testing.assert_close(entity_weights(a, mode, -1, 0.5), 17 * torch.softmax(-a / 0.5, 0))
    else:
        torch.testing.assert_close(entity_weights(a, mode, -1, 0.5), (1 - a) / (1 - a).mean())
    assert torch.equal(entity_weights(a, "none", -1, 0.5), torch.ones(17))
    assert torch.equal(entity_weights(torch.ones(4), "linear", -1, 0.5), torch.ones(4))  # all bases 0


@pytest.mark.parametrize(
    "schedule, ratio, expected",
    [
        ("linear", 0.1, {0: 0.01, 5: 0.055, 10: 0.1, 40: 0.1}),
        ("exp", 0.1, {0: 0.01, 10: 0.01 + 0.09 * (1 - math.exp(-1)), 1000: 0.1}),
        ("exp", 0.0, {0: 0.0, 10: 0.1 * (1 - math.exp(-1)), 20: 0.1 * (1 - math.exp(-2))}),
        ("unbounded", 0.1, {0: 0.01, 10: 0.02, 30: 0.04}),
        ("constant", 0.1, {0: 0.1, 7: 0.1, 500: 0.1}),
    ],
)
def test_schedule_values(schedule, ratio, expected):
    cfg = resolve_config("egra", "x", {"schedule": schedule, "lambda_max": 0.1, "lambda_min_ratio": ratio,
                                       "ramp_epochs": 10}).params
    for t, value in expected.items():
        assert alignment_strength(t, cfg) == pytest.approx(value, abs=1e-12)


def test_loss_terms_weighting_and_gradients(planted, mgcn_export):
    net = _build(planted, pretrained=str(mgcn_export), ramp_epochs=4)
    g = torch.Generator().manual_seed(0)
    sizes = (planted.n_users, planted.n_items, planted.n_items)
    batch = tuple(torch.randint(0, n, (64,), generator=g) for n in sizes)
    net.train()
    out = net()
    terms = net.loss(batch, out)
    assert set(terms) == {"bpr", "reg", "align"} and all(torch.isfinite(t) for t in terms.values())
    sum(terms.values()).backward()
    assert not [n for n, p in net.named_parameters() if p.grad is None]
    c, m = out.aux["behavior"].detach(), out.aux["modality"].detach()
    u, i = batch[0], batch[1] + planted.n_users
    from prismrec.losses import infonce_rows

    def side(rows):
        a = torch.nn.functional.cosine_similarity(m[rows], c[rows], dim=1)
        return (64 * torch.softmax(-a / 0.5, 0) * infonce_rows(m[rows], c[rows], 0.2)).mean()

    assert net.lambda_t == pytest.approx(1e-3)  # λ_min = 0.1·λ_max before the first epoch
    torch.testing.assert_close(terms["align"].detach(), 1e-3 * (side(u) + side(i)), rtol=1e-4, atol=1e-8)
    net.on_epoch_start(2)
    assert net.epoch_log()["lambda_t"] == pytest.approx(0.001 + 0.009 * 0.5)
    net.eval()
    with torch.no_grad():
        a, b = net(), net()
    assert torch.equal(a.item, b.item) and a.aux["behavior"].shape == (planted.n_users + planted.n_items, 64)


def test_gume_backbone_is_gume_on_the_enhanced_graph_with_align_for_bm(planted, mgcn_export):
    net = _build(planted, pretrained=str(mgcn_export), backbone="gume")
    assert net.extended is not None and type(net).name == "egra"
    assert net.n_ui_layers == net.encoder.n_ui_layers == net.extended.n_layers == 3  # GUME's L_ui
    assert _build(planted, pretrained=str(mgcn_export)).encoder.n_ui_layers == 2  # MGCN's
    assert _build(planted, pretrained=str(mgcn_export), backbone="gume", n_ui_layers=2).n_ui_layers == 2
    base = _build(planted, pretrained=str(mgcn_export))
    torch.testing.assert_close(net.encoder.adjacency.matrix.to_dense(), base.encoder.adjacency.matrix.to_dense())  # Â⁺ from P
    g = torch.Generator().manual_seed(0)
    batch = tuple(torch.randint(0, n, (64,), generator=g) for n in (planted.n_users, planted.n_items, planted.n_items))
    net.train()
    out = net()
    terms = net.loss(batch, out)
    assert set(terms) == {"bpr", "reg", "align", "vt", "um", "reg2"} and "extended" in out.aux
    u, i_rows = batch[0], batch[1] + planted.n_users
    torch.testing.assert_close(terms["vt"], 0.1 * moment_gap(out.aux["modality_views"]))
    cfg = net.config

    def side(rows):  # one side's mean_e w_e ℓ_e over the batch's rows (repeats counted as they come)
        return entity_weighted_infonce(out.aux["modality"][rows], out.aux["behavior"][rows], cfg.tau,
                                       cfg.entity_weighting, cfg.entity_sign, cfg.tau_w)

    torch.testing.assert_close(terms["align"], net.lambda_t * (side(u) + side(i_rows)))
    sum(terms.values()).backward()
    assert not [n for n, p in net.named_parameters() if p.grad is None]


# ------------------------------------------------------------------ stages 0-4 end to end
def test_auto_pretraining_then_egra(planted, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    cfg = resolve_config("egra", "planted", {"epochs": 4, "lr": 0.01, "pretrain_epochs": 2, "pretrain_search": "none",
                                             "pretrain_cache": str(cache), "ramp_epochs": 2})
    metrics = run_experiment(cfg, [11], tmp_path / "run", dataset=planted, progress=False)
    (pre_dir,) = [p for p in cache.iterdir() if not p.name.startswith(".")]
    assert pre_dir.name.startswith(f"mgcn-planted-train{planted.fingerprint('train')}-cfg")
    assert pre_dir.name.endswith("-seed11")
    pre = json.loads((pre_dir / "metrics.json").read_text())
    assert pre["test"] is None and pre["epochs"] == 2 and pre["seed"] == 11  # stage 1: no test
    history = pd.read_csv(tmp_path / "run" / "history.csv")
    assert list(history["lambda_t"]) == pytest.approx([alignment_strength(t, cfg.params) for t in range(4)])
    assert set(history["pretrained_run"]) == {str(pre_dir.resolve())}
    assert "loss_align" in history and metrics["test"] is not None
    assert metrics["valid"]["recall@20"] > 2.5 * random_recall_at_20(planted)

    # Training stage 1 or hitting its cache leaves this run's initialisation unchanged.
    trained = _build(planted, seed=11, pretrain_epochs=2, pretrain_search="none", pretrain_cache=str(tmp_path / "other"))
    monkeypatch.setattr("prismrec.experiment.pretrained.run_experiment", lambda *a, **k: pytest.fail("retrained"))
    net = _build(planted, seed=11, pretrain_epochs=2, pretrain_search="none", pretrain_cache=str(cache))
    from_path = _build(planted, seed=11, pretrained=str(pre_dir))
    for other in (trained, from_path):
        assert all(torch.equal(v, other.state_dict()[k]) for k, v in net.state_dict().items())
    assert (net.item_links != trained.item_links).nnz == 0
    assert net.pretrained_run == str(pre_dir.resolve()) and str(pre_dir.resolve()) in repr(net)


def test_auto_stage_one_selects_lambda_cl_on_validation_only_and_caches_it(planted, tmp_path, monkeypatch):
    from prismrec.experiment import pretrained as stage

    real, seen = stage.run_experiment, []

    def spy(cfg, seeds, out, dataset=None, evaluate_test=True, **kw):  # what each stage-1 run sees
        seen.append((cfg.params.cl_weight, dataset.test, evaluate_test))
        return real(cfg, seeds, out, dataset=dataset, evaluate_test=evaluate_test, **kw)

    monkeypatch.setattr(stage, "run_experiment", spy)
    cache = tmp_path / "cache"
    net = _build(planted, seed=5, pretrain_epochs=2, pretrain_cache=str(cache))
    assert sorted(c for c, _, _ in seen) == [0.001, 0.01, 0.1]  # MGCN's grid, one run per point
    assert all(test is None and not evaluate for _, test, evaluate in seen)  # no test split at all
    (record_path,) = cache.glob(f"select-mgcn-planted-train{planted.fingerprint('train')}-*-seed5.json")
    record = json.loads(record_path.read_text())
    trials = record["trials"]
    for trial in trials:  # the selection read each run's validation metrics; no run has a test metric
        metrics = json.loads((cache / trial["run"] / "metrics.json").read_text())
        assert metrics["test"] is None and metrics["valid"] == trial["valid"] and metrics["seed"] == 5
    best = max(range(3), key=lambda k: (trials[k]["valid"]["recall@20"], trials[k]["valid"]["ndcg@20"], -k))
    assert record["selected"] == trials[best]["settings"] and record["selected_run"] == trials[best]["run"]
    assert net.pretrained_run == str((cache / trials[best]["run"]).resolve())

    # The next EGRA run reuses the recorded selection: nothing is trained, and the record decides.
    monkeypatch.setattr(stage, "run_experiment", lambda *a, **k: pytest.fail("retrained"))
    again = _build(planted, seed=5, pretrain_epochs=2, pretrain_cache=str(cache))
    assert again.pretrained_run == net.pretrained_run and (again.item_links != net.item_links).nnz == 0
    other = (best + 1) % 3
    record_path.write_text(json.dumps({**record, "selected_run": trials[other]["run"]}))
    assert _build(planted, seed=5, pretrain_epochs=2, pretrain_cache=str(cache)).pretrained_run == \
        str((cache / trials[other]["run"]).resolve())
    # Fixing the searched setting in pretrain_settings trains that point alone (cached above).
    fixed = _build(planted, seed=5, pretrain_epochs=2, pretrain_cache=str(cache),
                   pretrain_settings={"cl_weight": trials[other]["settings"]["cl_weight"]})
    assert fixed.pretrained_run == str((cache / trials[other]["run"]).resolve())


def test_egra_declares_p_and_never_computes_it(planted, mgcn_export):
    params = resolve_config("egra", planted.name, {"pretrained": str(mgcn_export)}).params
    assert get_model("egra").required_inputs(params) == ("pretrained_items",)
    assert get_model("egra").required_inputs(dataclasses.replace(params, item_links="raw", pretrained="auto")) == ()
    with pytest.raises(ValueError, match="stage-0 input P"):
        get_model("egra")(planted, params)  # the model alone: no stage is run behind the caller's back


def test_auto_stage_one_trains_on_egras_modalities(planted, tmp_path):
    cache = tmp_path / "cache"
    net = _build(planted, seed=3, modalities=["text"], pretrain_epochs=1, pretrain_search="none", pretrain_cache=str(cache))
    assert net.modalities == ["text"]
    (pre_dir,) = [p for p in cache.iterdir() if not p.name.startswith(".")]
    stage_one = yaml.safe_load((pre_dir / "config.yaml").read_text())
    assert stage_one["params"]["modalities"] == ["text"]
    both = _build(planted, seed=3, pretrain_epochs=1, pretrain_search="none", pretrain_cache=str(cache))  # all modalities
    assert both.modalities == ["image", "text"] and len([p for p in cache.iterdir() if not p.name.startswith(".")]) == 2


def _garbage_test_copy(planted_dir, dest):
    """The planted folder with every test interaction replaced by a random unseen item."""
    name = planted_dir.name
    inter = pd.read_csv(planted_dir / f"{name}.inter", sep="\t")
    rng = np.random.default_rng(5)
    n_items = inter["itemID"].max() + 1
    for row in np.flatnonzero(inter["x_label"].to_numpy() == 2):
        seen = set(inter.loc[inter["userID"] == inter.at[row, "userID"], "itemID"])
        inter.at[row, "itemID"] = rng.choice(sorted(set(range(n_items)) - seen))
    dest.mkdir(parents=True)
    inter.to_csv(dest / f"{name}.inter", sep="\t", index=False)
    for feat in planted_dir.glob("*_feat.npy"):
        shutil.copy(feat, dest / feat.name)
    return load_dataset(dest)


def test_no_test_information_reaches_stage_1_or_stage_2_selection(planted, planted_dir, tmp_path, monkeypatch):
    garbage = _garbage_test_copy(planted_dir, tmp_path / "garbage" / "planted")
    assert (garbage.n_users, garbage.n_items) == (planted.n_users, planted.n_items)
    assert garbage.fingerprint("train") == planted.fingerprint("train")
    assert garbage.fingerprint("valid") == planted.fingerprint("valid")
    assert garbage.fingerprint("test") != planted.fingerprint("test")
    calls = []
    evaluate = Evaluator.evaluate
    monkeypatch.setattr(Evaluator, "evaluate", lambda self, model, split, *a, **k: (
        calls.append((type(model).__name__, split)), evaluate(self, model, split, *a, **k))[1])

    results = {}
    for label, data in (("original", planted), ("garbage", garbage)):
        calls.clear()
        overrides = {"epochs": 3, "pretrain_epochs": 2, "pretrain_search": "none",
                     "pretrain_cache": str(tmp_path / f"cache-{label}")}
        cfg = resolve_config("egra", "planted", overrides)
        run = tmp_path / f"run-{label}"
        metrics = run_experiment(cfg, [3], run, dataset=data, progress=False)
        # Stage 1 (MGCN) and stage-2 selection see validation only; test is read once, at the end.
        assert calls == [("MGCN", "valid")] * 2 + [("EGRA", "valid")] * 3 + [("EGRA", "test")]
        (pre,) = [p for p in (tmp_path / f"cache-{label}").iterdir() if not p.name.startswith(".")]
        net = _build(data, seed=3, **overrides)
        results[label] = dict(metrics=metrics, p=np.load(pre / "export" / "item.npy"),
                              links=net.item_links, history=pd.read_csv(run / "history.csv"),
                              pre=json.loads((pre / "metrics.json").read_text()))
    a, b = results["original"], results["garbage"]
    np.testing.assert_array_equal(a["p"], b["p"])
    assert (a["links"] != b["links"]).nnz == 0
    assert a["pre"]["valid"] == b["pre"]["valid"] and a["pre"]["test"] is b["pre"]["test"] is None
    assert a["metrics"]["best_epoch"] == b["metrics"]["best_epoch"]
    assert a["metrics"]["valid"] == b["metrics"]["valid"]
    cols = [c for c in a["history"] if c.startswith(("loss", "valid_")) or c == "lambda_t"]
    pd.testing.assert_frame_equal(a["history"][cols], b["history"][cols])
    assert a["metrics"]["test"] != b["metrics"]["test"]  # the garbage did change the test split

    # Stronger still: stage 0 and stage-2 training run with no test split at all.
    blind = dataclasses.replace(planted, test=None)
    net = _build(blind, seed=3, epochs=3, pretrain_epochs=2, pretrain_search="none", pretrain_cache=str(tmp_path / "blind"))
    result = fit(net, blind, resolve_config("egra", "planted", {"epochs": 2}).train, progress=False)
    assert result.epochs == 2


# ------------------------------------------------------------------ pretrained from a path
def test_cli_train_with_a_pretrained_run(mgcn_run, planted_dir, tmp_path):
    out = tmp_path / "egra"
    result = runner.invoke(app, ["train", "--model", "egra", "--dataset", str(planted_dir), "--quiet",
                                 "--set", f"pretrained={mgcn_run}", "--set", "epochs=2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert (mgcn_run / "export" / "item.npy").is_file()  # the run was exported on first use
    history = pd.read_csv(out / "history.csv")
    assert set(history["pretrained_run"]) == {str(mgcn_run.resolve())}
    assert list(history["lambda_t"]) == pytest.approx([1e-3, 1e-3 + 9e-3 / 50])
    assert json.loads((out / "metrics.json").read_text())["test"]["recall@20"] > 0

    bad = runner.invoke(app, ["train", "--model", "egra", "--dataset", str(planted_dir), "--quiet",
                              "--set", f"pretrained={tmp_path / 'nope'}", "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "is not a directory" in bad.output


def test_bad_pretrained_inputs_are_clear_errors(planted, mgcn_run, mgcn_export, tmp_path):
    with pytest.raises(PretrainedError, match="is not a directory"):
        _build(planted, pretrained=str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(PretrainedError, match="not a finished run directory"):
        _build(planted, pretrained=str(tmp_path / "empty"))
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(PretrainedError, match=r"pretrain_cache='.*a-file/c': .*a-file is a file"):
        _build(planted, pretrain_cache=str(tmp_path / "a-file" / "c"))  # was "File exists"

    def copy(name):
        return shutil.copytree(mgcn_export, tmp_path / name)

    rows = copy("rows")
    np.save(rows / "item.npy", np.load(rows / "item.npy")[:-1])
    with pytest.raises(PretrainedError, match=r"shape \(199, 64\).*200 items"):
        _build(planted, pretrained=str(rows))
    nan = copy("nan")
    values = np.load(nan / "item.npy")
    values[3, 1] = np.nan
    np.save(nan / "item.npy", values)
    with pytest.raises(PretrainedError, match="NaN or infinite"):
        _build(planted, pretrained=str(nan))
    tampered = copy("tampered")
    meta = json.loads((tampered / "representations.json").read_text())
    meta["train_fingerprint"] = "0123456789abcdef"
    (tampered / "representations.json").write_text(json.dumps(meta))
    with pytest.raises(PretrainedError, match="fingerprint 0123456789abcdef.*pretrain on this exact split"):
        _build(planted, pretrained=str(tampered))
    (copy("norep") / "item.behavior.npy").unlink()
    with pytest.raises(PretrainedError, match="no item.behavior.npy"):
        _build(planted, pretrained=str(tmp_path / "norep"), pre_rep="behavior")
    other = load_dataset(write_planted_dataset(tmp_path / "other" / "planted", seed=1))  # same name
    with pytest.raises(PretrainedError, match="train split with fingerprint .* but dataset 'planted'"):
        _build(other, pretrained=str(mgcn_export))
    with pytest.raises(PretrainedError, match="train split mismatch"):  # the export refuses it
        unexported = shutil.copytree(mgcn_run, tmp_path / "run", ignore=shutil.ignore_patterns("export"))
        _build(other, pretrained=str(unexported))
    with pytest.raises(ValueError, match="k_pre must be >= 1, got 0"):
        _build(planted, pretrained=str(mgcn_export), k_pre=0)
    with pytest.raises(PretrainedError, match="unknown setting"):
        _build(planted, pretrain_settings={"nope": 1}, pretrain_cache=str(tmp_path / "c"))


def test_a_torn_export_description_is_a_clear_error(planted, mgcn_export, tmp_path):
    """An export killed while writing representations.json (it was not written atomically) left a
    truncated file, on which EGRA's pretrained input stopped with a JSONDecodeError traceback."""
    torn = shutil.copytree(mgcn_export, tmp_path / "torn")
    (torn / "representations.json").write_text((torn / "representations.json").read_text()[:100])
    with pytest.raises(PretrainedError, match=r"torn/representations.json is not a readable export description"
                                              r".*prismrec export --run RUN"):
        _build(planted, pretrained=str(torn))


def test_multi_seed_pretrained_run_is_matched_by_seed(planted, tmp_path):
    run_experiment(resolve_config("mgcn", "planted", {"epochs": 1}), [3, 4], tmp_path / "multi",
                   dataset=planted, progress=False)
    assert "seed-4" in _build(planted, seed=4, pretrained=str(tmp_path / "multi")).pretrained_file
    assert "seed-3" in _build(planted, seed=8, pretrained=str(tmp_path / "multi"),
                              pretrain_per_seed=False).pretrained_file
    with pytest.raises(PretrainedError, match=r"holds seeds \['3', '4'\], not this run's seed 5"):
        _build(planted, seed=5, pretrained=str(tmp_path / "multi"))


def test_a_pretrained_model_setting_missing_says_to_use_pretrain_settings(planted, tmp_path):
    # LGMRec needs hcl_order where the names give no image/text parts: the error points EGRA's
    # users at pretrain_settings (a top-level --set hcl_order would be an EGRA setting).
    renamed = dataclasses.replace(planted, features={"audio" if m == "image" else m: f for m, f in planted.features.items()})
    with pytest.raises(PretrainedError, match=r"stage 1 \(pre_model=lgmrec\).*hcl_order.*pretrain_settings"):
        _build(renamed, pre_model="lgmrec", pretrain_search="none", pretrain_epochs=1,
               pretrain_cache=str(tmp_path / "c"))
