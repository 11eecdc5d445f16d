"""Per-model content paths for cold items (prismrec.nn.content, each model's
content_item_embeddings): non-random cold-item recall on a planted dataset, and no cold ID row
is ever read."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from prismrec.coldstart import ColdStartConfig, cold_item_embeddings, reference_scores
from prismrec.data import load_dataset
from prismrec.data.derive import split_cold
from prismrec.data.synthetic import write_planted_dataset
from prismrec.errors import ConfigError
from prismrec.eval import Evaluator, evaluate_cold
from prismrec.experiment.config import resolve_config
from prismrec.models import get_model
from prismrec.nn.content import content_forward_rows, neighbour_mean
from prismrec.train import fit, seed_everything


# The ID table each model's content path must not read (None: the model has no item ID table).
ID_TABLES = {
    "freedom": lambda m: m.item_emb.weight,
    "rlmmrec": lambda m: m.item_emb.weight,
    "lattice": lambda m: m.item_emb,
    "dragon": lambda m: None,
    "smore": lambda m: m.item_emb.weight,
    "lgmrec": lambda m: m.item_emb,
    "mmgcn": lambda m: m.id_emb.data[m.n_users:],
    "mgcn": lambda m: m.encoder.item_emb.weight,
    "gume": lambda m: m.encoder.item_emb.weight,
    "siger": lambda m: m.encoder.item_emb.weight,
    "vbpr": lambda m: m.item_emb.weight,
}
MODELS = list(ID_TABLES)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("content")
    src = write_planted_dataset(root / "planted", n_users=300, n_items=400, per_user=20, seed=3)
    return load_dataset(split_cold(src, "planted-cold", fraction=0.2, seed=7))


@pytest.fixture(scope="module")
def trained(data):
    nets = {}
    for name in MODELS:
        cfg = resolve_config(name, "planted-cold", {"epochs": 6, "lr": 0.01, "patience": 100, "threads": 1})
        seed_everything(0)
        net = get_model(name)(data, cfg.params)
        fit(net, data, cfg.train, progress=False)
        nets[name] = net.eval()
    return nets


def test_neighbour_mean_by_hand():
    graph = sp.csr_matrix(np.array([
        [0.5, 0.2, 0.3, 0.0],
        [0.0, 1.0, 0.0, 0.0],
        [0.1, 0.4, 0.0, 0.5],
        [0.0, 0.0, 0.0, 1.0],
    ], dtype=np.float32))
    values = torch.tensor([[1.0, 0.0], [0.0, 2.0], [float("nan")] * 2, [4.0, 4.0]])
    items = torch.tensor([2, 1])
    # Item 2: neighbours 0 (0.1) and 3 (0.5); 1 is excluded (requested too). Item 1: only itself -> 0.
    got = neighbour_mean([graph], items, values)
    np.testing.assert_allclose(got.numpy(), [[(0.1 * 1 + 0.5 * 4) / 0.6, 0.5 * 4 / 0.6], [0.0, 0.0]], rtol=1e-6)
    # Two graphs: their weights add up (here the same graph twice: the same means).
    got = neighbour_mean([graph, graph], torch.tensor([0, 2]), values)
    np.testing.assert_allclose(got.numpy(), [[0.0, 2.0], [4 / 1.8, (0.8 * 2 + 4) / 1.8]], rtol=1e-6)


def cold_recall(data, net, scored, mode="cold"):
    return Evaluator(data, ks=(5,)).evaluate_cold(net, "test", scored, mode)["recall@5"]


@pytest.mark.parametrize("name", MODELS)
def test_each_models_content_path_gives_non_random_cold_recall(data, trained, name):
    random_ref = evaluate_cold(reference_scores("random", data), data.test, data.train, data.cold("test"),
                               "cold", ks=(5,))["recall@5"]
    assert random_ref == pytest.approx(5 / 40, abs=0.04)
    net = trained[name]
    with torch.no_grad():
        out = net()
    for id_rows in ("model", "zero", "impute"):
        scored, record = cold_item_embeddings(net, out, data, ColdStartConfig(strategy="auto", id_rows=id_rows))
        assert record["strategy"] == "hook"  # auto prefers the model's own path
        assert torch.equal(scored.item[data.train.indices], out.item[data.train.indices])
        assert cold_recall(data, net, scored) > 3 * random_ref, id_rows


def test_an_id_only_model_stays_at_chance_and_has_no_content_path(data):
    cfg = resolve_config("lightgcn", "planted-cold", {"epochs": 6, "lr": 0.01, "patience": 100, "threads": 1})
    seed_everything(0)
    net = get_model("lightgcn")(data, cfg.params)
    fit(net, data, cfg.train, progress=False)
    net.eval()
    out = net()
    random_ref = 5 / 40
    assert cold_recall(data, net, out) < random_ref + 0.07
    with pytest.raises(ConfigError, match="no content-only path"):
        cold_item_embeddings(net, out, data, ColdStartConfig(strategy="hook"))


@pytest.mark.parametrize("name", MODELS)
def test_the_content_path_never_reads_the_cold_items_id_rows(data, trained, name):
    net = trained[name]
    cold = torch.from_numpy(data.cold())
    with torch.no_grad():
        out = net()
    table = ID_TABLES[name](net)
    for id_rows in ("zero", "impute"):
        before = net.content_item_embeddings(cold, out, id_rows)
        if table is None:  # DRAGON: no item ID table; its rows are the forward's own
            torch.testing.assert_close(before, out.item[cold])
            continue
        saved = table.data.clone()
        table.data[cold] = float("nan")
        try:
            after = net.content_item_embeddings(cold, out, id_rows)
            assert torch.isfinite(after).all()
            torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-6)
            # the table is left as it was (NaN rows included)
            assert torch.isnan(table.data[cold]).all() and torch.equal(table.data[data.train.indices],
                                                                       saved[data.train.indices])
        finally:
            table.data.copy_(saved)
    # zero and impute differ where there are ID rows to replace
    if table is not None:
        assert not torch.allclose(net.content_item_embeddings(cold, out, "zero"),
                                  net.content_item_embeddings(cold, out, "impute"))


def test_content_forward_rows_checks_its_switch_and_restores_the_mode(data, trained):
    net = trained["rlmmrec"].train()
    cold = torch.from_numpy(data.cold()[:3])
    with pytest.raises(ConfigError, match="id_rows"):
        content_forward_rows(net, net.item_emb.weight, cold, "mean")
    rows = content_forward_rows(net, net.item_emb.weight, cold, "zero")
    assert net.training and rows.shape == (3, net.config.embedding_size)
    net.eval()
