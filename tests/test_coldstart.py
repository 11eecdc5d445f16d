"""Cold-item protocol (prismrec.data.derive, build --cold-items), cold evaluation modes
(prismrec.eval.cold) and inductive scoring (prismrec.coldstart)."""

import json

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from prismrec.coldstart import (
    ColdStartConfig,
    cold_item_embeddings,
    fixed_order_spread,
    knn_mean,
    reference_scores,
    ridge_map,
)
from prismrec.data import load_dataset
from prismrec.data.build import build_dataset
from prismrec.data.derive import split_cold
from prismrec.data.synthetic import write_planted_dataset
from prismrec.errors import ConfigError, DatasetError
from prismrec.eval import Evaluator, evaluate_cold
from prismrec.experiment.config import resolve_config
from prismrec.models import get_model
from prismrec.train import fit, seed_everything


@pytest.fixture(scope="module")
def cold_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cold")
    src = write_planted_dataset(root / "planted", n_users=300, n_items=400, per_user=20, seed=3)
    return split_cold(src, "planted-cold", fraction=0.2, seed=7)


def inter(folder):
    return pd.read_csv(folder / f"{folder.name}.inter", sep="\t")


def test_split_cold_moves_every_row_of_the_cold_items_out_of_train(cold_dir):
    rows = inter(cold_dir)
    record = json.loads((cold_dir / "manifest.json").read_text())["cold_items"]
    valid, test = np.array(record["valid"]), np.array(record["test"])
    assert len(valid) == 40 and len(test) == 40 and not np.intersect1d(valid, test).size
    train_items = set(rows.itemID[rows.x_label == 0])
    assert not train_items & (set(valid) | set(test))  # no cold item in train, on ids
    assert set(rows.x_label[rows.itemID.isin(valid)]) == {1}
    assert set(rows.x_label[rows.itemID.isin(test)]) == {2}
    # warm rows keep their labels; the source is untouched
    source = inter(cold_dir.parent / "planted")
    warm = ~source.itemID.isin(np.concatenate([valid, test]))
    assert (source.x_label[warm].to_numpy() == rows.x_label[warm].to_numpy()).all()
    data = load_dataset(cold_dir)
    np.testing.assert_array_equal(data.cold("test"), test)
    np.testing.assert_array_equal(data.cold(), np.sort(np.concatenate([valid, test])))
    assert not data.train[:, data.cold()].nnz
    assert (cold_dir / "image_feat.npy").is_file() and (cold_dir / "planted-cold.inter").is_file()


def test_split_cold_is_seeded_refuses_overwrite_and_a_second_cold_split(cold_dir, tmp_path):
    again = split_cold(cold_dir.parent / "planted", tmp_path / "again", fraction=0.2, seed=7)
    assert inter(again).equals(inter(cold_dir))
    other = split_cold(cold_dir.parent / "planted", tmp_path / "other", fraction=0.2, seed=8)
    assert not inter(other).equals(inter(cold_dir))
    with pytest.raises(ConfigError, match="already exists"):
        split_cold(cold_dir.parent / "planted", tmp_path / "again", fraction=0.2, seed=7)
    with pytest.raises(ConfigError, match="already a cold-item split"):
        split_cold(cold_dir, tmp_path / "twice")
    with pytest.raises(ConfigError, match=r"\(0, 0.5\]"):
        split_cold(cold_dir.parent / "planted", tmp_path / "bad", fraction=0.7)
    assert not (tmp_path / "bad").exists()


def test_a_cold_item_with_a_training_row_is_refused_at_load(cold_dir, tmp_path):
    bad = split_cold(cold_dir.parent / "planted", tmp_path / "bad", fraction=0.1, seed=1)
    manifest = json.loads((bad / "manifest.json").read_text())
    rows = inter(bad)
    warm_item = int(rows.itemID[rows.x_label == 0].iloc[0])
    manifest["cold_items"]["test"].append(warm_item)
    (bad / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DatasetError, match=rf"cold item {warm_item} .* training rows"):
        load_dataset(bad)


def test_build_cold_items(tmp_path):
    rng = np.random.default_rng(0)
    pairs = {(f"u{u}", f"i{rng.integers(60)}") for u in range(80) for _ in range(12)}
    raw = tmp_path / "raw.csv"
    pd.DataFrame(sorted(pairs), columns=["user", "item"]).to_csv(raw, index=False)
    folder = build_dataset(raw, tmp_path / "b", min_count=3, cold_items=0.1, seed=5)
    data = load_dataset(folder)
    rows = inter(folder)
    cold = data.cold()
    assert len(cold) == round(0.1 * data.n_items)
    assert not set(rows.itemID[rows.x_label == 0]) & set(cold)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["cold_items"]["fraction"] == 0.1 and manifest["cold_items"]["seed"] == 5


def brute_force(scores, truth, exclude, cold, mode, k):
    """Per user with a cold positive: sort the candidates by (score desc, id asc), count hits."""
    recalls, ndcgs = [], []
    for u in range(truth.shape[0]):
        positives = set(truth[u].indices) & set(cold)
        if not positives:
            continue
        candidates = cold if mode == "cold" else range(truth.shape[1])
        candidates = [i for i in candidates if i not in set(exclude[u].indices)]
        ranked = sorted(candidates, key=lambda i: (-scores[u, i], i))[:k]
        hits = [i in positives for i in ranked]
        recalls.append(sum(hits) / len(positives))
        dcg = sum(h / np.log2(r + 2) for r, h in enumerate(hits))
        ndcgs.append(dcg / sum(1 / np.log2(r + 2) for r in range(min(len(positives), k))))
    return np.mean(recalls), np.mean(ndcgs), len(recalls)


@pytest.mark.parametrize("mode", ["cold", "all"])
def test_cold_evaluation_matches_a_brute_force_reference(mode):
    rng = np.random.default_rng(0)
    n_users, n_items = 40, 30
    scores = np.round(rng.normal(size=(n_users, n_items)), 1).astype(np.float32)  # ties included
    truth = sp.random(n_users, n_items, density=0.15, random_state=1, format="csr")
    exclude = sp.random(n_users, n_items, density=0.2, random_state=2, format="csr")
    exclude = exclude - exclude.multiply(truth.astype(bool))  # a positive is never also masked
    truth.data[:], exclude.data[:] = 1, 1
    exclude.eliminate_zeros()
    cold = np.array([1, 4, 5, 9, 13, 20, 22, 27])
    t = torch.from_numpy(scores)
    got = evaluate_cold(lambda u: t[u].clone(), truth, exclude, cold, mode, ks=(3, 5))
    for k in (3, 5):
        recall, ndcg, users = brute_force(scores, truth, exclude, cold, mode, k)
        assert got["users"] == users > 5 and got["items"] == len(cold)
        assert got[f"recall@{k}"] == pytest.approx(recall)
        assert got[f"ndcg@{k}"] == pytest.approx(ndcg)


def test_ridge_map_and_knn_mean_against_hand_computations():
    x = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, 0.1]])
    z = x @ np.array([[2.0, 0.0, 1.0], [0.0, 3.0, 1.0]]) + 0.5
    new = np.array([[3.0, 2.0]])
    # A tiny ridge recovers the exact linear map with intercept.
    np.testing.assert_allclose(ridge_map(x, z, new, ridge=1e-9), [[6.5, 6.5, 5.5]], atol=1e-5)
    # Nearest by cosine to (0.2, 1): rows 1 (0, 1) and 2 (1, 1).
    np.testing.assert_allclose(knn_mean(x, z, np.array([[0.2, 1.0]]), k=2), [(z[1] + z[2]) / 2], rtol=1e-6)


def train(model, data, epochs):
    cfg = resolve_config(model, "planted-cold", {"epochs": epochs, "lr": 0.01, "patience": 100, "threads": 1})
    seed_everything(0)
    net = get_model(model)(data, cfg.params)
    fit(net, data, cfg.train, progress=False)
    net.eval()
    return net


def test_content_gives_multimodal_models_non_random_cold_recall_and_id_only_stays_at_reference(cold_dir):
    data = load_dataset(cold_dir)
    evaluator = Evaluator(data, ks=(5,))
    random_ref = evaluate_cold(reference_scores("random", data), data.test, data.train, data.cold("test"),
                               "cold", ks=(5,))["recall@5"]
    assert random_ref == pytest.approx(5 / 40, abs=0.04)  # 40 cold test items, 5 slots
    lightgcn = train("lightgcn", data, 10)
    native = evaluator.evaluate_cold(lightgcn, "test", lightgcn(), "cold")["recall@5"]
    assert native < random_ref + 0.07  # its cold rows are untrained ID rows: chance level
    mgcn = train("mgcn", data, 10)
    out = mgcn()
    for strategy in ("knn", "map"):
        scored, record = cold_item_embeddings(mgcn, out, data, ColdStartConfig(strategy=strategy))
        assert record["strategy"] == strategy and record["items"] == 80
        assert torch.equal(scored.item[data.train.indices], out.item[data.train.indices])  # warm rows kept
        recall = evaluator.evaluate_cold(mgcn, "test", scored, "cold")["recall@5"]
        assert recall > 2.5 * random_ref, strategy
    lightgcn_out = lightgcn()
    with pytest.raises(ConfigError, match="no content-only path"):
        cold_item_embeddings(lightgcn, lightgcn_out, data, ColdStartConfig(strategy="hook"))
    assert cold_item_embeddings(lightgcn, lightgcn_out, data)[1]["strategy"] == "knn"  # auto without a hook


def test_references_are_batch_independent_and_popularity_ties_are_not_by_id(cold_dir):
    data = load_dataset(cold_dir)
    users = torch.arange(data.n_users)
    for kind in ("random", "popularity", "order"):
        fn = reference_scores(kind, data, seed=3)
        np.testing.assert_array_equal(fn(users)[5:9].numpy(), fn(users[5:9]).numpy())
    order = reference_scores("order", data, seed=3)(users[:4])
    assert (order == order[0]).all() and not (reference_scores("order", data, seed=4)(users[:1]) == order[0]).all()
    spread = fixed_order_spread(data, "test", "cold", seeds=30, ks=(5,))
    assert spread["recall@5"]["q05"] < 5 / 40 < spread["recall@5"]["q95"]  # centred on chance, wide
    pop = reference_scores("popularity", data)(users[:1])[0].numpy()
    degree = np.asarray(data.train.sum(axis=0)).ravel()
    assert (np.diff(degree[np.argsort(-pop)]) <= 0).all()  # ranked by degree, warm before cold
    cold_order = np.argsort(-pop[data.cold()])
    assert not (np.diff(cold_order) > 0).all()  # cold items (all degree 0) are not in id order
