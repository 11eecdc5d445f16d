"""Hyper-parameter search on validation (prismrec.experiment.search, `prismrec tune`)."""

import dataclasses
import json

import numpy as np
import pytest
import scipy.sparse as sp
from typer.testing import CliRunner

from prismrec.cli import app
from prismrec.eval import Evaluator
from prismrec.experiment.search import Dimension, parse_space, selected_settings, tune

runner = CliRunner()
FAST = {"epochs": 2}
SPACE = ["lr=1e-3..1e-1:log", "n_layers=1|2"]


def test_parse_space():
    dims = parse_space(["lr=1e-4..1e-2:log", "n_layers=1..4", "reg_weight=0..0.5", "reg_form=emb_norm|half_sq"], "lightgcn")
    assert dims == [
        Dimension("lr", 1e-4, 1e-2, integer=False, log=True),
        Dimension("n_layers", 1, 4, integer=True, log=False),
        Dimension("reg_weight", 0.0, 0.5, integer=False, log=False),
        Dimension("reg_form", choices=("emb_norm", "half_sq")),
    ]


def test_a_range_of_a_whole_number_setting_draws_whole_numbers():
    """Its bounds in any notation (a study drew n_layers=2.0976... from 1.0..3.0 and failed on it)."""
    assert parse_space(["n_layers=1.0..3.0", "epochs=10..1e3"], "lightgcn") == [
        Dimension("n_layers", 1, 3, integer=True), Dimension("epochs", 10, 1000, integer=True)]


def test_the_declared_grid_is_a_space():
    """``grid``: the model's declared grid (RLMultimodalRec: reg_weight and its learning rate, §4),
    each value read back as written; an entry of one's own replaces the grid's for that key."""
    dims = parse_space(["grid"], "rlmmrec")
    assert [(d.key, [d.setting(c) for c in d.choices]) for d in dims] == [
        ("reg_weight", [1e-5, 1e-4, 1e-3]), ("lr", [1e-4, 5e-4, 1e-3])]
    dims = parse_space(["grid", "lr=1e-3..1e-2:log"], "rlmmrec")
    assert [d.key for d in dims] == ["reg_weight", "lr"] and dims[1] == Dimension("lr", 1e-3, 1e-2, log=True)
    assert [d.key for d in parse_space(["grid"], "mgcn")] == ["cl_weight"]


def test_the_selected_point_is_shown_as_the_settings_it_trained_with():
    dims = parse_space(["lr=1e-3|5e-4", "reg_form=emb_norm|half_sq", "n_layers=1|2"], "lightgcn")
    assert selected_settings(dims, {"lr": "1e-3", "reg_form": "half_sq", "n_layers": "2"}) == {
        "lr": 1e-3, "reg_form": "half_sq", "n_layers": 2}


@pytest.mark.parametrize(
    "spec, message",
    [
        ([], "search space is empty"),
        (["lr"], "is not key=SPEC"),
        (["lr="], "is not key=SPEC"),
        (["learning_rate=1..2"], "unknown setting 'learning_rate' for lightgcn; valid keys: .*lr"),
        (["lr=1e-2..1e-4"], "needs LOW < HIGH"),
        (["lr=0..1e-2:log"], "log range needs LOW > 0"),
        (["lr=a..b"], "numeric bounds"),
        (["n_layers=1||2"], "empty choice"),
        (["lr=0.1|0.1"], "listed twice"),
        (["lr=1e-3..1e-2", "lr=1|2"], "appears twice"),
        # were searched, shown as 'selected', without effect: the final seeds came from --seeds, every trial
        # was scored on the study's own valid_metric
        (["seed=1..5"], "the seed is not a setting to search .* --seeds"),
        (["valid_metric=recall@20|ndcg@20"], "valid_metric is what the study maximises"),
        (["threads=1|auto"], r"--space threads=1\|auto: threads changes where or how fast a trial runs, not what it "
                             r"trains .* fix it with --set threads=..."),  # was searched, 'selected: threads=auto'
        (["n_layers=1..3.5"], r"--space n_layers=1..3.5: n_layers takes whole numbers, and 3.5 is not one"),
        # was searched over the whole numbers 0 and 1 alone
        (["reg_weight=0..1"], r"--space reg_weight=0..1: whole-number bounds draw whole numbers only, and reg_weight "
                              r"takes any number: write a bound with a decimal point \(reg_weight=0.0..1\)"),
        (["lr=1..10:log"], r"\(lr=1.0..10:log\)"),
    ],
)
def test_bad_space_is_a_clear_error(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_space(spec, "lightgcn")


@pytest.fixture(scope="module")
def searched(planted, tmp_path_factory):
    """3 trials on the planted data, and the same search with a scrambled test split."""
    calls = []
    evaluate = Evaluator.evaluate
    patch = pytest.MonkeyPatch()
    patch.setattr(Evaluator, "evaluate", lambda self, model, split, *a, **k: (calls.append(split), evaluate(self, model, split, *a, **k))[1])
    rng = np.random.default_rng(0)
    scrambled = dataclasses.replace(planted, test=sp.random(planted.n_users, planted.n_items, density=0.05, format="csr", random_state=rng))
    out = {}
    for label, data in (("real", planted), ("scrambled", scrambled)):
        calls.clear()
        folder = tmp_path_factory.mktemp(label)
        summary = tune("lightgcn", "planted", SPACE, 3, folder, FAST, dataset=data, final_seeds=[1, 2], log=lambda m: None)
        out[label] = (folder, summary, list(calls))
    patch.undo()
    return out


def test_search_selects_the_best_validation_trial_and_trains_it_with_the_final_seeds(searched):
    folder, summary, _ = searched["real"]
    assert [t["number"] for t in summary["trials"]] == [0, 1, 2]
    for t in summary["trials"]:
        recorded = json.loads((folder / f"trial-{t['number']}" / "metrics.json").read_text())
        assert recorded["valid"]["recall@20"] == t["valid"] and recorded["test"] is None
        assert set(t["params"]) == {"lr", "n_layers"} and 1e-3 <= t["params"]["lr"] <= 1e-1
    best = max(summary["trials"], key=lambda t: t["valid"])
    assert sorted(t["valid"] for t in summary["trials"])[-2] < best["valid"]  # no tie to break here
    assert summary["selected"] == {"number": best["number"], "params": best["params"], "valid": best["valid"]}
    final = json.loads((folder / "best" / "metrics.json").read_text())
    assert final["seeds"] == [1, 2] and summary["final"]["mean"]["test"] == final["mean"]["test"]
    for seed in (1, 2):
        config = (folder / "best" / f"seed-{seed}" / "config.yaml").read_text()
        assert f"n_layers: {best['params']['n_layers']}" in config
    md = (folder / "tuning.md").read_text()
    assert f"| {best['number']} **(selected)** | {best['valid']:.4f} |" in md and "| test |" in md


def test_test_split_is_read_only_by_the_final_runs(searched):
    (_, real, calls), (_, scrambled, scrambled_calls) = searched["real"], searched["scrambled"]
    # Each 2-epoch trial validates twice; test is evaluated once per final seed, after the search.
    assert calls == ["valid"] * 6 + ["valid", "valid", "test"] * 2 == scrambled_calls
    assert real["trials"] == scrambled["trials"] and real["selected"] == scrambled["selected"]
    assert real["final"]["mean"]["valid"] == scrambled["final"]["mean"]["valid"]
    assert real["final"]["mean"]["test"] != scrambled["final"]["mean"]["test"]


def test_rerun_resumes_and_a_different_search_is_refused(planted, tmp_path):
    first = tune("lightgcn", "planted", SPACE, 2, tmp_path, FAST, dataset=planted, final_seeds=[1], log=lambda m: None)
    again = tune("lightgcn", "planted", SPACE, 3, tmp_path, FAST, dataset=planted, final_seeds=[1], log=lambda m: None)
    assert again["trials"][:2] == first["trials"] and len(again["trials"]) == 3
    assert sorted(p.name for p in tmp_path.glob("trial-*")) == ["trial-0", "trial-1", "trial-2"]
    assert again["final"]["std"] is None and again["final"]["mean"]["test"] is not None
    # Nothing left to do: no trial, and the final run is reused, not retrained.
    stamp = (tmp_path / "best" / "model.pt").stat().st_mtime_ns
    assert tune("lightgcn", "planted", SPACE, 3, tmp_path, FAST, dataset=planted, final_seeds=[1], log=lambda m: None) == again
    assert (tmp_path / "best" / "model.pt").stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match="holds another search"):
        tune("lightgcn", "planted", ["lr=1e-3..1e-2"], 3, tmp_path, FAST, dataset=planted, log=lambda m: None)


def test_bad_settings_fail_before_any_training(planted, tmp_path):
    with pytest.raises(ValueError, match="lr both searched and fixed"):
        tune("lightgcn", "planted", SPACE, 2, tmp_path, {"lr": 0.01}, dataset=planted)
    with pytest.raises(ValueError, match="n_layers"):
        tune("lightgcn", "planted", ["n_layers=one|two"], 2, tmp_path, FAST, dataset=planted)
    with pytest.raises(ValueError, match="trials must be at least 1"):
        tune("lightgcn", "planted", SPACE, 0, tmp_path, FAST, dataset=planted)
    assert not list(tmp_path.glob("trial-*"))


def test_cli_tune(planted_dir, tmp_path):
    args = ["tune", "--model", "bpr", "--dataset", "planted", "--data-dir", str(planted_dir.parent),
            "--out", str(tmp_path / "t"), "--trials", "2", "--seeds", "5,", "--set", "epochs=2"]
    result = runner.invoke(app, [*args, "--space", "lr=1e-3..1e-1:log", "--space", "reg_weight=1e-5|1e-3"])
    assert result.exit_code == 0, result.output
    assert "selected:" in result.output and (tmp_path / "t" / "best" / "model.pt").is_file()
    bad = runner.invoke(app, [*args, "--space", "lr=fast"])
    assert bad.exit_code == 2 and "lr" in bad.output


def test_diverged_trials_are_recorded_and_skipped(planted, tmp_path, monkeypatch):
    import prismrec.experiment.search as search
    from prismrec.train.trainer import TrainingDiverged

    real = search.run_experiment

    def flaky(cfg, seeds, out, **kw):
        if out.name == "trial-1":
            raise TrainingDiverged("loss term(s) bpr became non-finite")
        return real(cfg, seeds, out, **kw)

    monkeypatch.setattr(search, "run_experiment", flaky)
    summary = tune("lightgcn", "planted", SPACE, 3, tmp_path, FAST, dataset=planted, final_seeds=[1], log=lambda m: None)
    assert [t["state"] for t in summary["trials"]] == ["complete", "diverged", "complete"]
    assert summary["selected"]["number"] in (0, 2) and "| 1 | diverged |" in (tmp_path / "tuning.md").read_text()


def test_interrupted_trials_are_retried_once_with_their_parameters(planted, tmp_path):
    import optuna

    first = tune("lightgcn", "planted", SPACE, 1, tmp_path, FAST, dataset=planted, final_seeds=[1], log=lambda m: None)
    study = optuna.load_study(study_name="prismrec", storage=f"sqlite:///{tmp_path / 'study.db'}")
    trial = study.ask()  # as a killed worker leaves it: trial 1 "running", never stamped again ...
    params = {"lr": trial.suggest_float("lr", 1e-3, 1e-1, log=True), "n_layers": trial.suggest_categorical("n_layers", ["1", "2"])}
    logged = []
    again = tune("lightgcn", "planted", SPACE, 2, tmp_path, FAST, dataset=planted, final_seeds=[1], log=logged.append,
                 grace_s=0)
    # ... past its grace it is marked interrupted and run again once, with the parameters it had
    assert [t["state"] for t in again["trials"]] == ["complete", "interrupted", "complete"]
    assert any("trial 1 was interrupted" in m for m in logged) and again["trials"][2]["params"] == params
    assert again["trials"][0] == first["trials"][0]
    assert json.loads((tmp_path / "trial-2" / "metrics.json").read_text())["valid"]["recall@20"] == again["trials"][2]["valid"]


def test_ties_go_to_valid_ndcg_then_the_earlier_trial(planted, tmp_path, monkeypatch):
    import prismrec.experiment.search as search

    ndcg = iter([0.1, 0.3, 0.3])  # trials 0, 1, 2 all reach valid recall@20 0.5

    def fixed(cfg, seeds, out, **kw):
        return {"valid": {"recall@20": 0.5, "ndcg@20": next(ndcg)}, "test": None}

    monkeypatch.setattr(search, "run_experiment", fixed)
    monkeypatch.setattr(search, "_finished_final", lambda *a: {"valid": {}, "test": {}})
    summary = tune("lightgcn", "planted", SPACE, 3, tmp_path, FAST, dataset=planted, final_seeds=[1], log=lambda m: None)
    assert summary["selected"]["number"] == 1


def test_no_finished_trial_is_a_clear_cli_error(planted_dir, tmp_path, monkeypatch):
    import prismrec.experiment.search as search
    from prismrec.train.trainer import TrainingDiverged

    def diverge(*a, **k):
        raise TrainingDiverged("loss term(s) bpr became non-finite")

    monkeypatch.setattr(search, "run_experiment", diverge)
    result = runner.invoke(app, ["tune", "--model", "bpr", "--dataset", "planted", "--data-dir", str(planted_dir.parent),
                                 "--out", str(tmp_path), "--trials", "2", "--space", "lr=1e-3..1e-1"])
    assert result.exit_code == 2 and "no trial" in result.output and "diverged" in result.output


def test_pruning_stops_trials_below_the_median_of_earlier_ones(planted, tmp_path, monkeypatch):
    import prismrec.experiment.search as search

    curves = iter([[0.5, 0.6, 0.6], [0.1, 0.9, 0.9], [0.7, 0.7, 0.8]])  # best-so-far is reported
    epochs_run = []

    def fake(cfg, seeds, out, on_epoch_end=None, **kw):
        curve = next(curves)
        for epoch, value in enumerate(curve):
            epochs_run.append((out.name, epoch))
            on_epoch_end({"epoch": epoch, "valid_recall@20": value})
        return {"valid": {"recall@20": max(curve), "ndcg@20": 0.0}, "test": None}

    monkeypatch.setattr(search, "run_experiment", fake)
    monkeypatch.setattr(search, "_finished_final", lambda *a: {"valid": {}, "test": {}})
    summary = tune("lightgcn", "planted", SPACE, 3, tmp_path, FAST, dataset=planted, final_seeds=[1],
                   prune=True, prune_after=(1, 0), log=lambda m: None)
    assert [t["state"] for t in summary["trials"]] == ["complete", "pruned", "complete"]
    assert ("trial-1", 1) not in epochs_run and summary["selected"]["number"] == 2
    assert "| 1 | pruned |" in (tmp_path / "tuning.md").read_text()


def test_select_only_then_continue_elsewhere_from_recorded_trials(planted, tmp_path):
    """``final_seeds=()`` selects without final runs; the trial records passed to ``on_trial``
    let a new folder (another machine) continue the same search without rerunning them."""
    records = []
    first = tune("lightgcn", "planted", SPACE, 2, tmp_path / "a", FAST, dataset=planted, final_seeds=(),
                 on_trial=records.append, log=lambda m: None)
    assert first["final"] is None and not (tmp_path / "a" / "best").exists()
    assert [r["number"] for r in records] == [0, 1] and all(r["valid_all"] for r in records)
    ran = []
    second = tune("lightgcn", "planted", SPACE, 3, tmp_path / "b", FAST, dataset=planted, final_seeds=(),
                  prior_trials=records, on_trial=ran.append, log=lambda m: None)
    assert [r["number"] for r in ran] == [2]  # only the missing trial ran
    assert second["trials"][:2] == first["trials"]
    assert not (tmp_path / "b" / "trial-0").exists()


def test_points_the_model_refuses_on_the_data_are_recorded_and_the_search_goes_on(planted, tmp_path):
    """``knn_k`` above the item count passes every check that does not read the data; such a
    trial ends ``refused`` with the model's reason (no run folder), the others are searched, and a
    later search continues from the records without retrying it."""
    space = ["knn_k=5|250"]  # planted has 200 items
    records, logged = [], []
    summary = tune("mgcn", "planted", space, 3, tmp_path / "a", FAST, dataset=planted, final_seeds=(),
                   on_trial=records.append, log=logged.append)
    states = {t["number"]: t["state"] for t in summary["trials"]}
    assert sorted(states.values()) == ["complete", "refused", "refused"], states
    for t in summary["trials"]:
        assert (t["state"] == "refused") == (t["params"]["knn_k"] == "250")
        assert (tmp_path / "a" / f"trial-{t['number']}").exists() == (t["state"] == "complete")
    refused = next(t for t in summary["trials"] if t["state"] == "refused")
    assert "knn_k=250 exceeds the number of items (200)" in refused["reason"]
    assert any(m.startswith(f"trial {refused['number']}: ") and "refused: " in m for m in logged)
    assert "| refused: model 'mgcn' rejects its settings: knn_k=250" in (tmp_path / "a" / "tuning.md").read_text()
    ran = []
    again = tune("mgcn", "planted", space, 4, tmp_path / "b", FAST, dataset=planted, final_seeds=(),
                 prior_trials=records, on_trial=ran.append, log=lambda m: None)
    assert [r["number"] for r in ran] == [3] and again["trials"][:3] == summary["trials"]


def test_a_search_the_model_refuses_entirely_is_one_error(planted, tmp_path):
    from prismrec.errors import ConfigError

    with pytest.raises(ConfigError, match=r"no trial .* finished: the model refused 2 \(trial 0: .*knn_k=2\d\d exceeds"):
        tune("mgcn", "planted", ["knn_k=201..300"], 2, tmp_path, FAST, dataset=planted, log=lambda m: None)
