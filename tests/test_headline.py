"""The headline study's protocol on a tiny planted dataset: tuning reads no test, a rerun trains
nothing that is recorded, a changed protocol is redone, and the report pairs seed models with
baselines per user."""

from __future__ import annotations

import json

import pytest

from benchmarks import headline


@pytest.fixture
def study(tmp_path, monkeypatch, planted):
    monkeypatch.setattr(headline, "CELLS", tmp_path / "cells")
    monkeypatch.setattr(headline, "RUNS", tmp_path / "runs")
    monkeypatch.setattr(headline, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(headline, "TRIALS", 2)
    monkeypatch.setattr(headline, "TRIAL_EPOCHS", 2)
    monkeypatch.setattr(headline, "SEEDS", [1, 2])
    monkeypatch.setattr(headline, "MODALITIES", {planted.name: "[image,text]"})
    short = {planted.name: {"epochs": 3}}
    monkeypatch.setattr(headline, "FIXED", {"lightgcn": short, "rlmmrec": short})
    (tmp_path / "results").mkdir()
    return planted


def test_cells_are_tuned_blind_recorded_and_skipped_on_rerun(study, monkeypatch):
    for model in ("lightgcn", "rlmmrec"):
        headline.run_cell(model, study.name, {"tune", "final"}, study)
    tuning = json.loads((headline.CELLS / study.name / "lightgcn" / "tuning.json").read_text())
    assert len(tuning["trials"]) == 2 and tuning["trials"][0]["point"] == {}
    assert tuning["spec"]["trial_train"]["epochs"] == 2 and tuning["selected"]["trial"] in (0, 1)
    for n in range(2):  # the trials never evaluated test
        metrics = json.loads((headline.RUNS / study.name / "lightgcn" / f"trial-{n}" / "metrics.json").read_text())
        assert metrics.get("test") is None
    seed = json.loads((headline.CELLS / study.name / "lightgcn" / "seed-2.json").read_text())
    assert seed["config"]["train"]["seed"] == 2 and seed["metrics"]["test"]["recall@20"] >= 0

    def refuse(*args, **kwargs):
        raise AssertionError("a recorded cell was trained again")

    monkeypatch.setattr("prismrec.experiment.runs.run_experiment", refuse)
    headline.run_cell("lightgcn", study.name, {"tune", "final"}, study)
    headline.run_cell("lightgcn", study.name, {"tune", "final"}, study, device="cuda")  # where, not what

    data = headline.report(["lightgcn", "rlmmrec"], [study.name])
    assert data["summaries"][study.name]["lightgcn"]["n"] == 2
    tuned = {row["model"]: row for row in __import__("csv").DictReader((headline.RESULTS / "headline_tuned.csv").open())}
    assert json.loads(tuned["lightgcn"]["selected"]) == tuning["selected"]["point"] and tuned["lightgcn"]["trials"] == "2"
    assert float(tuned["lightgcn"]["valid_recall@20"]) == pytest.approx(tuning["selected"]["valid"]["recall@20"])
    tests = [t for t in data["comparisons"] if t["baseline"] == "lightgcn" and t["model"] == "rlmmrec"]
    assert {t["metric"] for t in tests} == set(headline.TESTED)
    assert all(0 <= t["p"] <= 1 and t["p_holm"] >= t["p"] for t in tests)
    assert data["planned"]["comparisons"] == len(headline.TESTED)  # one seed model, one baseline, one dataset
    versus = data["versus_lightgcn"]
    assert [(t["model"], t["metric"]) for t in versus] == [("rlmmrec", m) for m in headline.TESTED]
    assert [t["p"] for t in versus] == [t["p"] for t in tests]  # the same pair, another family
    md = (headline.RESULTS / "headline.md").read_text()
    assert "| lightgcn | 2 |" in md
    glance = md.split("## The claims at a glance")[1].split("\n## ")[0]
    assert f"| rlmmrec | {headline.CLAIMS['rlmmrec'][0]['claim']} | " in glance  # one row per claim
    assert glance.count("\n| egra |") == len(headline.CLAIMS["egra"])
    assert [headline._glance(t) for t in ("**holds** (x)", "**does not hold**: y", "pending (z)", "not tested by this study; see w")] \
        == ["**holds**", "**does not hold**", "pending", "elsewhere"]
    assert [headline.fmt_p(p) for p in (0.0123, 3e-9, 0.0)] == ["0.012", "3e-09", "< 1e-300"]  # 0: an underflow


def test_a_changed_protocol_is_tuned_again(study, monkeypatch):
    headline.run_cell("lightgcn", study.name, {"tune"}, study)
    monkeypatch.setattr(headline, "TRIAL_EPOCHS", 3)
    trained = []
    real = headline.tune_cell

    def counting(model, dataset, data):
        record = real(model, dataset, data)
        trained.append(record["spec"]["trial_train"]["epochs"])
        return record

    monkeypatch.setattr(headline, "tune_cell", counting)
    headline.run_cell("lightgcn", study.name, {"tune"}, study)
    tuning = json.loads((headline.CELLS / study.name / "lightgcn" / "tuning.json").read_text())
    assert trained == [3] and tuning["spec"]["trial_train"]["epochs"] == 3 and len(tuning["trials"]) == 2


def test_a_new_switch_keeps_recorded_cells_but_a_changed_default_does_not(study):
    want = headline._jsonable(headline.spec("lightgcn", study.name))
    older = json.loads(json.dumps(want))
    del older["defaults"]["params"]["reg_weight"]  # recorded before the model had this setting
    assert headline.same_protocol(older, want)
    changed = json.loads(json.dumps(want))
    changed["defaults"]["params"]["reg_weight"] = 123.0
    assert not headline.same_protocol(changed, want)
    del want["defaults"]["params"]["reg_weight"]  # a setting removed since the record
    assert not headline.same_protocol(headline._jsonable(headline.spec("lightgcn", study.name)), want)


def test_trials_that_stopped_before_the_warm_up_are_rerun_and_only_they(study, monkeypatch):
    headline.run_cell("lightgcn", study.name, {"tune"}, study)
    path = headline.CELLS / study.name / "lightgcn" / "tuning.json"
    record = json.loads(path.read_text())
    # As recorded before the warm-up rule: no min_epochs anywhere; trial 0 stopped early.
    del record["spec"]["trial_train"]["min_epochs"]
    for trial in record["trials"]:
        del trial["min_epochs"]
    record["trials"][0]["epochs"] = 1
    path.write_text(json.dumps(record))
    trained = []
    real = headline.blind_trial
    monkeypatch.setattr(headline, "blind_trial", lambda *a: trained.append(a[2]) or real(*a))
    headline.run_cell("lightgcn", study.name, {"tune"}, study)
    assert len(trained) == 1 and trained[0]["min_epochs"] == headline.TRIAL_MIN_EPOCHS
    again = json.loads(path.read_text())
    assert again["trials"][0]["min_epochs"] == headline.TRIAL_MIN_EPOCHS and "min_epochs" not in again["trials"][1]
    assert again["spec"]["trial_train"]["min_epochs"] == headline.TRIAL_MIN_EPOCHS
    headline.run_cell("lightgcn", study.name, {"tune"}, study)  # nothing stale left
    assert len(trained) == 1


def test_a_recorded_trial_at_another_point_is_rerun(study, monkeypatch):
    """A grid's points changed in place (a repeated model taken out): the trial recorded at that
    index for another point is trained again at the spec's point, the others kept."""
    headline.run_cell("lightgcn", study.name, {"tune"}, study)
    path = headline.CELLS / study.name / "lightgcn" / "tuning.json"
    record = json.loads(path.read_text())
    record["trials"][1]["point"] = {"stale": True}
    path.write_text(json.dumps(record))
    trained = []
    real = headline.blind_trial
    monkeypatch.setattr(headline, "blind_trial", lambda *a: trained.append(a[2]) or real(*a))
    headline.run_cell("lightgcn", study.name, {"tune"}, study)
    assert len(trained) == 1
    assert json.loads(path.read_text())["trials"][1]["point"] == record["spec"]["points"][1]


def test_final_seeds_run_under_the_warm_up_and_only_those_that_stopped_before_it_rerun(study, monkeypatch):
    monkeypatch.setattr(headline, "TRIAL_MIN_EPOCHS", 2)
    headline.run_cell("lightgcn", study.name, {"tune", "final"}, study)
    folder = headline.CELLS / study.name / "lightgcn"
    for seed in (1, 2):  # as recorded before the final runs had the warm-up rule
        record = json.loads((folder / f"seed-{seed}.json").read_text())
        assert record["settings"]["min_epochs"] == 2 and record["config"]["train"]["min_epochs"] == 2
        del record["settings"]["min_epochs"]
        record["config"]["train"]["min_epochs"] = 0
        record["metrics"]["epochs"] = {1: 1, 2: 3}[seed]  # seed 1 stopped before the warm-up's end
        (folder / f"seed-{seed}.json").write_text(json.dumps(record))
    trained = []
    real = headline.seed_cell
    monkeypatch.setattr(headline, "seed_cell", lambda *a: trained.append(a[-1]) or real(*a))
    headline.run_cell("lightgcn", study.name, {"final"}, study)
    assert trained == [1, 2]  # both visited; only seed 1 retrained:
    assert json.loads((folder / "seed-1.json").read_text())["settings"]["min_epochs"] == 2
    assert "min_epochs" not in json.loads((folder / "seed-2.json").read_text())["settings"]


def test_an_ablation_that_validation_selected_is_not_trained(study, monkeypatch):
    headline.run_cell("rlmmrec", study.name, {"tune"}, study)
    tuning = json.loads((headline.CELLS / study.name / "rlmmrec" / "tuning.json").read_text())
    chosen = {**tuning["spec"]["defaults"]["params"], **tuning["selected"]["point"]}
    same, other = f"reg_weight={chosen['reg_weight']}", "reg_weight=0.5"
    monkeypatch.setattr(headline, "ablations", lambda model: {"same": [same], "other": [other]})
    assert headline.tuned(tuning)
    assert headline.identical_variant(headline.variant_settings([same], study.name), tuning)
    assert not headline.identical_variant(headline.variant_settings([other], study.name), tuning)
    trained = []
    monkeypatch.setattr(headline, "seed_cell", lambda cell, *a: trained.append(cell))
    headline.run_cell("rlmmrec", study.name, {"ablation"}, study)
    assert trained == [f"rlmmrec~{headline.slug([other])}"] * len(headline.SEEDS)


def test_jobs_share_out_each_seed_and_ablation_run_as_a_task(study, monkeypatch, capsys):
    """With ``--jobs`` the workers took whole (model, dataset) cells: one model's 5 seeds and its
    ablations' 50 ran one after another in one process while the others idled. Now each cell's
    tuning is a task, then each of its seed runs; a failed run is reported and the rest go on."""
    import concurrent.futures

    monkeypatch.setattr(headline, "_dataset", lambda name: study)
    monkeypatch.setattr(headline, "ablations", lambda model: {"concat": ["fusion=concat"]})
    monkeypatch.setattr(headline, "SEED_MODELS", ["rlmmrec"])
    tasks, seed_cell = [], headline.seed_cell

    def spy(cell, model, dataset, settings, data, seed):
        tasks.append((cell, seed))
        if (cell, seed) == ("lightgcn", 2):
            raise RuntimeError("planted failure")
        return seed_cell(cell, model, dataset, settings, data, seed)

    monkeypatch.setattr(headline, "seed_cell", spy)
    parts = {"tune", "final", "ablation"}
    headline.run(["lightgcn", "rlmmrec"], [study.name], parts, pool=concurrent.futures.ThreadPoolExecutor(2))
    runs = {("lightgcn", 1), ("lightgcn", 2), ("rlmmrec", 1), ("rlmmrec", 2), ("rlmmrec~fusion=concat", 1),
            ("rlmmrec~fusion=concat", 2)}
    assert sorted(tasks) == sorted(runs)  # one task each
    assert f"[{study.name}/lightgcn seed 2] failed: RuntimeError('planted failure')" in capsys.readouterr().out
    recorded = {(p.parent.name, int(p.stem.split("-")[1])) for p in (headline.CELLS / study.name).glob("*/seed-*.json")}
    assert recorded == runs - {("lightgcn", 2)}
    tasks.clear()
    headline.run(["lightgcn", "rlmmrec"], [study.name], parts, pool=concurrent.futures.ThreadPoolExecutor(2))
    assert tasks == [("lightgcn", 2)]  # what is recorded is not even handed out


def test_an_ablation_may_train_another_model_at_its_tuned_settings(study, monkeypatch):
    """``{tuned:M}`` (EGRA's pretrained-model swaps) is the point this study selected for M, with
    the warm-up; while M is not tuned the variant waits (not trained, pending in the report)."""
    changed = ["pretrain_settings={tuned:lightgcn}"]
    with pytest.raises(LookupError, match="lightgcn is not tuned"):
        headline.variant_settings(changed, study.name)
    headline.run_cell("rlmmrec", study.name, {"tune"}, study)
    monkeypatch.setattr(headline, "ablations", lambda model: {"swap": changed})
    trained = []
    monkeypatch.setattr(headline, "seed_cell", lambda cell, *a: trained.append((cell, a[2])))
    headline.run_cell("rlmmrec", study.name, {"ablation"}, study)
    assert trained == []
    headline.run_cell("lightgcn", study.name, {"tune"}, study)
    tuning = json.loads((headline.CELLS / study.name / "lightgcn" / "tuning.json").read_text())
    want = {**headline.FIXED["lightgcn"][study.name], **tuning["selected"]["point"],
            "min_epochs": headline.TRIAL_MIN_EPOCHS}
    assert headline.variant_settings(changed, study.name) == {"pretrain_settings": want}
    headline.run_cell("rlmmrec", study.name, {"ablation"}, study)
    assert [c for c, _ in trained] == [f"rlmmrec~{headline.slug(changed)}"] * len(headline.SEEDS)
    assert all(settings["pretrain_settings"] == want for _, settings in trained)
    monkeypatch.setattr(headline, "tuned_settings", lambda model, dataset: {"cl_weight": 1e-06, "order": ["a", "b"]})
    assert headline.variant_settings(changed, study.name) == {"pretrain_settings": {"cl_weight": 1e-06, "order": ["a", "b"]}}


def test_claims_are_judged_from_the_tests_and_say_what_is_pending():
    def test(rival, metric, diff, p, key="baseline", p_holm=None):
        return {"dataset": "d", "model": "siger", key: rival, "metric": metric, "diff": diff, "p": p,
                "p_holm": p if p_holm is None else p_holm}

    data = {"comparisons": [test("gume", m, 0.01, 0.001) for m in headline.TESTED]
            + [test("mgcn", "recall@20", 0.01, 0.001), test("mgcn", "ndcg@20", 0.002, 0.3)],
            "ablation_tests": [test("w/o CI", m, -0.02, 1e-4, "variant") for m in headline.TESTED],
            "identical_ablations": {"d": {"siger": ["gamma = 0"]}},
            "planned": {"comparisons": 100, "ablation_tests": 100}, "retuning": {"d": []}}
    beats = headline.judge(data, "d", "siger", {"claim": "c", "beats": ["gume", "mgcn"]})
    assert beats.startswith("**does not hold**") and "mgcn N@20" in beats and "gume" not in beats  # raw p .3
    assert headline.judge(data, "d", "siger", {"claim": "c", "beats": ["gume"]}).startswith("**holds**")
    assert headline.judge(data, "d", "siger", {"claim": "c", "beats": ["gume", "vbpr"]}) == "pending (not measured: vbpr)."
    helps = headline.judge(data, "d", "siger", {"claim": "c", "lower": ["w/o CI"]})
    assert helps.startswith("**holds**")  # the variant is worse than the full model
    chosen = headline.judge(data, "d", "siger", {"claim": "c", "lower": ["w/o CI", "gamma = 0", "fixed"]})
    assert chosen.startswith("**does not hold**") and "selected the setting of gamma = 0" in chosen
    assert "not measured: fixed" in chosen
    assert "see x" in headline.judge(data, "d", "siger", {"claim": "c", "elsewhere": "x"})

    # Not significant after Holm, raw p below α: the family's other tests can still make it
    # significant (pending) until the family is complete; a wrong sign never can.
    data["comparisons"][-1] = test("mgcn", "ndcg@20", 0.002, 0.01, p_holm=0.3)
    beats = headline.judge(data, "d", "siger", {"claim": "c", "beats": ["gume", "mgcn"]})
    assert beats.startswith("pending (not significant yet, 4 of the 100 planned tests measured: mgcn N@20")
    assert headline.shown_verdict(data["comparisons"][-1], False) == "n.s. so far"
    data["planned"]["comparisons"] = 4
    assert headline.judge(data, "d", "siger", {"claim": "c", "beats": ["gume", "mgcn"]}).startswith("**does not hold**")
    assert headline.shown_verdict(data["comparisons"][-1], True) == "n.s."
    data["planned"]["comparisons"] = 100
    data["comparisons"][-1] = test("mgcn", "ndcg@20", -0.002, 0.01, p_holm=0.3)
    assert headline.judge(data, "d", "siger", {"claim": "c", "beats": ["gume", "mgcn"]}).startswith("**does not hold**")
    # A model of the claim being tuned again: its seeds may be replaced, so nothing is final.
    data["retuning"]["d"] = ["mgcn"]
    again = headline.judge(data, "d", "siger", {"claim": "c", "beats": ["gume", "mgcn"]})
    assert again.startswith("pending (mgcn being tuned again; on the seeds of the previous search: **does not hold**")
    assert headline.judge(data, "d", "siger", {"claim": "c", "beats": ["gume"]}).startswith("**holds**")
    assert headline._glance(again) == "pending"


def test_claims_judged_by_the_robustness_study_show_its_verdict(tmp_path, monkeypatch):
    recorded = {"claims": [{"dataset": "d", "model": "siger", "verdict": "does not hold", "evidence": "**does not hold**: x",
                            "text": "- siger on d: ..."}, "- an old line without fields"]}
    monkeypatch.setattr(headline, "ROBUSTNESS", tmp_path / "robustness.json")
    assert headline.elsewhere() == {}  # not run yet
    (tmp_path / "robustness.json").write_text(json.dumps(recorded))
    data = {"elsewhere": headline.elsewhere()}
    claim = {"claim": "robust", "judged_in": "claims", "elsewhere": "its table"}
    assert headline.glance(data, "d", "siger", claim) == "**does not hold** (robustness study)"
    assert headline.judge(data, "d", "siger", claim) == "not tested by this study; see its table. There: **does not hold**: x"
    assert headline.glance(data, "e", "siger", claim) == "pending (robustness study)"
    assert headline.judge(data, "e", "siger", claim).endswith("There: not judged yet.")


def test_device_reaches_every_run_and_the_report(study, monkeypatch):
    from prismrec.errors import TrainingDiverged

    devices = []

    def capture(cfg, *args, **kwargs):
        devices.append(cfg.train.device)
        raise TrainingDiverged("captured")

    monkeypatch.setattr("prismrec.experiment.runs.run_experiment", capture)
    monkeypatch.setattr(headline, "DEVICE", "cuda")
    folder = headline.RUNS / "t"
    assert headline.blind_trial("lightgcn", study.name, {"epochs": 1}, folder, study)["state"] == "diverged"
    with pytest.raises(TrainingDiverged):
        headline.seed_cell("lightgcn", "lightgcn", study.name, {"epochs": 1}, study, 1)
    assert devices == ["cuda", "cuda"]
    seeds = [{"metrics": {"test": {m: 0.1 for m in headline.METRICS}, "epochs": 3},
              "timing": {"median_train_s": 1.0, "peak_rss_mb": 1.0}, "config": {"train": {"device": d}}}
             for d in ("cpu", "cuda")]
    assert headline._off_cpu(headline.summary({"seeds": dict(enumerate(seeds))})) == " (cuda)"
    assert headline._off_cpu(headline.summary({"seeds": {0: seeds[0]}})) == ""


def test_trial_points_never_repeat_a_model():
    """A setting that matters only with another (MMGCN's reg_weight without trained tables) is not
    varied where it changes nothing: every trial trains a different model, the defaults first."""
    from prismrec.models.mmgcn import MMGCNConfig

    points = headline.trial_points("mmgcn")
    assert points[0] == {} and len(points) == headline.TRIALS
    effective = [{**MMGCNConfig().__dict__, **p} for p in points]
    for e in effective:
        if not e["train_embeddings"]:
            e["reg_weight"] = None  # inert: the L2 term has no gradient
    assert len({tuple(sorted(e.items())) for e in effective}) == len(points)
    # The order of the grid's shuffle is kept: the trials recorded before the rule are its first three.
    assert points[1:3] == [{"reg_weight": 0.01, "train_embeddings": True}, {"reg_weight": 0.0, "train_embeddings": True}]


def test_seeds_keep_long_tail_and_head_metrics_and_older_seeds_get_them(study, capsys):
    import numpy as np

    from prismrec.eval.groups import popularity_groups

    headline.run_cell("lightgcn", study.name, {"tune", "final"}, study)
    path = headline.CELLS / study.name / "lightgcn" / "seed-1.npz"
    with np.load(path) as z:
        recorded = {k: z[k] for k in z.files}
    groups = popularity_groups(study.train, headline.TAIL_SHARE)
    test = study.test.tocsr()
    for group, items in groups.items():  # the users with a test positive in the group, no others
        has = np.flatnonzero(np.asarray(test[:, items].sum(axis=1)).ravel() > 0)
        assert np.array_equal(recorded[f"{group}_user"], has)
    only_tail = [u for u in recorded["user"] if u in set(recorded["tail_user"]) and u not in set(recorded["head_user"])]
    assert only_tail  # all of their positives are tail items: the tail metrics are the overall ones
    at = {u: k for k, u in enumerate(recorded["user"])}
    at_tail = {u: k for k, u in enumerate(recorded["tail_user"])}
    for u in only_tail:
        assert recorded["tail_recall@20"][at_tail[u]] == recorded["recall@20"][at[u]]
    assert np.array_equal(recorded["user_degree"], np.diff(study.train.tocsr().indptr)[recorded["user"]])
    grouped = ("tail_", "head_", "user_degree")

    # A seed recorded before groups were kept gets them from its run folder, the same arrays.
    headline.atomic_npz(path, {k: v for k, v in recorded.items() if not k.startswith(grouped)})
    headline.run_cell("lightgcn", study.name, {"longtail"}, study)
    with np.load(path) as z:
        assert sorted(z.files) == sorted(recorded) and all(np.array_equal(z[k], recorded[k]) for k in z.files)
    # ... unless its run folder is not the recorded run.
    headline.atomic_npz(path, {**{k: v for k, v in recorded.items() if not k.startswith(grouped)},
                               "recall@20": recorded["recall@20"] + 1})
    headline.run_cell("lightgcn", study.name, {"longtail"}, study)
    with np.load(path) as z:  # the users' degrees come from the data, not from the run
        assert "tail_user" not in z.files and np.array_equal(z["user_degree"], recorded["user_degree"])
    assert "is not the recorded run" in capsys.readouterr().out


def test_group_claims_compare_relative_gains_on_the_two_groups():
    import numpy as np

    def rows(tail, head):
        return {f"{g}_{m}": v for g, v in (("tail", tail), ("head", head)) for m in headline.TESTED}

    tests = [{"dataset": "d", "model": "egra", "group": "tail", "metric": m, "diff": 0.01, "p": 0.01, "p_holm": 0.01}
             for m in headline.TESTED]
    data = {"groups": {"d": {"egra": rows(0.11, 0.42), "gume": rows(0.10, 0.40)}}, "group_tests": tests,
            "planned": {"group_tests": 8}}
    on = ("tail", "head")
    assert headline.judge_gains(data, "d", "egra", "gume", on).startswith("**holds**")  # +10 % tail, +5 % head
    tests[0]["p_holm"] = 0.2  # the tail's difference is not significant on R@20 after Holm: it still may be
    assert headline.judge_gains(data, "d", "egra", "gume", on).startswith("pending")
    tests[0]["p"] = 0.2  # ... unless its raw p is above α
    assert headline.judge_gains(data, "d", "egra", "gume", on).startswith("**does not hold**")
    tests[0]["p"] = tests[0]["p_holm"] = 0.01
    data["groups"]["d"]["egra"] = rows(0.104, 0.42)
    assert headline.judge_gains(data, "d", "egra", "gume", on).startswith("**does not hold**")  # +4 % tail
    del data["groups"]["d"]["gume"]
    assert headline.judge_gains(data, "d", "egra", "gume", on).startswith("pending")
    # sparse users: the quarter with the fewest training interactions, ties in user order
    from prismrec.eval.groups import sparsest_users

    assert np.flatnonzero(sparsest_users(np.array([5, 1, 3, 1, 9, 2, 7, 4]), 0.25)).tolist() == [1, 3]
    cell = {"seeds": {s: {"per_user": {"user": np.arange(8), "user_degree": np.array([5, 1, 3, 1, 9, 2, 7, 4]),
                                       "recall@20": np.arange(8) / 10 + s}} for s in (0, 1)}}
    users, mean = headline.per_user_mean(cell, "recall@20", "sparse")
    assert users.tolist() == [1, 3] and np.allclose(mean, [0.6, 0.8])
    assert headline.per_user_mean(cell, "recall@20", "rest")[0].tolist() == [0, 2, 4, 5, 6, 7]


def test_a_models_training_grid_is_searched_with_its_config_grid():
    """RLMultimodalRec's learning rate (ALGORITHMS.md §4) joins reg_weight in its search; a model
    without a train_grid searches its Config grid alone."""
    space = headline.grid("rlmmrec")
    assert space == {"reg_weight": [1e-5, 1e-4, 1e-3], "lr": [1e-4, 5e-4, 1e-3]}
    points = headline.trial_points("rlmmrec")
    assert len(points) == headline.TRIALS and any(p.get("lr", 1e-3) != 1e-3 for p in points)
    assert all(set(p) <= set(space) for p in points)
    assert "lr" not in headline.grid("mgcn") and headline.default_settings("rlmmrec")["lr"] == 1e-3


def test_the_report_marks_a_model_whose_search_space_changed(study, monkeypatch):
    headline.run_cell("lightgcn", study.name, {"tune", "final"}, study)
    data = headline.report(["lightgcn"], [study.name])
    assert data["retuning"] == {study.name: []}
    assert data["progress"] == {study.name: {"lightgcn": {"trials": [2, 2], "seeds": [2, 2], "core-hours left": None}}}
    real = headline.grid
    monkeypatch.setattr(headline, "grid", lambda model: {**real(model), "lr": [1e-3, 5e-4]})
    data = headline.report(["lightgcn"], [study.name])
    assert data["retuning"] == {study.name: ["lightgcn"]}
    assert data["progress"][study.name]["lightgcn"]["trials"][0] == 0  # its recorded trials are another search's
    assert "| lightgcn ‡ | 2 |" in (headline.RESULTS / "headline.md").read_text()
    assert f"lightgcn (being tuned again on {study.name}) & " in (headline.RESULTS / "headline.tex").read_text()


def test_a_seed_is_kept_when_other_settings_spell_the_same_model(study, monkeypatch):
    """A selected point that now names a default it had implicitly (the learning rate, once searched)
    trains the same model: the recorded seed is kept; another value retrains."""
    headline.run_cell("lightgcn", study.name, {"tune", "final"}, study)
    tuning = json.loads((headline.CELLS / study.name / "lightgcn" / "tuning.json").read_text())
    selected = {**tuning["spec"]["base"], **tuning["selected"]["point"], "min_epochs": headline.TRIAL_MIN_EPOCHS}

    def refuse(*args, **kwargs):
        raise AssertionError("trained again")

    monkeypatch.setattr("prismrec.experiment.runs.run_experiment", refuse)
    kept = headline.seed_cell("lightgcn", "lightgcn", study.name, {**selected, "lr": 1e-3}, study, 1)
    assert kept["settings"] == headline._jsonable(selected)
    with pytest.raises(AssertionError, match="trained again"):
        headline.seed_cell("lightgcn", "lightgcn", study.name, {**selected, "lr": 5e-4}, study, 1)


def test_holm_runs_over_the_planned_family_and_only_falls_as_it_fills_in():
    rng = __import__("random").Random(0)
    ps = [rng.random() ** 4 for _ in range(12)]

    def reference(pvalues: list[float]) -> list[float]:  # Holm's definition, every test of the family present
        ranked = sorted(pvalues)
        adjusted = [max(min(1.0, (len(ranked) - j) * ranked[j]) for j in range(ranked.index(p) + 1)) for p in pvalues]
        return adjusted

    for measured in range(1, 13):
        tests = [{"p": p} for p in ps[:measured]]
        headline.holm(tests, planned=12)
        full = reference(ps[:measured] + [1.0] * (12 - measured))  # the unmeasured ones at p = 1
        assert [t["p_holm"] for t in tests] == pytest.approx(full[:measured])
        if measured > 1:  # each landed test lowers or keeps the others' adjusted p
            assert all(t["p_holm"] <= before + 1e-15 for t, before in zip(tests, previous))
        previous = [t["p_holm"] for t in tests]
    tests = [{"p": p} for p in ps]
    headline.holm(tests)  # no plan: the measured family
    assert [t["p_holm"] for t in tests] == pytest.approx(reference(ps))


def test_latex_and_csv_carry_the_headline_and_ablation_tables():
    def summary(r20: float, n: int = 2) -> dict:
        return {"n": n, "mean": {m: r20 for m in headline.METRICS}, "std": {m: 0.001 for m in headline.METRICS},
                "epochs": 10, "s_epoch": 0.1, "peak_rss_mb": 100, "devices": ["cpu"]}

    tests = [{"dataset": "d", "model": "siger", "variant": "w/o CI", "metric": m, "diff": -0.02, "p": 1e-5,
              "p_holm": 1e-4} for m in headline.TESTED]
    data = {"summaries": {"d": {"lightgcn": summary(0.30), "siger": summary(0.35), "egra": summary(0.33, n=1)}},
            "comparisons": [{"dataset": "d", "model": "siger", "baseline": "lightgcn", "metric": m, "diff": 0.05,
                             "p": 1e-6, "p_holm": 1e-5} for m in headline.TESTED],
            "ablations": {"d": {"siger": {"w/o CI": summary(0.33), "fixed": summary(0.34, n=1)}}},
            "ablation_tests": tests, "identical_ablations": {"d": {"siger": ["gamma = 0"]}},
            "planned": {"comparisons": 2, "ablation_tests": 2}}
    ablation_labels = {"w/o CI": ["beta=0"], "fixed": ["perturbation=fixed"], "gamma = 0": ["gamma=0"]}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(headline, "SEEDS", [1, 2])
        mp.setattr(headline, "ablations", lambda model: ablation_labels if model == "siger" else {})
        tex = headline.render_latex(data, ["lightgcn", "siger", "egra"], ["d"])
        rows = list(__import__("csv").DictReader(headline.render_ablations_csv(data).splitlines()))
    line = next(row for row in tex.splitlines() if row.startswith("siger &"))
    assert r"\textbf{0.3500}$\pm$0.0010$^\dagger$" in line  # best, ± std, better than every baseline
    assert r"egra (1/2 seeds on d) & 0.3300$\pm$0.0010" in tex
    assert r"w/o CI & 0.3300$\pm$0.0010 & 0.3300$\pm$0.0010$^\downarrow$" in tex  # R@20 tested, R@10 not
    assert r"fixed (1/2 seeds on d) &" in tex and r"gamma = 0 & \multicolumn{4}{c}{= full model" in tex
    by_variant = {row["variant"]: row for row in rows}
    assert by_variant["w/o CI"]["recall@20_verdict"] == "worse" and float(by_variant["w/o CI"]["ndcg@20_diff"]) == -0.02
    assert by_variant["fixed"]["recall@20_verdict"] == "" and by_variant["fixed"]["seeds"] == "1"
    assert by_variant["gamma = 0"]["note"].startswith("selected on validation")


def test_core_hours_left_count_the_runs_to_come_at_the_floors_epoch(tmp_path, monkeypatch):
    floors = tmp_path / "floors.json"
    floors.write_text(json.dumps({"models": {"mgcn": {"train_cpu_s": 2.0, "valid_cpu_s": 1.0, "train_s": 9, "valid_s": 9},
                                             "egra": {"train_cpu_s": 3.0, "valid_cpu_s": 1.0, "train_s": 9, "valid_s": 9}}}))
    monkeypatch.setitem(headline.FLOORS, "d", floors)
    monkeypatch.setattr(headline, "collect", lambda d, m: {"seeds": {1: {"metrics": {"epochs": 100}}}} if m == "mgcn" else None)
    tunings = {"d": {"egra": {"trials": [{"epochs": 40}, {"epochs": 60}]}, "mgcn": None}}
    row = {"trials": [4, 6], "seeds": [3, 5], "ablation seeds": [0, 10]}
    # EGRA: 2 trials of 50 epochs, 2 + 10 seeds of 200 (none recorded anywhere), 4 s an epoch; its stage 1:
    # MGCN at each of its 3 grid points for the 2 seeds left, and 5 swap seeds, 100 epochs of 3 s
    want = (2 * 50 + 12 * 200) * 4 + (2 * 3 + 5) * 100 * 3
    assert headline.hours_left("egra", "d", row, tunings, swaps=5) == pytest.approx(want / 3600)
    assert headline.hours_left("mgcn", "d", {"trials": [3, 3], "seeds": [5, 5]}, tunings) == 0
    assert headline.hours_left("lightgcn", "d", row, tunings) is None  # no floors epoch: unknown
