"""Re-evaluate a finished run, overall and per item group (e.g. the long tail, ALGORITHMS.md 6.6).

The run is rebuilt with :func:`prismrec.experiment.export.load_run` (best-validation weights,
train split checked against the recorded fingerprint); one eval-mode forward serves every group.
This is analysis of a finished run, never model selection.
"""

from __future__ import annotations

from pathlib import Path

from prismrec.errors import ConfigError
from prismrec.eval import Evaluator, popularity_groups
from prismrec.experiment.rundir import write_json

GROUPINGS = ("none", "popularity")


def evaluate_run(
    run_dir: str | Path,
    split: str = "test",
    grouping: str = "popularity",
    tail_share: float = 0.8,
    ks=(10, 20),
    mask_valid_at_test: bool = False,
    data_dir=None,
    datasets: dict | None = None,
) -> dict:
    """``{"all": metrics, "tail": ..., "head": ...}`` of a single-seed run on ``split``.

    ``grouping="popularity"``: ``tail`` = the least popular ``tail_share`` of items by training
    degree, ``head`` the rest; each group's metrics count only its items' positives (all items
    are ranked) over the users with at least one of them. ``"none"``: only ``all``.
    Only a finished, self-consistent run is evaluated (else :class:`~prismrec.errors.RunError`).
    """
    from prismrec.experiment.export import load_run

    if grouping not in GROUPINGS:
        raise ConfigError(f"grouping must be one of {list(GROUPINGS)}, got {grouping!r}")
    run = load_run(run_dir, data_dir, datasets)
    evaluator = Evaluator(run.dataset, ks=ks, mask_valid_at_test=mask_valid_at_test)
    out = run.model()
    groups = popularity_groups(run.dataset.train, tail_share) if grouping == "popularity" else {}
    result = {"all": evaluator.evaluate(run.model, split, out)}
    for name, items in groups.items():
        result[name] = evaluator.evaluate(run.model, split, out, items=items) | {"items": int(len(items))}
    result["meta"] = {"run": str(run_dir), "model": run.config.model, "dataset": run.config.dataset,
                      "split": split, "grouping": grouping, "tail_share": tail_share,
                      "mask_valid_at_test": mask_valid_at_test}
    write_json(Path(run_dir, f"evaluation-{split}.json"), result)
    return result
