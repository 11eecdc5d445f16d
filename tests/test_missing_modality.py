"""Missing modalities: masks written by build and derive, loaded and imputed by load_dataset
(prismrec.data.features.impute_features), and the corruptions of benchmarks/robustness.py."""

import json

import numpy as np
import pandas as pd
import pytest

from prismrec.data import load_dataset
from prismrec.data.build import build_dataset
from prismrec.data.derive import corrupt_modality
from prismrec.data.features import impute_features, nearest_rows
from prismrec.data.synthetic import write_planted_dataset
from prismrec.errors import ConfigError, DatasetError

IMAGE = np.array([[1.0, 0.0], [9.0, 9.0], [3.0, 4.0], [5.0, 2.0]], dtype=np.float32)
TEXT = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [1.0, 0.9]], dtype=np.float32)
MASK = np.array([True, False, True, True])


def test_mean_and_zero_imputation_by_hand():
    filled, record = impute_features({"image": IMAGE, "text": TEXT}, {"image": MASK}, "mean")
    np.testing.assert_allclose(filled["image"][1], [(1 + 3 + 5) / 3, (0 + 4 + 2) / 3])
    np.testing.assert_array_equal(filled["image"][[0, 2, 3]], IMAGE[[0, 2, 3]])
    assert filled["text"] is TEXT and record == {"image": {"rows": 1, "method": "mean", "fallback_mean": 0}}
    zero, _ = impute_features({"image": IMAGE}, {"image": MASK}, "zero")
    np.testing.assert_array_equal(zero["image"][1], [0, 0])
    assert IMAGE[1, 0] == 9.0  # the input is not modified


def test_neighbour_imputation_by_hand():
    # Item 1's text (1, 1) is closest by cosine to item 3 (1, 0.9), then to items 0 and 2 (tied:
    # the lower id wins). With k=2 its image is the mean of the images of items 3 and 0.
    filled, record = impute_features({"image": IMAGE, "text": TEXT}, {"image": MASK}, "neighbour", k=2)
    np.testing.assert_allclose(filled["image"][1], (IMAGE[3] + IMAGE[0]) / 2)
    assert record["image"]["fallback_mean"] == 0
    np.testing.assert_array_equal(nearest_rows(TEXT[[1]], TEXT[[0, 2, 3]], 3), [[2, 0, 1]])
    # An item missing every modality falls back to the mean.
    both, record = impute_features({"image": IMAGE, "text": TEXT}, {"image": MASK, "text": np.arange(4) != 1},
                                   "neighbour", k=2)
    np.testing.assert_allclose(both["image"][1], IMAGE[[0, 2, 3]].mean(axis=0))
    assert record["image"]["fallback_mean"] == 1
    with pytest.raises(ConfigError, match="impute must be one of"):
        impute_features({"image": IMAGE}, {"image": MASK}, "median")


def test_build_writes_the_mask_and_load_dataset_imputes_it(tmp_path):
    raw = tmp_path / "raw.csv"
    rows = [(u, i) for u in ("a", "b", "c", "d") for i in ("p", "q", "r")]
    pd.DataFrame(rows, columns=["user", "item"]).to_csv(raw, index=False)
    np.savez(tmp_path / "img.npz", ids=np.array(["p", "r"]), vectors=np.array([[1.0, 0.0], [3.0, 4.0]]))
    np.savez(tmp_path / "txt.npz", ids=np.array(["p", "q", "r"]), vectors=np.array([[1.0, 0], [0, 1.0], [0.1, 1]]))
    folder = build_dataset(raw, tmp_path / "m", min_count=3, missing_features="mean", impute="neighbour",
                           item_features={"image": tmp_path / "img.npz", "text": tmp_path / "txt.npz"})
    np.testing.assert_array_equal(np.load(folder / "image_mask.npy"), [True, False, True])
    assert not (folder / "text_mask.npy").exists()
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["impute"] == "neighbour" and manifest["features"]["image"]["mask"] == "image_mask.npy"
    data = load_dataset(folder, impute_k=1)  # the folder's default: q's text (0, 1) is nearest to r's (0.1, 1)
    np.testing.assert_array_equal(data.feature_masks["image"], [True, False, True])
    assert list(data.feature_masks) == ["image"]
    np.testing.assert_allclose(data.features["image"].numpy()[1], [3.0, 4.0])
    assert data.manifest["imputation"]["image"] == {"rows": 1, "method": "neighbour", "fallback_mean": 0}
    np.testing.assert_allclose(load_dataset(folder).features["image"].numpy()[1], [2.0, 2.0])  # k=10: both
    np.testing.assert_allclose(load_dataset(folder, impute="mean").features["image"].numpy()[1], [2.0, 2.0])
    np.testing.assert_allclose(load_dataset(folder, impute="zero").features["image"].numpy()[1], [0.0, 0.0])
    with pytest.raises(ConfigError, match="impute: 'nope'"):
        load_dataset(folder, impute="nope")
    np.save(folder / "image_mask.npy", np.ones(5, dtype=bool))
    with pytest.raises(DatasetError, match=r"image_mask.npy: expected a boolean vector of 3 items"):
        load_dataset(folder)


def test_corruptions_drop_mask_and_noise(tmp_path):
    src = write_planted_dataset(tmp_path / "p", n_users=40, n_items=50, per_user=8, seed=1)
    small = corrupt_modality(src, "p-drop10", "image", "drop", 0.1, seed=4, impute="zero")
    large = corrupt_modality(src, "p-drop40", "image", "drop", 0.4, seed=4)
    mask_small, mask_large = np.load(small / "image_mask.npy"), np.load(large / "image_mask.npy")
    assert (~mask_small).sum() == 5 and (~mask_large).sum() == 20
    assert not (~mask_small & mask_large).any()  # a larger fraction drops a superset of the rows
    data = load_dataset(small)
    assert data.manifest["corruption"]["rows"] == 5 and data.manifest["impute"] == "zero"
    assert not data.features["image"].numpy()[~mask_small].any()
    np.testing.assert_array_equal(data.features["text"].numpy(), np.load(src / "text_feat.npy"))
    noisy = corrupt_modality(src, "p-noise40", "image", "noise", 0.4, seed=4)
    before, after = np.load(src / "image_feat.npy"), np.load(noisy / "image_feat.npy")
    changed = (before != after).any(axis=1)
    np.testing.assert_array_equal(changed, ~mask_large)  # the same seeded rows
    assert abs(after[changed].mean(axis=0) - before.mean(axis=0)).max() < 3 * before.std(axis=0).max() / np.sqrt(20) + 0.1
    assert not (noisy / "image_mask.npy").exists()
    with pytest.raises(ConfigError, match="has no audio_feat.npy"):
        corrupt_modality(src, "x", "audio", "drop", 0.1)


# --------------------------------------------------------------------------- mask-aware fusion


def test_gated_fusion_renormalises_over_present_modalities_by_hand():
    import torch

    from prismrec.nn.fusion import GatedFusion

    fusion = GatedFusion(3, 2, scalar=True)
    xs = [torch.tensor([[1.0, 0.0], [2.0, 2.0]]), torch.tensor([[0.0, 1.0], [4.0, 0.0]]),
          torch.tensor([[5.0, 5.0], [0.0, 8.0]])]
    _, w = fusion(xs)
    present = torch.tensor([[True, False, True], [False, False, False]])
    fused, wm = fusion(xs, present)
    # row 0: modality 1 missing -> weights w0, w2 rescaled to sum 1
    w0, w2 = w[0, 0, 0], w[0, 2, 0]
    torch.testing.assert_close(fused[0], (w0 * xs[0][0] + w2 * xs[2][0]) / (w0 + w2))
    torch.testing.assert_close(wm[0, :, 0], torch.stack([w0, torch.tensor(0.0), w2]) / (w0 + w2))
    assert torch.equal(fused[1], torch.zeros(2)) and torch.equal(wm[1], torch.zeros(3, 1))  # nothing present
    all_present, _ = fusion(xs, torch.ones(2, 3, dtype=torch.bool))
    torch.testing.assert_close(all_present, fusion(xs)[0])


def test_behavior_aware_fuser_ignores_a_missing_modality_by_hand():
    import torch

    from prismrec.nn.fusion import BehaviorAwareFuser, present_mean

    torch.manual_seed(0)
    two, one = BehaviorAwareFuser(2, 2), BehaviorAwareFuser(2, 1)
    one.query.load_state_dict(two.query.state_dict())
    with torch.no_grad():  # the one-modality fuser's gate is the two-modality fuser's first gate
        one.preference.weight.copy_(two.preference.weight[:2])
        one.preference.bias.copy_(two.preference.bias[:2])
    views = torch.randn(2, 3, 2)
    behavior = torch.randn(3, 2)
    present = torch.tensor([[True, True, True], [True, False, False]])  # nodes 1, 2 lack modality 2
    views[1, 1:] = 7.0  # whatever the missing rows hold
    fused = two(views, behavior, present)
    torch.testing.assert_close(fused[0], two(views, behavior)[0])  # complete node: unchanged
    # a node with only modality 1 fuses as with one modality: α = 1, no specific part, (H_1)/2
    torch.testing.assert_close(fused[1:], one(views[:1, 1:], behavior[1:]))
    torch.testing.assert_close(fused[1:], views[0, 1:] / 2)
    stack = torch.tensor([[[1.0], [2.0]], [[3.0], [10.0]]])  # K=2, N=2, d=1
    keep = torch.tensor([[True, True], [True, False]])
    torch.testing.assert_close(present_mean(stack, keep), torch.tensor([[2.0], [2.0]]))
    torch.testing.assert_close(present_mean(stack, keep, "sum"), torch.tensor([[4.0], [4.0]]))


def test_zero_imputation_switches_models_to_mask_aware_fusion(tmp_path):
    import torch

    from prismrec.data.features import fusion_presence
    from prismrec.experiment.config import resolve_config
    from prismrec.models import get_model

    src = write_planted_dataset(tmp_path / "p", n_users=40, n_items=50, per_user=8, seed=1)
    folder = corrupt_modality(src, "p-drop", "image", "drop", 0.2, seed=4)
    mask = np.load(folder / "image_mask.npy")
    zero, mean = load_dataset(folder, impute="zero"), load_dataset(folder, impute="mean")
    present = fusion_presence(zero, ["image", "text"])
    np.testing.assert_array_equal(present, np.stack([mask, np.ones(50, bool)], axis=1))
    assert fusion_presence(mean, ["image", "text"]) is None and fusion_presence(zero, ["text"]) is None
    for fusion in ("gate", "mean"):
        cfg = resolve_config("rlmmrec", "p-drop", {"fusion": fusion})
        torch.manual_seed(0)
        net = get_model("rlmmrec")(zero, cfg.params)
        with torch.no_grad():
            m, gate = net.content()
            text = net.projectors["text"]()
        missing = ~mask
        # a missing image: the item's fused content is its text projection alone
        torch.testing.assert_close(m[missing], text[missing])
        assert not torch.allclose(m[mask], text[mask])
    for name in ("mmgcn", "smore", "dragon", "lgmrec"):  # the forward runs with masks, finite
        overrides = {"dragon": {"mm_weights": [0.1, 0.9]},
                     "smore": {"image_knn_k": 10}}.get(name, {})  # k below the 40 items having the image
        cfg = resolve_config(name, "p-drop", overrides)
        net = get_model(name)(zero, cfg.params).eval()
        assert net.present is not None and torch.isfinite(net().item).all(), name
        assert get_model(name)(mean, cfg.params).present is None, name
        if name == "mmgcn":  # an item without its image: the mean over its present views is its text view
            with torch.no_grad():
                out = net()
            text_rows = out.aux["modality_text"][zero.n_users:]
            torch.testing.assert_close(out.item[~mask], text_rows[~mask])
            assert not torch.allclose(out.item[mask], text_rows[mask])


def test_robustness_benchmark_keeps_zero_imputation_cells_apart(tmp_path, monkeypatch):
    from benchmarks import robustness as rb

    planned = rb.plan(["lfm2k"], [999])
    assert rb.with_imputation(planned, "mean") == planned
    cells = rb.with_imputation(planned, "zero")
    zero = [c for c in cells if c.get("impute") == "zero"]
    assert len(zero) == sum(c.get("kind") == "drop" for c in planned) > 0
    assert all(c["kind"] == "drop" and c["condition"] == f"drop-zero-{c['q']}" for c in zero)
    assert len({rb.cell_name(c) for c in cells}) == len(cells)  # own cell files and run directories
    cell = next(c for c in zero if c["q"] == 0.4)
    (tmp_path / "data" / "lfm2k-text-drop-0.4-s999-zero").mkdir(parents=True)  # its own derived folder
    assert rb.derived_dataset(cell, tmp_path, "mean") == ("lfm2k-text-drop-0.4-s999-zero", tmp_path / "data")

    def record(c, r):
        return {**c, "settings": {"epochs": 20}, "test": {"recall@20": r, "ndcg@20": r / 2}}

    mgcn = [c for c in cells if c["model"] == "mgcn" and c["family"] == "robustness"]
    fake = [record(c, 0.4) for c in mgcn if c["condition"] == "clean"]
    fake += [record(c, 0.2 if c.get("impute") else 0.3) for c in mgcn if c.get("kind") == "drop" and c["q"] == 0.4]
    monkeypatch.setattr(rb, "OUT", tmp_path)
    _, md = rb.report(fake, cells, 20)
    mean_table, zero_table = md.split("## lfm2k: drop on text")[1], md.split("## lfm2k: drop-zero on text")[1]
    assert zero_table.startswith(" (rows masked, zero-filled, mask-aware fusion)")
    assert "| mgcn | 0.4000 | - | - | -25.0% |" in mean_table.split("##")[0]
    assert "| mgcn | 0.4000 | - | - | -50.0% |" in zero_table.split("##")[0]
    # a second seed: the change over the seeds both cells ran, ± over seeds; a condition's seed
    # without its clean cell takes no part
    clean, noisy = (next(c for c in mgcn if c["condition"] == cond and not c.get("impute")) for cond in ("clean", "drop-0.4"))
    fake += [record({**clean, "seed": 1000}, 0.5), record({**noisy, "seed": 1000}, 0.45), record({**noisy, "seed": 1001}, 0.1)]
    _, md = rb.report(fake, cells, 20)
    assert "| mgcn | 0.4500 | - | - | -16.7% ± 10.6 |" in md.split("## lfm2k: drop on text")[1].split("##")[0]


def test_robustness_rerun_selects_matching_cells_trained_before_the_change():
    import subprocess

    from benchmarks import robustness as rb

    cells = rb.with_imputation(rb.plan(["lfm2k"], [999]), "zero")
    chosen = [rb.cell_name(c) for c in cells if rb.rerun_matches(c, ["lfm2k__gume__drop-zero-*", "*siger__noise-0.1_*"])]
    assert sorted(chosen) == ["lfm2k__gume__drop-zero-0.1__seed-999", "lfm2k__gume__drop-zero-0.2__seed-999",
                              "lfm2k__gume__drop-zero-0.4__seed-999", "lfm2k__siger__noise-0.1__seed-999"]
    assert rb.trained_before({}, "HEAD")  # a cell that records no commit predates every change
    head = rb.code_version()
    if head is None:
        pytest.skip("not a git checkout")
    assert not rb.trained_before({"code": head}, head)  # trained with the change: kept
    parent = subprocess.run(["git", "rev-parse", "--short", "HEAD~1"], capture_output=True, text=True).stdout.strip()
    if parent:
        assert rb.trained_before({"code": parent}, head)  # trained before it: retrained


def test_robustness_trains_the_unfinished_cells_of_the_chosen_models_and_conditions(tmp_path, monkeypatch):
    from benchmarks import robustness as rb

    monkeypatch.setattr(rb, "OUT", tmp_path)
    planned = rb.with_imputation(rb.plan(["lfm2k"], [999, 1000]), "mean")
    cold_refs = [c for c in planned if c["condition"] == "cold" and c["model"] in ("bpr", "rlmmrec")]
    done = rb.cell_file(cold_refs[0], 1000)
    done.parent.mkdir(parents=True)
    done.write_text("{}")
    tasks = rb.cells_to_train(planned, 1000, "mean", {"bpr", "rlmmrec"}, {"cold"}, [], "")
    assert [c for c, _ in tasks] == cold_refs[1:] and len(cold_refs) == 4  # plan order, the finished one left
    assert not any(fresh for _, fresh in tasks)
    assert len(rb.cells_to_train(planned, 20, "mean", {"bpr", "rlmmrec"}, {"cold"}, [], "")) == 4  # another cap
    every = rb.cells_to_train(planned, 1000, "mean", set(), set(), [], "")
    assert len(every) == len(planned) - 1
    clean = rb.cells_to_train(planned, 1000, "mean", set(), {"clean", "noise-0.4"}, [], "")
    assert {(c["model"], c["condition"]) for c, _ in clean} == \
        {(m, k) for m in rb.ROBUST_MODELS for k in ("clean", "noise-0.4")}


def test_robustness_rerun_forgets_the_cells_cached_stage_one(tmp_path, monkeypatch):
    """EGRA's cached pretraining on a rerun cell's input goes (its key holds no code); another
    input's cache and a model without a stage 0 are left alone."""
    from benchmarks import robustness as rb

    monkeypatch.setenv("PRISMREC_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "cache" / "pretrained"
    mine = "lfm2k-text-drop-0.4-s999-zero"
    keep = [root / "mgcn-lfm2k-text-drop-0.4-s999-train0-cfg1-seed999", root / "mgcn-lfm2k-train0-cfg1-seed999"]
    gone = [root / f"mgcn-{mine}-train0-cfg1-seed999", root / f"select-mgcn-{mine}-train0-k-seed999.json"]
    for path in keep + gone[:1]:
        path.mkdir(parents=True)
    gone[1].write_text("{}")
    (tmp_path / "data" / mine).mkdir(parents=True)
    cells = rb.with_imputation(rb.plan(["lfm2k"], [999]), "zero")
    cell = {"egra": None, "mgcn": None}
    for c in cells:
        if c.get("impute") == "zero" and c["q"] == 0.4 and c["model"] in cell:
            cell[c["model"]] = c
    assert rb.forget_stage_one(cell["mgcn"], tmp_path, 20, "zero") == []
    assert all(p.exists() for p in keep + gone)
    assert rb.forget_stage_one(cell["egra"], tmp_path, 20, "zero") == sorted(gone)
    assert all(p.exists() for p in keep) and not any(p.exists() for p in gone)


def test_robustness_runs_to_early_stopping_get_the_headline_warm_up():
    from benchmarks import robustness as rb

    capped, full = rb.settings("egra", "lfm2k", 20), rb.settings("egra", "lfm2k", 1000)
    assert "min_epochs" not in capped and "min_epochs" not in capped["pretrain_settings"]
    assert full["min_epochs"] == full["pretrain_settings"]["min_epochs"] == rb.WARM_UP == 50
    assert rb.settings("lightgcn", "lfm2k", 1000)["min_epochs"] == 50


def test_robustness_cells_of_different_caps_are_kept_apart(tmp_path, monkeypatch):
    from benchmarks import robustness as rb

    monkeypatch.setattr(rb, "OUT", tmp_path)
    cell = rb.plan(["lfm2k"], [999])[0]
    assert rb.cell_file(cell, 20) != rb.cell_file(cell, 1000)
    rb.cell_file(cell, 20).parent.mkdir(parents=True)
    for cap in (20, 1000):
        rb.cell_file(cell, cap).write_text(json.dumps({**cell, "settings": {"epochs": cap},
                                                       "test": {"recall@20": 0.3, "ndcg@20": 0.2}}))
    assert [c["settings"]["epochs"] for c in rb.load_cells(1000)] == [1000]
    assert [c["settings"]["epochs"] for c in rb.load_cells(20)] == [20]
    assert [p.name for p in rb.write_report([cell], 1000)] == ["robustness_e1000.json", "robustness_e1000.md"]
    assert [p.name for p in rb.write_report([cell], 20)] == ["robustness.json", "robustness.md"]


def test_robustness_cells_train_in_worker_processes_and_come_back_to_the_caller(tmp_path, real_data_dir):
    """--jobs 2: the main process derives the data, two workers train a cell each (one epoch here),
    and the records come back to the caller, which alone writes them."""
    from benchmarks import robustness as rb

    cells = [c for c in rb.plan(["lfm2k"], [999]) if c["family"] == "cold" and c["model"] in rb.ID_ONLY]
    assert len(cells) == 2
    for cell in cells:
        rb.derived_dataset(cell, tmp_path, "mean")
    done = dict((rb.cell_name(c), r) for c, r in rb.trained_cells([(c, False) for c in cells], tmp_path, 1, "mean",
                                                                   "abc1234", jobs=2))
    assert sorted(done) == sorted(rb.cell_name(c) for c in cells)
    for record in done.values():
        assert not isinstance(record, Exception), record
        assert record["code"] == "abc1234" and record["epochs_run"] == 1 and record["input"] == "lfm2k-cold10"
        assert 0 <= record["test"]["recall@20"] <= 1 and "native" in record["cold"]["cold"]


def test_a_worker_pool_ends_with_its_parent(tmp_path):
    """A study killed hard (kill -9 of the main process) leaves no worker training on."""
    import os
    import signal
    import subprocess
    import sys
    import time

    script = ("import os, time\nfrom benchmarks.common import worker_pool\n"
              "if __name__ == '__main__':\n"
              "    with worker_pool(1) as pool:\n"
              "        print(pool.submit(os.getpid).result(), flush=True)\n"
              "        pool.submit(time.sleep, 600)\n"
              "        time.sleep(600)\n")
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                              cwd=os.path.dirname(os.path.dirname(__file__)))
    worker = int(parent.stdout.readline())
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    for _ in range(100):
        try:
            os.kill(worker, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.kill(worker, signal.SIGKILL)
    raise AssertionError("the worker outlived its killed parent")


def test_robustness_claims_test_relative_drops_per_user_on_conditions_with_the_same_seeds():
    from scipy import stats

    from benchmarks import robustness as rb

    rng = np.random.default_rng(0)
    users = np.arange(400)
    clean = rng.uniform(0.0, 0.8, users.size)

    def cells(model, condition, values, seeds=(999,)):
        return {("robustness", "lfm2k", model, condition): [
            {"seed": s, "test": {"recall@20": float(values.mean()), "ndcg@20": float(values.mean()) / 2},
             "per_user": {"user": users, "recall@20": values, "ndcg@20": values / 2}} for s in seeds]}

    def drop(rel, spread=0.02):  # each user's metric falls by rel, give or take
        return clean * (1 + rel) + rng.normal(0, spread, users.size)

    claim = {"claim": "x", "kinds": ("noise",), "rivals": ("gume", "mgcn")}
    noisy = {"egra": drop(-0.025), "gume": drop(-0.25), "mgcn": drop(-0.10)}
    by = {}
    for model, values in noisy.items():
        by |= cells(model, "clean", clean) | cells(model, "noise-0.4", values)
    tests, pending = rb.claim_tests(by, "lfm2k", "egra", claim)
    assert pending == ["noise-0.1", "noise-0.2"] and len(tests) == 2 * len(rb.PER_USER)
    t = next(t for t in tests if t["rival"] == "gume" and t["metric"] == "recall@20")
    mine, theirs = noisy["egra"].mean() / clean.mean() - 1, noisy["gume"].mean() / clean.mean() - 1
    assert t["mine"] == pytest.approx(mine) and t["theirs"] == pytest.approx(theirs)
    assert t["diff"] == pytest.approx(mine - theirs)  # the mean per-user difference: the gap of relative changes
    z = (noisy["egra"] - clean) / clean.mean() - (noisy["gume"] - clean) / clean.mean()
    assert t["p"] == pytest.approx(stats.wilcoxon(z).pvalue)

    def judged(seeds=1, planned=12):  # (verdict, line) of the claim on lfm2k, with `seeds` planned
        tests, [v] = rb.judged(by, ["lfm2k"], {"egra": claim}, rb.claim_tests, planned, {"lfm2k": seeds})
        return v["verdict"], v["text"]

    verdict, line = judged()  # significant at q = 0.4, the gentler conditions not run yet
    assert verdict == "pending" and f"noise-0.4 R@20 {mine:+.1%} vs gume {theirs:+.1%}" in line
    assert "not measured: noise-0.1, noise-0.2" in line and "significant: noise-0.4" in line
    verdict, line = judged(seeds=3)  # on 1 of 3 planned seeds: its p still moves
    assert verdict == "pending" and "so far, on fewer seeds than planned: noise-0.4" in line and "on 1 of 3 seeds" in line
    for q in ("0.1", "0.2"):
        for model, values in noisy.items():
            by |= cells(model, f"noise-{q}", values)
    assert judged()[0] == "holds"
    # the same tests (raw p ~1e-60) in a family of 10^80 planned ones: not significant after Holm yet,
    # but they may become so as the rest lands
    verdict, line = judged(planned=10**80)
    assert verdict == "pending" and "not significant yet: noise-0.1" in line

    by |= cells("mgcn", "noise-0.4", drop(-0.02))  # MGCN now drops about as little as EGRA: not significant
    verdict, line = judged()
    assert verdict == "does not hold" and line.split(": ", 2)[2].startswith("**does not hold**: not a significantly "
                                                                            "smaller drop at noise-0.4")
    assert judged(seeds=3)[0] == "pending"  # ... on 1 of 3 seeds: not final
    by |= cells("mgcn", "noise-0.4", noisy["mgcn"])
    by |= cells("mgcn", "clean", clean, seeds=(999, 1000)) | cells("mgcn", "noise-0.4", noisy["mgcn"], seeds=(999, 1000))
    tests, pending = rb.claim_tests(by, "lfm2k", "egra", claim)  # MGCN's second seed: compared on the shared one
    assert {t["seeds"] for t in tests} == {1} and judged()[0] == "holds"
    by |= cells("mgcn", "noise-0.4", noisy["mgcn"], seeds=(1000,))  # no seed shared with EGRA's: not compared
    tests, pending = rb.claim_tests(by, "lfm2k", "egra", claim)
    assert [t for t in tests if t["rival"] == "mgcn" and t["condition"] == "noise-0.4"] == []
    assert pending == ["noise-0.4"] and judged()[0] == "pending"
    by |= cells("mgcn", "noise-0.4", noisy["mgcn"])
    del by[("robustness", "lfm2k", "gume", "clean")][0]["per_user"]  # recorded before per-user metrics were kept
    assert rb.claim_tests(by, "lfm2k", "egra", claim) == ([], ["noise-0.1", "noise-0.2", "noise-0.4"])


def test_robustness_cells_keep_per_user_metrics_checked_against_their_run(tmp_path, monkeypatch, planted, planted_dir):
    from benchmarks import robustness as rb
    from prismrec.experiment.config import resolve_config
    from prismrec.experiment.runs import run_experiment

    run_dir = tmp_path / "run"
    config = resolve_config("lightgcn", planted.name, {"epochs": 2, "threads": 1})
    metrics = run_experiment(config, [999], run_dir, planted_dir.parent, progress=False)
    arrays = rb.per_user_arrays(run_dir, planted_dir.parent, metrics["test"])
    assert set(arrays) == {"user", *rb.PER_USER} and arrays["recall@20"].mean() == pytest.approx(metrics["test"]["recall@20"])
    with pytest.raises(ValueError, match="not the run this cell recorded"):
        rb.per_user_arrays(run_dir, planted_dir.parent, {**metrics["test"], "ndcg@20": metrics["test"]["ndcg@20"] + 0.01})

    monkeypatch.setattr(rb, "OUT", tmp_path / "results")
    cell = next(c for c in rb.plan(["lfm2k"], [999]) if c["family"] == "robustness")
    record = {**cell, "settings": {"epochs": 2}, "test": metrics["test"], "per_user": arrays}
    paths = rb.write_cell(cell, record, 2)
    assert paths == [rb.cell_file(cell, 2), rb.per_user_file(cell, 2)] and "per_user" not in json.loads(paths[0].read_text())
    loaded = rb.load_cells(2)[0]
    assert np.array_equal(loaded["per_user"]["user"], arrays["user"])
    np.testing.assert_array_equal(loaded["per_user"]["ndcg@20"], arrays["ndcg@20"])


def test_a_rerun_cell_loses_its_record_when_it_starts_and_not_before(tmp_path, monkeypatch):
    """kill -9 during a --rerun: the cells not reached keep their (old, finished) records, so no
    later run reads their old run folders as new results; the cell in training is unfinished."""
    from benchmarks import robustness as rb

    monkeypatch.setattr(rb, "OUT", tmp_path)
    cells = [c for c in rb.plan(["lfm2k"], [999]) if c["family"] == "cold"][:2]
    for c in cells:
        rb.cell_file(c, 20).parent.mkdir(parents=True, exist_ok=True)
        rb.cell_file(c, 20).write_text("{}")
    monkeypatch.setattr(rb, "forget_stage_one", lambda *a: [])

    def killed(cell, *args, **kwargs):
        raise KeyboardInterrupt  # the first cell's training is interrupted

    monkeypatch.setattr(rb, "run_cell", killed)
    with pytest.raises(KeyboardInterrupt):
        list(rb.trained_cells([(c, True) for c in cells], tmp_path, 20, "mean", None))
    assert not rb.cell_file(cells[0], 20).exists() and rb.cell_file(cells[1], 20).exists()


def test_robustness_cells_run_the_claims_conditions_on_every_seed_first():
    from benchmarks import robustness as rb

    cells = rb.plan(["lfm2k"], [999, 1000])
    stage = [(c["family"], c.get("q") in (0, 0.4) if c["family"] == "robustness" else None) for c in cells]
    head = len([s for s in stage if s == ("robustness", True)])
    assert stage[:head] == [("robustness", True)] * head  # clean and q = 0.4, every seed, before anything else
    assert {c["seed"] for c in cells[:head]} == {999, 1000} and cells[0]["model"] == "mgcn"
    assert {(c["model"], c["seed"]) for c in cells[:head] if c["q"] == 0} == {(m, s) for m in rb.ROBUST_MODELS for s in (999, 1000)}
    assert len({rb.cell_name(c) for c in cells}) == len(cells) == len(rb.plan(["lfm2k"], [999])) * 2
    gentler = next(k for k, c in enumerate(cells) if c.get("q") == 0.2)  # the cold claim's rivals run before
    assert {"vbpr", "mmgcn", "rlmmrec", *rb.ID_ONLY} <= {c["model"] for c in cells[head:gentler] if c["family"] == "cold"}


def test_cold_cells_keep_their_own_rows_per_user_metrics(tmp_path, monkeypatch):
    from benchmarks import robustness as rb
    from prismrec.data.derive import split_cold
    from prismrec.experiment.config import resolve_config
    from prismrec.experiment.runs import run_experiment

    src = write_planted_dataset(tmp_path / "planted", n_users=120, n_items=150, per_user=15, seed=3)
    cold = split_cold(src, tmp_path / "planted-cold", fraction=0.2, seed=7)
    config = resolve_config("lightgcn", cold.name, {"epochs": 2, "threads": 1})
    run_experiment(config, [999], tmp_path / "run", tmp_path, progress=False)
    monkeypatch.setitem(rb.MODALITIES, "planted", "[image,text]")
    rows, per_user = rb.cold_rows(tmp_path / "run", tmp_path, {"dataset": "planted"})
    for mode in rb.COLD_MODES:
        for m in rb.PER_USER:
            assert per_user[f"{mode}_{m}"].mean() == pytest.approx(rows[mode]["native"][m], abs=1e-6)
        assert len(per_user[f"{mode}_user"]) == rows[mode]["native"]["users"]


def test_the_cold_start_claim_is_tested_per_user_against_each_rival_on_the_same_seeds():
    from benchmarks import robustness as rb

    rng = np.random.default_rng(1)
    users = np.arange(300)

    def cell(model, level, seeds=(999,)):
        per_user = {}
        for mode in rb.COLD_MODES:
            values = np.clip(level + rng.normal(0, 0.05, users.size), 0, 1)
            per_user |= {f"{mode}_user": users, f"{mode}_recall@20": values, f"{mode}_ndcg@20": values / 2}
        return {("cold", "lfm2k", model, "cold"): [{"seed": s, "per_user": per_user} for s in seeds]}

    claim = {"claim": "x", "rivals": ("bpr", "vbpr", "mmgcn")}
    by = cell("rlmmrec", 0.6) | cell("bpr", 0.2) | cell("vbpr", 0.5)
    tests, pending = rb.cold_claim_tests(by, "lfm2k", "rlmmrec", claim)
    assert pending == ["mmgcn"] and len(tests) == 2 * len(rb.COLD_MODES) * len(rb.PER_USER)
    t = next(t for t in tests if t["rival"] == "vbpr" and t["mode"] == "all" and t["metric"] == "recall@20")
    assert t["diff"] == pytest.approx(t["mine"] - t["theirs"]) and t["diff"] > 0.05

    def judged(seeds=1):
        tests, [v] = rb.judged(by, ["lfm2k"], {"rlmmrec": claim}, rb.cold_claim_tests, 24, {"lfm2k": seeds}, cold=True)
        return v["verdict"], v["text"]

    verdict, line = judged()
    assert verdict == "pending" and line.startswith('- rlmmrec on lfm2k: "x": pending (not measured: mmgcn; significant: ')
    by |= cell("mmgcn", 0.9)  # far above it on every seed planned: the claim cannot hold any more
    verdict, line = judged()
    assert verdict == "does not hold" and "**does not hold**: not significantly above" in line
    by |= cell("mmgcn", 0.3)
    assert judged()[0] == "holds"
    assert judged(seeds=2)[0] == "pending"  # one seed of two: provisional
    by |= cell("mmgcn", 0.6)  # level with it: not significantly above
    tests, pending = rb.cold_claim_tests(by, "lfm2k", "rlmmrec", claim)
    assert not pending and judged()[0] != "holds"
    by |= cell("mmgcn", 0.3, seeds=(999, 1000))  # judged on the seed both ran
    tests, pending = rb.cold_claim_tests(by, "lfm2k", "rlmmrec", claim)
    assert not pending and {t["seeds"] for t in tests} == {1}
    by |= cell("mmgcn", 0.3, seeds=(1000,))  # no seed in common: pending again
    assert rb.cold_claim_tests(by, "lfm2k", "rlmmrec", claim)[1] == ["mmgcn"]


def test_robustness_hours_left_take_finished_cells_or_the_floors_epoch(tmp_path, monkeypatch):
    from benchmarks import headline
    from benchmarks import robustness as rb

    floors = tmp_path / "floors.json"
    floors.write_text(json.dumps({"models": {m: {"train_cpu_s": s, "valid_cpu_s": 0.0, "train_s": 9, "valid_s": 9}
                                             for m, s in (("mgcn", 2.0), ("egra", 1.0), ("gume", 4.0))}}))
    monkeypatch.setitem(headline.FLOORS, "d", floors)
    done = [{"dataset": "d", "model": "gume", "family": "robustness", "seconds": s, "epochs_run": 100} for s in (3600, 7200, 5400)]
    done.append({"dataset": "e", "model": "mgcn", "family": "robustness", "seconds": 1, "epochs_run": 300})
    left = [{"dataset": "d", "model": "gume", "family": "robustness"},  # its median cell: 1.5 h
            {"dataset": "d", "model": "egra", "family": "robustness"}]  # 200 epochs of 1 s + 3 MGCN runs of 300 x 2 s
    assert rb.hours_left(left, done, 1000) == {"d": pytest.approx(1.5 + (200 * 1 + 3 * 300 * 2) / 3600)}
    assert rb.hours_left(left[1:], done, 20) == {"d": pytest.approx((20 * 1 + 3 * 20 * 2) / 3600)}  # within the cap
    done[0]["cpu_seconds"] = 1800  # the CPU time a cell used, where recorded, not the wall time it waited
    assert rb.hours_left(left[:1], done, 1000) == {"d": pytest.approx(1.5)}  # median of 1800, 7200, 5400
    done[1]["cpu_seconds"] = 1800
    assert rb.hours_left(left[:1], done, 1000) == {"d": pytest.approx(0.5)}


def test_robustness_cells_train_on_the_device_given_and_record_it(tmp_path, monkeypatch):
    """``--device cuda`` reaches each cell's run (not its recorded settings) and is recorded in the
    cell; the hours left are estimated from CPU cells only."""
    from benchmarks import robustness as rb
    import prismrec.experiment.runs as runs

    seen = []

    def fake_run(config, seeds, run_dir, data_dir, **kw):
        seen.append(config.train.device)
        return {"test": {"recall@20": 0.5}, "valid": {"recall@20": 0.5}, "epochs": 60, "best_epoch": 40}

    monkeypatch.setattr(runs, "run_experiment", fake_run)
    monkeypatch.setattr(rb, "per_user_arrays", lambda *a: {})
    cell = next(c for c in rb.plan(["lfm2k"], [999]) if c["family"] == "robustness" and c["q"] == 0)
    on_gpu = rb.run_cell(cell, tmp_path, 1000, "mean", device="cuda")
    on_cpu = rb.run_cell(cell, tmp_path, 1000, "mean")
    assert seen == ["cuda", "cpu"] and on_gpu["device"] == "cuda" and "device" not in on_cpu
    assert "device" not in on_gpu["settings"]
    assert on_cpu["cpu_seconds"] >= 0  # the cell's CPU time, recorded beside its wall time
    done = [{**on_gpu, "seconds": 60.0, "cpu_seconds": 60.0}, {**on_cpu, "seconds": 3600.0, "cpu_seconds": 3600.0}]
    assert rb.hours_left([cell], done, 1000) == {"lfm2k": pytest.approx(1.0)}
