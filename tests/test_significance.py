"""Paired per-user comparison of two runs (prismrec.experiment.significance, `prismrec significance`)."""

import shutil
import numpy as np
import pytest
import torch
from scipy import stats
from typer.testing import CliRunner

from prismrec.cli import app
from prismrec.data import load_dataset
from prismrec.data.synthetic import write_planted_dataset
from prismrec.experiment.config import resolve_config
from prismrec.errors import RunError
from prismrec.experiment.runs import run_experiment
from prismrec.experiment.significance import paired_test
from prismrec.models import get_model
from tests.reference.metrics_ref import reference_metrics

runner = CliRunner()


@pytest.fixture(scope="module")
def runs(planted, tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    run_experiment(resolve_config("lightgcn", "planted", {"epochs": 3, "lr": 0.01}), [4], root / "lgn", dataset=planted, progress=False)
    run_experiment(resolve_config("bpr", "planted", {"epochs": 3, "lr": 0.01}), [1, 2], root / "bpr", dataset=planted, progress=False)
    return root


def reference_per_user(planted, folder, model, metric):
    """One user at a time with the brute-force metric reference (test split, training items masked)."""
    net = get_model(model)(planted, resolve_config(model, "planted", {}).params)
    net.load_state_dict(torch.load(folder / "model.pt"))
    net.eval()
    with torch.no_grad():
        out = net()
        scores = (out.user @ out.item.T).numpy()
    truth, exclude = planted.test.toarray() > 0, planted.train.toarray() > 0
    users = [u for u in range(planted.n_users) if truth[u].any()]
    k = int(metric.split("@")[1])
    return np.array([reference_metrics(scores[u : u + 1], truth[u : u + 1], exclude[u : u + 1], [k])[metric] for u in users])


@pytest.mark.parametrize("metric", ["recall@20", "ndcg@10"])
def test_matches_scipy_on_brute_force_per_user_metrics(runs, planted, planted_dir, metric):
    a = reference_per_user(planted, runs / "lgn", "lightgcn", metric)
    b = np.mean([reference_per_user(planted, runs / "bpr" / f"seed-{s}", "bpr", metric) for s in (1, 2)], axis=0)
    r = paired_test(runs / "lgn", runs / "bpr", metric, data_dir=planted_dir.parent, n_bootstrap=2000)
    assert r["users"] == len(a) and r["a"]["seeds"] == 1 and r["b"]["seeds"] == 2
    assert r["a"]["mean"] == pytest.approx(a.mean(), abs=1e-9) and r["b"]["mean"] == pytest.approx(b.mean(), abs=1e-9)
    assert r["mean_difference"] == pytest.approx((a - b).mean(), abs=1e-9)
    assert r["p_paired_t"] == pytest.approx(stats.ttest_rel(a, b).pvalue, rel=1e-6)
    assert r["p_wilcoxon"] == pytest.approx(stats.wilcoxon(a, b).pvalue, rel=1e-6)
    low, high = r["bootstrap_95"]
    sem = (a - b).std(ddof=1) / np.sqrt(len(a))
    assert low < r["mean_difference"] < high and high - low == pytest.approx(2 * 1.96 * sem, rel=0.15)

    swapped = paired_test(runs / "bpr", runs / "lgn", metric, data_dir=planted_dir.parent, n_bootstrap=2000)
    assert swapped["mean_difference"] == pytest.approx(-r["mean_difference"])
    assert swapped["p_paired_t"] == pytest.approx(r["p_paired_t"]) and swapped["p_wilcoxon"] == pytest.approx(r["p_wilcoxon"])


def test_a_run_against_its_copy_differs_nowhere_and_against_itself_is_refused(runs, planted_dir, tmp_path):
    shutil.copytree(runs / "lgn", tmp_path / "copy")
    r = paired_test(runs / "lgn", tmp_path / "copy", data_dir=planted_dir.parent, n_bootstrap=100)
    assert r["mean_difference"] == 0 and r["users_differing"] == 0 and r["p_paired_t"] == r["p_wilcoxon"] == 1.0
    with pytest.raises(RunError, match="are the same run"):  # was the test above, of the run against itself
        paired_test(runs / "lgn", f"{runs / 'lgn'}/", data_dir=planted_dir.parent, n_bootstrap=100)


def test_bad_inputs(runs, planted_dir, tmp_path):
    with pytest.raises(ValueError, match="unknown metric 'auc'"):
        paired_test(runs / "lgn", runs / "bpr", "auc", data_dir=planted_dir.parent)
    with pytest.raises(RunError, match="not a finished run directory"):
        paired_test(runs / "lgn", tmp_path, data_dir=planted_dir.parent)
    shutil.copytree(planted_dir, tmp_path / "data" / "planted")  # one data dir holding both datasets
    other = load_dataset(write_planted_dataset(tmp_path / "data" / "planted2", seed=3))
    run_experiment(resolve_config("bpr", "planted2", {"epochs": 1}), [1], tmp_path / "o", dataset=other, progress=False)
    with pytest.raises(ValueError, match="different data"):
        paired_test(runs / "lgn", tmp_path / "o", data_dir=tmp_path / "data")


def test_a_dataset_named_or_given_by_folder_is_the_same_data(runs, planted, planted_dir, tmp_path):
    # was "trained on different data (planted vs .../planted, train fingerprints differ)": the fingerprints were equal
    run_experiment(resolve_config("bpr", str(planted_dir), {"epochs": 1}), [1], tmp_path / "by-path", dataset=planted,
                   progress=False)
    r = paired_test(runs / "lgn", tmp_path / "by-path", data_dir=planted_dir.parent, n_bootstrap=100)
    assert r["users"] == planted.n_users and r["b"]["model"] == "bpr"


def test_cli(runs, planted_dir):
    result = runner.invoke(app, ["significance", "--a", str(runs / "lgn"), "--b", str(runs / "bpr"),
                                 "--data-dir", str(planted_dir.parent)])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "A lightgcn (1 seed) " in text and "B bpr (2 seeds) " in text and "Wilcoxon" in text  # was "(1 seeds)"
    bad = runner.invoke(app, ["significance", "--a", str(runs / "lgn"), "--b", str(runs / "bpr"), "--metric", "auc",
                              "--data-dir", str(planted_dir.parent)])
    assert bad.exit_code == 2 and "--metric 'auc'" in bad.output


def holm_by_definition(p, family):
    """Holm's adjusted p of each test, straight from the definition: the i-th smallest p (1-based)
    times (m - i + 1), capped at 1, made monotone by the running maximum; unmeasured tests p = 1."""
    order = sorted(range(len(p)), key=lambda i: (p[i], i))
    out, running = [0.0] * len(p), 0.0
    for rank, i in enumerate(order, start=1):
        running = max(running, min(1.0, (family - rank + 1) * p[i]))
        out[i] = running
    return out


def test_holm_adjusts_a_family_and_only_falls_as_it_fills_in():
    from prismrec.experiment.significance import holm

    rng = np.random.default_rng(3)
    p = list(rng.uniform(0, 0.02, 8)) + list(rng.uniform(0, 1, 8))
    for family in (16, 40):
        np.testing.assert_allclose(holm(p, family), holm_by_definition(p, family), rtol=1e-12)
    before = holm(p[:10], 16)
    assert np.all(holm(p, 16)[:10] <= before + 1e-15)  # the other six measured: nothing rises
    assert holm([]).size == 0 and holm([0.2, 0.2]).tolist() == [0.4, 0.4]
    with pytest.raises(ValueError, match="cannot hold"):
        holm([0.1, 0.2], 1)


def test_paper_marks_are_holm_adjusted_over_the_table():
    from prismrec.experiment.paper_table import corrected, render_csv, render_markdown

    raw = {"d": {"bpr": {"recall@20": 0.001, "ndcg@20": 0.03}, "vbpr": {"recall@20": 0.02, "ndcg@20": 0.04}}}
    holm = corrected(raw)
    assert holm == {"d": {"bpr": {"recall@20": 0.004, "ndcg@20": pytest.approx(0.06)},
                          "vbpr": {"recall@20": pytest.approx(0.06), "ndcg@20": pytest.approx(0.06)}}}
    assert corrected(raw, "none") == raw
    # Benjamini-Hochberg by its definition: sorted p_(r) · m / r, the running minimum from the largest
    bh = corrected(raw, "bh")["d"]
    assert bh == {"bpr": {"recall@20": pytest.approx(0.004), "ndcg@20": pytest.approx(0.04)},
                  "vbpr": {"recall@20": pytest.approx(0.04), "ndcg@20": pytest.approx(0.04)}}
    assert corrected({}, "bh") == {}
    with pytest.raises(ValueError, match="unknown correction"):
        corrected(raw, "fdr")
    cell = {"mean": {"test": {"recall@20": 0.3, "ndcg@20": 0.2}}, "std": {"test": {"recall@20": 0.01, "ndcg@20": 0.01}}}
    results = {"seeds": [1, 2], "cells": {"d": {m: cell for m in ("lightgcn", "bpr", "vbpr")}}}
    md = render_markdown(results, "lightgcn", pvalues=holm)
    assert "| bpr | **0.3000**** | **0.2000** |" in md and "Holm-adjusted over the table's 4 comparisons" in md
    assert "| vbpr | **0.3000** | **0.2000** |" in md  # raw .02 and .04 would have been marked
    assert "not corrected" in render_markdown(results, "lightgcn", pvalues=raw, correction="none")
    assert "Benjamini-Hochberg-adjusted (false discovery rate) over the table's 4" in render_markdown(
        results, "lightgcn", pvalues=corrected(raw, "bh"), correction="bh")
    rows = list(__import__("csv").DictReader(render_csv(results, "lightgcn", pvalues=holm, raw=raw).splitlines()))
    bpr = next(r for r in rows if r["model"] == "bpr" and r["metric"] == "ndcg@20")
    assert (bpr["test"], bpr["p"], bpr["correction"], bpr["p_adjusted"]) == ("t", "0.03", "holm", "0.06")
