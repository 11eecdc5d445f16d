"""Registry-wide equivalence: every model trains to the recorded numbers on a fixed seed.

Each case trains one model for 2 epochs on the first 150 users of ml100k (two modalities: text,
genre; batches of 1024) with seed 7 and one CPU thread, and compares every epoch's loss terms and validation metrics with
``tests/data/equivalence.json`` (relative tolerance 1e-6). A refactoring that keeps behaviour
keeps these numbers; a change that alters a model on purpose re-records the goldens of that
model only, and says so in its commit:

    python tests/test_equivalence.py                 # every case
    python tests/test_equivalence.py siger egra      # only the cases whose name starts so

(run from the repository root, with the real datasets at ``../shared/data``). Every registered
model needs a case here.
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

GOLDENS = Path(__file__).parent / "data" / "equivalence.json"
DATASET = "ml100k"
N_USERS = 150
SMALL = "ml100k_small"
SEED = 7

# name -> (model, settings). The variants exercise the branches a refactoring is most likely to
# break: SIGER's extended branch, noise inside the propagation and A3 anchors; EGRA on GUME.
CASES: dict[str, tuple[str, dict]] = {
    "bpr": ("bpr", {}),
    "lightgcn": ("lightgcn", {}),
    "vbpr": ("vbpr", {}),
    "freedom": ("freedom", {"mm_weights": [0.1, 0.9]}),  # ml100k's text + genre have no image/text roles
    "rlmmrec": ("rlmmrec", {}),
    "mgcn": ("mgcn", {}),
    "gume": ("gume", {}),
    "siger": ("siger", {}),
    "siger-variants": (
        "siger",
        {"extended_branch": True, "perturb_at": "layers", "perturb_target": "per_modality", "anchor_form": "A3"},
    ),
    "egra": ("egra", {"pretrained": "auto", "pretrain_epochs": 1}),
    "egra-gume": ("egra", {"pretrained": "auto", "pretrain_epochs": 1, "backbone": "gume"}),
    "egra-separate": ("egra", {"item_links": "raw", "graph_fusion": "separate"}),
    # the baselines added later (ml100k's text + genre have no image/text roles by name: the cases
    # give text the image part and genre the text part, as the goldens were recorded)
    "lattice": ("lattice", {}),
    "bm3": ("bm3", {}),
    "lgmrec": ("lgmrec", {"hcl_order": ["text", "genre"]}),
    "mmgcn": ("mmgcn", {"modality_roles": ["image", "text"]}),
    "dragon": ("dragon", {"mm_weights": [0.1, 0.9]}),
    "smore": ("smore", {"modality_roles": ["image", "text"]}),
    "damrs": ("damrs", {}),
}


def train_case(model: str, settings: dict, dataset, cache: Path) -> list[dict]:
    """Train one case; return each epoch's loss terms and validation metrics."""
    from prismrec.eval import Evaluator
    from prismrec.experiment.config import resolve_config
    from prismrec.experiment.stages import build_model
    from prismrec.train.trainer import fit, seed_everything

    extra = {"pretrain_cache": str(cache)} if model == "egra" else {}
    protocol = {"epochs": 2, "seed": SEED, "threads": 1, "batch_size": 1024, "topk": [10, 20]}
    config = resolve_config(model, dataset.name, {**protocol, **settings, **extra})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        seed_everything(config.train.seed)
        net = build_model(config, dataset)
        evaluator = Evaluator(dataset, ks=config.train.topk)
        result = fit(net, dataset, config.train, evaluator=evaluator, progress=False)
    finally:
        torch.set_num_threads(threads)
    keep = ("loss", "valid_", "lambda_t")
    return [{k: float(v) for k, v in row.items() if k.startswith(keep)} for row in result.history]


def write_small_ml100k(folder: Path) -> Path | None:
    """The first ``N_USERS`` users of ml100k with the items they touch (ids made contiguous, feature
    rows kept in item order) as an MMRec folder ``folder/ml100k_small``; None if ml100k is absent."""
    sys.path.insert(0, str(Path(__file__).parent))
    from conftest import shared_data_dir

    root = shared_data_dir()
    source = root / DATASET if root is not None else None
    if source is None or not (source / f"{DATASET}.inter").is_file():
        return None
    inter = pd.read_csv(source / f"{DATASET}.inter", sep="\t")
    inter = inter[inter["userID"] < N_USERS]
    items = np.unique(inter["itemID"].to_numpy())
    inter = inter.assign(itemID=np.searchsorted(items, inter["itemID"].to_numpy()))
    out = folder / SMALL
    out.mkdir(parents=True, exist_ok=True)
    inter.to_csv(out / f"{SMALL}.inter", sep="\t", index=False)
    for feature in sorted(source.glob("*_feat.npy")):
        np.save(out / feature.name, np.load(feature)[items])
    return out


@pytest.fixture(scope="module")
def ml100k(tmp_path_factory):
    from prismrec.data import load_dataset

    folder = write_small_ml100k(tmp_path_factory.mktemp("data"))
    if folder is None:
        pytest.skip("real MMRec data (../shared/data/ml100k) is not available on this machine")
    return load_dataset(folder)


@pytest.fixture(scope="module")
def goldens() -> dict:
    return json.loads(GOLDENS.read_text())


def _registered() -> list[str]:
    from prismrec.models import MODELS

    return sorted(MODELS)


def test_every_registered_model_has_a_golden(goldens):
    covered = {goldens[name]["model"] for name in goldens}
    assert set(goldens) == set(CASES)
    assert set(_registered()) <= covered, f"no golden for {sorted(set(_registered()) - covered)}"


@pytest.mark.parametrize("case", sorted(CASES))
def test_model_trains_to_its_golden_numbers(case, ml100k, goldens, tmp_path):
    from prismrec.models import MODELS

    model, settings = CASES[case]
    if model not in MODELS:
        pytest.skip(f"model {model!r} is not registered")
    history = train_case(model, settings, ml100k, tmp_path)
    expected = goldens[case]["history"]
    assert len(history) == len(expected)
    for epoch, (got, want) in enumerate(zip(history, expected)):
        assert set(got) == set(want), f"{case} epoch {epoch}: logged keys differ"
        for key, value in want.items():
            assert math.isclose(got[key], value, rel_tol=1e-6, abs_tol=1e-9), (
                f"{case} epoch {epoch} {key}: {got[key]!r} != golden {value!r}"
            )


def main(prefixes: list[str]) -> None:
    """Re-record the goldens of the cases whose names start with one of ``prefixes`` (all if none)."""
    from prismrec.data import load_dataset

    data = tempfile.TemporaryDirectory()
    folder = write_small_ml100k(Path(data.name))
    if folder is None:
        raise SystemExit(f"dataset {DATASET} not found next to the repository (../shared/data)")
    dataset = load_dataset(folder)
    goldens = json.loads(GOLDENS.read_text()) if GOLDENS.is_file() else {}
    for name, (model, settings) in CASES.items():
        if prefixes and not name.startswith(tuple(prefixes)):
            continue
        with tempfile.TemporaryDirectory() as cache:
            goldens[name] = {"model": model, "settings": settings,
                             "history": train_case(model, settings, dataset, Path(cache))}
        print(name, goldens[name]["history"][-1].get("valid_recall@20"))
    GOLDENS.parent.mkdir(parents=True, exist_ok=True)
    GOLDENS.write_text(json.dumps(dict(sorted(goldens.items())), indent=1) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
