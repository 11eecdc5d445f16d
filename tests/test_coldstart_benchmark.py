"""benchmarks/coldstart.py: its tables from cell records (no training)."""

from benchmarks.coldstart import CELL_VERSION, report, settings


def metrics(r):
    return {"recall@10": r / 2, "recall@20": r, "ndcg@10": r / 3, "ndcg@20": r / 2, "users": 7, "items": 5}


def cell(model, own_id_rows=None):
    scores = {"native": metrics(0.1), "map": metrics(0.5), "knn": metrics(0.6)}
    if model != "lightgcn":
        scores["own"] = metrics(0.7)
    if own_id_rows:
        scores["own:zero"], scores["own:impute"] = metrics(0.65), metrics(0.7)
    return {"dataset": "lfm2k", "model": model, "seed": 999, "epochs_cap": 20, "best_epoch": 19,
            "version": CELL_VERSION, "own_id_rows": own_id_rows, "cold": scores, "all": scores,
            "valid_cold": scores}


def test_report_tables_and_left_cells():
    refs = {"lfm2k": {mode: {"popularity": metrics(0.2), "random": metrics(0.25)} for mode in ("cold", "all")}}
    spread = {"recall@20": {"median": 0.3, "q05": 0.1, "q95": 0.5}, "draws": 100}
    refs["lfm2k"]["fixed_order"] = {"cold": spread, "all": spread}
    cells = [cell("lightgcn"), cell("freedom", "impute"), cell("dragon")]
    summary, md = report(cells, refs, ["lfm2k__lightgcn__seed-999", "lfm2k__freedom__seed-999",
                                       "lfm2k__dragon__seed-999", "tiktok__freedom__seed-999"])
    assert summary["left"] == ["tiktok__freedom__seed-999"]
    assert "| lightgcn (ID only) | (no content) | 0.5000 / 0.2500 | 0.6000 / 0.3000 | 0.1000 / 0.0500 |" in md
    assert "| freedom | 0.7000 / 0.3500 |" in md and "| random reference | 0.2500 / 0.1250 |" in md
    assert "| one fixed item order: R@20 median [5 %, 95 %] of 100 draws | 0.3000 [0.1000, 0.5000] |" in md
    assert "| freedom | impute | 0.6500 | 0.7000 | 0.6500 | 0.7000 |" in md  # zero vs impute table
    assert "| dragon |" in md.split("Content path's ID rows")[0] and "| dragon | " not in md.split("ID rows")[1]
    assert summary["tables"]["lfm2k"]["freedom"]["id_rows"]["valid_cold"] == {"zero": 0.65, "impute": 0.7}


def test_settings_add_what_roles_by_name_require():
    assert settings("dragon", "tiktok", 20)["mm_weights"] == [0.5, 0.5]
    assert settings("freedom", "lfm2k", 20)["modalities"] == ["text", "audio"]
    assert settings("lightgcn", "lfm2k", 5) == {"epochs": 5, "threads": 1}
