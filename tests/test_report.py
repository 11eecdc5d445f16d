"""`prismrec report` pages and the paper table of `compare` (datasets side by side, best bold,
significance marks against a reference; markdown, LaTeX, CSV), on finished planted-data runs."""

import csv
import io

import pytest

from prismrec.errors import RunError
from prismrec.experiment.compare import run_compare
from prismrec.experiment.config import resolve_config
from prismrec.experiment.paper_table import render_latex, render_markdown
from prismrec.experiment.report import build_report
from prismrec.experiment.runs import run_experiment

SETTINGS = {"epochs": 3, "threads": 1}
MODELS = ["bpr", "lightgcn"]
SEEDS = [1, 2]


@pytest.fixture(scope="module")
def comparison(planted, planted_dir, tmp_path_factory):
    """A finished compare folder: cells trained in-process, then summarised by run_compare."""
    out = tmp_path_factory.mktemp("cmp")
    for model in MODELS:
        for seed in SEEDS:
            run_experiment(resolve_config(model, "planted", dict(SETTINGS)), [seed],
                           out / "planted" / model / f"seed-{seed}", dataset=planted, progress=False,
                           log=lambda m: None)
    results = run_compare(MODELS, ["planted"], SEEDS, out, dict(SETTINGS), str(planted_dir.parent),
                          log=lambda m: None, train=False, reference="lightgcn")
    return out, results


def parse_cell(text):
    """``'**0.2310**'`` -> (0.231, True, ''); ``'0.1000*'`` -> (0.1, False, '*')."""
    text = text.strip()
    bold = text.startswith("**")
    body = text[2:].split("**", 1) if bold else [text.rstrip("*"), text[len(text.rstrip("*")):]]
    return float(body[0]), bold, body[1]


def row_cells(md, model):
    line = next(line for line in md.splitlines() if line.startswith(f"| {model}"))
    return [parse_cell(c) for c in line.strip().strip("|").split("|")[1:]]


def test_paper_tables_mark_best_and_significance(comparison):
    out, results = comparison
    md = (out / "paper.md").read_text()
    assert "| model | planted R@20 | planted N@20 |" in md
    means = {m: results["cells"]["planted"][m]["mean"]["test"] for m in MODELS}
    best = max(means[m]["recall@20"] for m in MODELS)
    for model in MODELS:
        (r20, bold20, _), (n20, _, _) = row_cells(md, model)
        assert r20 == pytest.approx(means[model]["recall@20"], abs=5e-5)
        assert bold20 == (means[model]["recall@20"] == best)
    assert all(marks == "" for _, _, marks in row_cells(md, "lightgcn"))  # the reference: no mark
    table = list(csv.DictReader(io.StringIO((out / "paper.csv").read_text())))
    assert {(r["model"], r["metric"]) for r in table} == {(m, k) for m in MODELS for k in ("recall@20", "ndcg@20")}
    bpr = next(r for r in table if r["model"] == "bpr" and r["metric"] == "recall@20")
    assert bpr["reference"] == "lightgcn" and bpr["test"] == "t" and 0 <= float(bpr["p"]) <= 1
    assert [r["model"] for r in table if r["best"] == "1" and r["metric"] == "recall@20"] == [
        m for m in MODELS if results["cells"]["planted"][m]["mean"]["test"]["recall@20"] == best]
    tex = (out / "paper.tex").read_text()
    assert "\\multicolumn{2}{c}{planted}" in tex and "\\textbf{" in tex and tex.count("\\\\") == 4


def test_marks_follow_the_p_values(comparison):
    _, results = comparison
    pvalues = {"planted": {"bpr": {"recall@20": 0.001, "ndcg@20": 0.03}}}
    md = render_markdown(results, "lightgcn", pvalues=pvalues)
    assert [marks for _, _, marks in row_cells(md, "bpr")] == ["**", "*"]
    unmarked = render_markdown(results, "lightgcn", pvalues={"planted": {"bpr": {"recall@20": 0.2}}})
    assert [marks for _, _, marks in row_cells(unmarked, "bpr")] == ["", ""]
    assert "$^{**}$" in render_latex(results, "lightgcn", pvalues=pvalues)
    assert "$^{" not in render_latex(results, "lightgcn", pvalues={})


def test_report_of_a_comparison(comparison):
    out, _ = comparison
    page = build_report(out)
    text = page.read_text()
    assert "## Paper table" in text and "![mean and std per model and dataset](points.png)" in text
    for picture in ("points.png", "curves.png"):
        assert (page.parent / picture).read_bytes()[:4] == b"\x89PNG"


def test_report_of_runs(planted, tmp_path):
    single = tmp_path / "single"
    run_experiment(resolve_config("lightgcn", "planted", dict(SETTINGS)), [4], single, dataset=planted,
                   progress=False, log=lambda m: None)
    text = build_report(single).read_text()
    assert "# lightgcn on planted" in text and "| recall@20 |" in text and "(curves.png)" in text
    multi = tmp_path / "multi"
    run_experiment(resolve_config("lightgcn", "planted", dict(SETTINGS)), [4, 5], multi, dataset=planted,
                   progress=False, log=lambda m: None)
    text = build_report(multi).read_text()
    assert "seed(s) 4, 5" in text and " ± " in text
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunError):
        build_report(tmp_path / "empty")
    assert list((tmp_path / "empty").iterdir()) == []  # no report/ folder left behind
    (single / "history.csv").write_text("a,b\n1,2\n")  # was a KeyError traceback
    with pytest.raises(RunError, match=r"single/history\.csv is damaged \(no column 'epoch'\): restore it, or delete"):
        build_report(single, tmp_path / "page")
    assert not (tmp_path / "page").exists()
    (single / "history.csv").write_text("epoch,loss_bpr\n0,0.69\n")  # was an empty panel, 'best: epoch 1, nan'
    with pytest.raises(RunError, match=r"single/history\.csv is damaged \(no column 'valid_recall@20', the validation"):
        build_report(single, tmp_path / "page")
    assert not (tmp_path / "page").exists()
    (single / "history.csv").unlink()  # informative only: the report goes without curves
    assert "(curves.png)" not in build_report(single, tmp_path / "page").read_text()


def test_compare_refuses_an_unknown_correction(comparison, planted_dir):
    from prismrec.errors import ConfigError

    out, _ = comparison
    with pytest.raises(ConfigError, match="--correction 'fdr': use one of holm, bh, none"):
        run_compare(MODELS, ["planted"], SEEDS, out, dict(SETTINGS), str(planted_dir.parent), log=lambda m: None,
                    train=False, reference="lightgcn", correction="fdr")
    with pytest.raises(ConfigError, match="--test 'sign': use one of t, wilcoxon"):
        run_compare(MODELS, ["planted"], SEEDS, out, dict(SETTINGS), str(planted_dir.parent), log=lambda m: None,
                    train=False, reference="lightgcn", test="sign")
    legend = (out / "paper.md").read_text().splitlines()[-1]
    assert "Holm-adjusted over the table's 2 comparisons" in legend  # bpr against lightgcn, R@20 and N@20


def test_paper_marks_by_the_wilcoxon_test(comparison, planted_dir, tmp_path):
    """``--test wilcoxon``: the paper table's p are the signed-rank test's on the seed-averaged
    per-user metrics (recomputed here from the runs), the legend names the test."""
    import shutil

    from scipy import stats

    from prismrec.experiment.paper_table import per_user_means

    out, _ = comparison
    copy = tmp_path / "cmp"
    shutil.copytree(out, copy)
    run_compare(MODELS, ["planted"], SEEDS, copy, dict(SETTINGS), str(planted_dir.parent), log=lambda m: None,
                train=False, reference="lightgcn", correction="none", test="wilcoxon")
    rows = {(r["model"], r["metric"]): r for r in csv.DictReader(io.StringIO((copy / "paper.csv").read_text()))}
    seeds = lambda model: [copy / "planted" / model / f"seed-{s}" for s in SEEDS]  # noqa: E731
    mine, ref = (per_user_means(seeds(m), ("recall@20",), str(planted_dir.parent)) for m in ("bpr", "lightgcn"))
    a, b = mine["recall@20"][1], ref["recall@20"][1]
    expected = stats.wilcoxon(a, b, zero_method="wilcox").pvalue
    assert (a != b).any() and stats.ttest_rel(a, b).pvalue != pytest.approx(expected, rel=1e-3, abs=0)
    row = rows[("bpr", "recall@20")]
    assert row["test"] == "wilcoxon" and float(row["p"]) == pytest.approx(expected, rel=1e-3, abs=0)
    assert "Wilcoxon signed-rank test of per-user test metrics" in (copy / "paper.md").read_text()
