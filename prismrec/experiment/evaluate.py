"""Re-evaluate a finished run, overall and per item group (e.g. the long tail, ALGORITHMS.md 6.6).

The run is rebuilt with :func:`prismrec.experiment.export.load_run` (best-validation weights,
train split checked against the recorded fingerprint); one eval-mode forward serves every group.
This is analysis of a finished run, never model selection.

Modes ``cold`` and ``all`` evaluate a cold-item dataset (``prismrec split-cold``,
``prismrec build --cold-items``): the split's cold items ranked among themselves (``cold``) or
among all items (``all``), with their rows scored from content (:mod:`prismrec.coldstart`,
``strategy``), next to the model's own rows (``native``) and the popularity and random references.
"""

from __future__ import annotations

from pathlib import Path

from prismrec.errors import ConfigError
from prismrec.eval import Evaluator, check_cut_offs, evaluate_cold, popularity_groups
from prismrec.experiment.rundir import write_json

GROUPINGS = ("none", "popularity")
MODES = ("warm", "cold", "all")


def evaluate_run(
    run_dir: str | Path,
    split: str = "test",
    grouping: str = "popularity",
    tail_share: float = 0.8,
    ks=(10, 20),
    mask_valid_at_test: bool = False,
    data_dir=None,
    datasets: dict | None = None,
    mode: str = "warm",
    strategy: str = "auto",
    id_rows: str = "model",
) -> dict:
    """``{"all": metrics, "tail": ..., "head": ...}`` of a single-seed run on ``split``.

    ``grouping="popularity"``: ``tail`` = the least popular ``tail_share`` of items by training
    degree, ``head`` the rest; each group's metrics count only its items' positives (all items
    are ranked) over the users with at least one of them. ``"none"``: only ``all``.
    Only a finished, self-consistent run is evaluated (else :class:`~prismrec.errors.RunError`).

    ``mode="cold"`` / ``"all"`` (a cold-item dataset): see :func:`cold_metrics`; the result is
    written to ``evaluation-<split>-<mode>.json`` and ``grouping`` is not used.
    """
    from prismrec.experiment.export import load_run

    if grouping not in GROUPINGS:
        raise ConfigError(f"grouping must be one of {list(GROUPINGS)}, got {grouping!r}")
    if mode not in MODES:
        raise ConfigError(f"--mode {mode!r}: choose one of {', '.join(MODES)}")
    run = load_run(run_dir, data_dir, datasets)
    check_cut_offs(ks, run.dataset.n_items, run.dataset.name, f"--ks {','.join(map(str, ks))}")
    evaluator = Evaluator(run.dataset, ks=ks, mask_valid_at_test=mask_valid_at_test)
    out = run.model()
    if mode != "warm":
        result = cold_metrics(run.model, out, evaluator, split, mode, strategy, id_rows=id_rows)
        result["meta"] = {"run": str(run_dir), "model": run.config.model, "dataset": run.config.dataset,
                          "split": split, "mode": mode, "mask_valid_at_test": mask_valid_at_test,
                          **result.pop("meta")}
        write_json(Path(run_dir, f"evaluation-{split}-{mode}.json"), result)
        return result
    groups = popularity_groups(run.dataset.train, tail_share) if grouping == "popularity" else {}
    result = {"all": evaluator.evaluate(run.model, split, out)}
    for name, items in groups.items():
        result[name] = evaluator.evaluate(run.model, split, out, items=items) | {"items": int(len(items))}
    result["meta"] = {"run": str(run_dir), "model": run.config.model, "dataset": run.config.dataset,
                      "split": split, "grouping": grouping, "tail_share": tail_share,
                      "mask_valid_at_test": mask_valid_at_test}
    write_json(Path(run_dir, f"evaluation-{split}.json"), result)
    return result


def cold_metrics(model, out, evaluator: Evaluator, split: str, mode: str, strategy: str = "auto",
                 reference_seed: int = 0, id_rows: str = "model") -> dict:
    """Cold-item metrics of one trained model on ``split`` in ``mode`` (``cold`` or ``all``).

    Rows: ``model`` (cold items scored by ``strategy``, :func:`prismrec.coldstart.cold_item_embeddings`),
    ``native`` (the model's own rows, as trained; left out when the strategy is ``native``),
    ``popularity`` and ``random`` (:func:`prismrec.coldstart.reference_scores`). ``meta`` records
    the strategy actually used and the cold item count. ``id_rows`` (``model``, ``zero`` or
    ``impute``) is what a model's own content path puts in a cold item's ID row
    (:class:`prismrec.coldstart.ColdStartConfig`).
    """
    from prismrec.coldstart import ColdStartConfig, cold_item_embeddings, reference_scores

    dataset = evaluator.dataset
    cold = dataset.cold(split)
    if not len(cold):
        raise ConfigError(f"dataset {dataset.name!r} has no cold items in {split}: evaluate --mode {mode} needs a "
                          "cold-item dataset (prismrec split-cold DATASET --fraction 0.1 --out NAME, then train on it)")
    scored, record = cold_item_embeddings(model, out, dataset, ColdStartConfig(strategy=strategy, id_rows=id_rows))
    result = {"model": evaluator.evaluate_cold(model, split, scored, mode)}
    if record["strategy"] != "native":
        result["native"] = evaluator.evaluate_cold(model, split, out, mode)
    for kind in ("popularity", "random"):
        result[kind] = evaluate_cold(reference_scores(kind, dataset, reference_seed), dataset.split(split),
                                     evaluator.exclude(split), cold, mode, ks=evaluator.ks,
                                     batch_size=evaluator.batch_size)
    result["meta"] = {"strategy": record["strategy"], "requested_strategy": strategy, "id_rows": id_rows,
                      "cold_items": int(len(cold))}
    return result
