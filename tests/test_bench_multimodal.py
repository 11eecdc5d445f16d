"""benchmarks.multimodal keeps its cells: a finished cell is recorded, a rerun skips it, and the
tables are rebuilt from the recorded cells alone; its diagnosis compares like with like (a tiny
synthetic "tiktok", nothing timed)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks import diagnose, multimodal, multimodal_diagnose
from prismrec.data import load_dataset
from prismrec.data.synthetic import write_planted_dataset
from prismrec.models import MODELS


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """One recorded cell (VBPR, seed 999, 2 epochs) of a tiny "tiktok"; yields its folders."""
    root = tmp_path_factory.mktemp("multimodal")
    write_planted_dataset(root / "data" / "tiktok", n_users=40, n_items=30, per_user=8, modalities={"image": 8, "audio": 8})
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PRISMREC_DATA", str(root / "data"))
        patch.setitem(multimodal.MODEL_SETTINGS, "vbpr", {"tiktok": {"epochs": 2}})
        patch.setattr(multimodal, "CELLS", root / "cells")
        patch.setattr(multimodal, "RUNS", root / "runs")
        trained = multimodal.run_cells(["vbpr"], ["tiktok"], [999], multimodal.RUNS, multimodal.CELLS, threads=1)
        assert trained == [("tiktok", "vbpr", 999)]
        yield root


def test_every_registered_model_is_benchmarked_and_only_content_models_get_modalities():
    assert sorted(multimodal.registered_models()) == sorted(MODELS)
    assert multimodal.settings("lightgcn", "tiktok") == {}
    assert multimodal.settings("bpr", "lfm2k") == {}
    assert multimodal.settings("bm3", "tiktok") == {"modalities": ["image", "audio"]}
    assert multimodal.settings("lgmrec", "lfm2k") == {"modalities": ["text", "audio"], "hcl_order": ["text", "audio"]}


def test_compare_gives_each_setting_once_a_grid_point_replacing_the_fixed_value(monkeypatch, tmp_path):
    """A grid point or ablation (``extra``) naming a fixed setting (FREEDOM's mm_weights on lfm2k)
    replaces it in its place: ``--set`` refuses a key given twice (the benchmarks relied on it
    keeping the later one)."""
    from prismrec.experiment.config import parse_assignments

    commands = []

    def run(cmd, check):
        commands.append(cmd)
        (tmp_path / "results.json").write_text("{}")

    monkeypatch.setattr(multimodal.subprocess, "run", run)
    multimodal.compare(["freedom"], "lfm2k", tmp_path, ["threads=1", "freedom.mm_weights=[0.1,0.9]"], 1)
    sets = [commands[0][i + 1] for i, arg in enumerate(commands[0]) if arg == "--set"]
    assert sets == ['freedom.modalities=["text","audio"]', "freedom.mm_weights=[0.1,0.9]", "threads=1"]
    assert parse_assignments(sets)["freedom.mm_weights"] == [0.1, 0.9]


def test_a_cell_is_recorded_a_rerun_skips_it_and_report_only_rebuilds_the_table(recorded, monkeypatch):
    cells = recorded / "cells"
    record = json.loads((cells / "tiktok" / "vbpr" / "seed-999.json").read_text())
    assert record["settings"] == {"modalities": ["image", "audio"], "epochs": 2}
    assert record["config"]["params"]["modalities"] == ["image", "audio"] and record["config"]["train"]["epochs"] == 2
    assert record["metrics"]["epochs"] == 2 and record["timing"]["peak_rss_mb"] > 0
    with np.load(cells / "tiktok" / "vbpr" / "seed-999.npz") as per_user:
        assert len(per_user["user"]) == len(per_user["recall@20"]) > 0
        assert np.isclose(per_user["recall@20"].mean(), record["metrics"]["test"]["recall@20"], atol=1e-6)
    assert not list(cells.rglob(".*.tmp"))  # written whole

    def no_training(*args, **kwargs):
        raise AssertionError("a recorded cell was trained again")

    monkeypatch.setattr(multimodal, "compare", no_training)
    assert multimodal.run_cells(["vbpr"], ["tiktok"], [999], recorded / "runs", cells, threads=1) == []

    monkeypatch.setattr(multimodal, "RUNS", recorded / "no-runs")  # no weights: the table comes from the cells
    data, md = multimodal.report(["lightgcn", "vbpr"], ["tiktok"], cells)
    recall = record["metrics"]["test"]["recall@20"]
    assert "| vbpr | 1 | " in md and f"{recall:.4f} ± 0.0000" in md
    assert "| lightgcn | 0 | not run" in md
    assert data["tiktok"]["cells"]["tiktok"]["vbpr"]["mean"]["test"]["recall@20"] == pytest.approx(recall)

    # A changed benchmark setting makes the cell stale: shown, marked, and trained again on a rerun.
    monkeypatch.setitem(multimodal.MODEL_SETTINGS, "vbpr", {"tiktok": {"epochs": 3}})
    _, md = multimodal.report(["vbpr"], ["tiktok"], cells)
    assert f"| vbpr {multimodal.STALE} | 1 | " in md and '"epochs": 3' in md
    with pytest.raises(AssertionError, match="trained again"):
        multimodal.run_cells(["vbpr"], ["tiktok"], [999], recorded / "runs", cells, threads=1)


def test_a_changed_default_makes_a_recorded_cell_stale_and_a_new_setting_does_not(recorded, monkeypatch):
    monkeypatch.setitem(multimodal.MODEL_SETTINGS, "vbpr", {"tiktok": {"epochs": 2}})
    record = multimodal.read_cell(recorded / "cells", "tiktok", "vbpr", 999)
    assert multimodal.is_current(record, "vbpr", "tiktok")
    params = record["config"]["params"]
    changed = {**record, "config": {**record["config"], "params": {**params, "embedding_size": params["embedding_size"] + 1}}}
    assert not multimodal.is_current(changed, "vbpr", "tiktok")  # recorded at a default that is no longer today's
    older = {**record, "config": {**record["config"], "params": {k: v for k, v in params.items() if k != "feature_norm"}}}
    assert multimodal.is_current(older, "vbpr", "tiktok")  # recorded before that setting existed


def test_a_variant_that_changes_nothing_reproduces_the_cells_validation(recorded, monkeypatch, tmp_path):
    """The diagnosis's variants train without the test split and in-process; a variant equal to
    the benchmark's settings must give the recorded cell's seed-999 validation exactly, or its
    differences would not be the variant's."""
    monkeypatch.setenv("PRISMREC_DATA", str(recorded / "data"))
    monkeypatch.setitem(multimodal.MODEL_SETTINGS, "vbpr", {"tiktok": {"epochs": 2}})
    monkeypatch.setattr(multimodal, "CELLS", recorded / "cells")
    monkeypatch.setattr(multimodal, "RUNS", tmp_path / "runs")
    monkeypatch.setattr(diagnose, "OUT", tmp_path / "diagnose")
    data = load_dataset("tiktok")
    record = multimodal_diagnose.run_variants("vbpr", "tiktok", ["epochs=2", "epochs=1"], data)
    cell = multimodal.read_cell(multimodal.CELLS, "tiktok", "vbpr", 999)
    assert record["variants"]["epochs=2"]["valid"] == cell["metrics"]["valid"]
    assert record["variants"]["epochs=1"]["epochs"] == 1
    md = (tmp_path / "diagnose" / "multimodal-tiktok-vbpr.md").read_text()
    assert "| vbpr epochs=2 | " in md and "+0.0000 |" in md and "| lightgcn defaults | not recorded |" in md


def test_legacy_cells_are_shown_marked_and_never_count_as_done(tmp_path):
    cell = {"settings": {}, "digest": "0", "legacy": True, "source": "old table",
            "metrics": {"valid": {"recall@20": 0.2}, "test": {"recall@20": 0.1, "recall@10": 0.05, "ndcg@10": 0.03,
                                                              "ndcg@20": 0.04}, "best_epoch": 3, "epochs": 23},
            "timing": {"median_train_s": 1.0, "median_eval_s": 0.1, "peak_rss_mb": 500.0}}
    path = multimodal.cell_file(tmp_path, "tiktok", "lightgcn", 999)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(cell))
    assert not multimodal.is_current(cell, "lightgcn", "tiktok")
    assert multimodal.is_current({**cell, "legacy": False}, "lightgcn", "tiktok")
    _, md = multimodal.report(["lightgcn"], ["tiktok"], tmp_path)
    assert f"| lightgcn {multimodal.LEGACY} | 1 | 0.0500 ± 0.0000 | 0.1000 ± 0.0000 |" in md


def test_degree_groups_pair_the_users_and_merge_coinciding_quartiles(tmp_path, monkeypatch):
    """Half the users have one training item: the quartile edges coincide, and the groups are
    the distinct ones, numbered from 1, each with the paired mean difference of its users."""
    from types import SimpleNamespace

    import scipy.sparse as sp

    monkeypatch.setattr(multimodal, "CELLS", tmp_path)
    degrees = np.array([1, 1, 1, 1, 2, 2, 3, 5])
    train = sp.csr_matrix((np.ones(degrees.sum()), np.concatenate([np.arange(d) for d in degrees]),
                           np.concatenate([[0], np.cumsum(degrees)])), shape=(8, 6))
    users = np.arange(8)
    for model, recall in (("bpr", np.full(8, 0.25)), ("lightgcn", np.linspace(0, 0.7, 8))):
        for seed in multimodal.SEEDS:
            json_path = multimodal.cell_file(tmp_path, "tiktok", model, seed)
            json_path.parent.mkdir(parents=True, exist_ok=True)
            json_path.write_text(json.dumps({"settings": {}}))
            np.savez(multimodal.cell_file(tmp_path, "tiktok", model, seed, "npz"), user=users,
                     **{m: recall for m in multimodal.PER_USER})
    cells = {m: multimodal.per_user_cell("tiktok", m) for m in ("bpr", "lightgcn")}
    groups = diagnose.degree_groups(cells, SimpleNamespace(train=train))
    assert [(g["group"], g["users"], g["degree"]) for g in groups] == [(1, 4, [1, 1]), (2, 2, [2, 2]), (3, 2, [3, 5])]
    assert groups[0]["difference"] == pytest.approx(0.25 - np.linspace(0, 0.7, 8)[:4].mean())


def test_the_report_tests_each_complete_model_against_lightgcn_per_user(tmp_path):
    """Seed-averaged per-user differences, Wilcoxon, Holm: checked against scipy on the averages."""
    from scipy.stats import wilcoxon

    rng = np.random.default_rng(0)
    users = np.arange(50)
    values = {m: {s: rng.random(50) for s in multimodal.SEEDS} for m in ("lightgcn", "bpr", "vbpr")}
    for model, per_seed in values.items():
        seeds = multimodal.SEEDS if model != "vbpr" else multimodal.SEEDS[:1]  # vbpr incomplete: no test
        for seed in seeds:
            path = multimodal.cell_file(tmp_path, "tiktok", model, seed)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({
                "settings": multimodal.settings(model, "tiktok"), "digest": "0", "source": "test",
                "metrics": {"valid": {"recall@20": 0.2}, "test": {m: 0.1 for m in multimodal.PER_USER},
                            "best_epoch": 3, "epochs": 23},
                "timing": {"median_train_s": 1.0, "median_eval_s": 0.1, "peak_rss_mb": 500.0}}))
            np.savez(multimodal.cell_file(tmp_path, "tiktok", model, seed, "npz"), user=users,
                     **{m: per_seed[seed] + (0.1 if m == "ndcg@20" else 0.0) for m in multimodal.PER_USER})
    tests = multimodal.versus_reference(["lightgcn", "bpr", "vbpr"], "tiktok", tmp_path)
    assert [(t["model"], t["metric"]) for t in tests] == [("bpr", "recall@20"), ("bpr", "ndcg@20")]
    diff = np.mean([values["bpr"][s] for s in multimodal.SEEDS], 0) - np.mean([values["lightgcn"][s] for s in multimodal.SEEDS], 0)
    want = wilcoxon(diff).pvalue
    for t in tests:
        assert t["diff"] == pytest.approx(diff.mean()) and t["p"] == pytest.approx(want)
        assert t["p_holm"] == pytest.approx(min(1.0, 2 * want))
    _, md = multimodal.report(["lightgcn", "bpr", "vbpr"], ["tiktok"], tmp_path)
    assert f"| bpr | recall@20 | {diff.mean():+.4f} | {want:.2g} |" in md
    assert multimodal.versus_reference(["bpr"], "tiktok", tmp_path) == []  # no reference, no tests
