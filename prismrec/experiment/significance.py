"""Is model A better than model B on the same data? A paired per-user test of two finished runs.

Seed-level mean ± std (the comparison tables) says how much a number moves with the seed; it does
not say whether two models' difference could be chance on this user sample. Here both runs are
evaluated per user on the same split (the analysis of finished runs, never selection), each user's
metric is averaged over the run's seeds (multi-seed run folders), and the per-user differences
``A - B`` are tested: paired t-test, Wilcoxon signed-rank test, and a seeded bootstrap 95 %
interval of the mean difference.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import stats

from prismrec.errors import ConfigError, RunError
from prismrec.eval import Evaluator, check_cut_offs


def per_user_metric(run_dir: str | Path, metric: str, split: str, data_dir=None, datasets=None):
    """``(users, values, description)``: each evaluated user's ``metric`` averaged over the
    run's seeds (a single-seed run folder, or a multi-seed one with ``seed-<s>/`` folders).

    A multi-seed run must be finished: one with unfinished seeds is a :class:`RunError` listing
    them (a mean over the finished seeds only would be another experiment)."""
    from prismrec.experiment.export import finished_runs, load_run

    seeds = finished_runs(Path(run_dir))
    datasets = {} if datasets is None else datasets
    k = int(metric.rpartition("@")[2]) if "@" in metric else 0
    columns, users, description = [], None, None
    for folder in seeds:
        run = load_run(folder, data_dir, datasets)
        check_cut_offs((k,), run.dataset.n_items, run.dataset.name, f"--metric {metric}")
        result = Evaluator(run.dataset, ks=(k,) if k else (20,),
                           mask_valid_at_test=run.config.train.mask_valid_at_test).evaluate(
            run.model, split, per_user=True)
        if metric not in result["per_user"]:
            raise ConfigError(f"unknown metric {metric!r}; use recall@K, ndcg@K, precision@K, map@K or hit@K")
        here = (run.config.model, run.config.dataset, run.train_fingerprint)
        if description is not None and here != description:
            raise RunError(f"{folder} is not a seed of the same model and data as {seeds[0]}")
        description, users = here, result["per_user"]["user"]
        columns.append(result["per_user"][metric])
    return users, np.mean(columns, axis=0), {"model": description[0], "dataset": description[1],
                                              "train_fingerprint": description[2], "seeds": len(seeds)}


PAIRED_TESTS = {"t": "paired t-test", "wilcoxon": "Wilcoxon signed-rank test"}
"""The per-user paired tests by name (``--test``) and as a legend names them."""


def paired_p(a: np.ndarray, b: np.ndarray, test: str = "t") -> float:
    """Two-sided p of the paired ``test`` (:data:`PAIRED_TESTS`) of per-user values ``a`` and
    ``b``; 1.0 where no user differs (both tests are undefined there: nothing to tell apart).
    Wilcoxon drops the users whose difference is zero (``zero_method="wilcox"``)."""
    if test not in PAIRED_TESTS:
        raise ConfigError(f"unknown test {test!r}: use one of {', '.join(PAIRED_TESTS)}")
    if not np.count_nonzero(np.asarray(a) - np.asarray(b)):
        return 1.0
    if test == "t":
        return float(stats.ttest_rel(a, b).pvalue)
    return float(stats.wilcoxon(a, b, zero_method="wilcox").pvalue)


def paired_test(run_a, run_b, metric: str = "recall@20", split: str = "test", data_dir=None,
                n_bootstrap: int = 10_000, seed: int = 0) -> dict:
    """Compare two finished runs on the same dataset and split; see the module docstring."""
    if Path(run_a).resolve() == Path(run_b).resolve():  # a trailing slash, ./, a link: the same folder
        raise RunError(f"--a {run_a} and --b {run_b} are the same run: a run tested against itself differs "
                       "for no user; give the run directories of the two models to compare")
    datasets: dict = {}
    users_a, a, info_a = per_user_metric(run_a, metric, split, data_dir, datasets)
    users_b, b, info_b = per_user_metric(run_b, metric, split, data_dir, datasets)
    # A dataset given by name (planted) or by folder (data/planted) is the same dataset.
    names = [Path(str(info["dataset"])).name for info in (info_a, info_b)]
    if names[0] != names[1] or info_a["train_fingerprint"] != info_b["train_fingerprint"]:
        differs = "train fingerprints differ" if info_a["train_fingerprint"] != info_b["train_fingerprint"] else \
            "datasets of different names"
        raise RunError(
            f"the runs were trained on different data ({info_a['dataset']} vs {info_b['dataset']}, {differs}): "
            "a paired test needs the same users and split"
        )
    if not np.array_equal(users_a, users_b):
        raise RunError("the runs evaluate different users (a different mask_valid_at_test?)")
    diff = a - b
    rng = np.random.default_rng(seed)
    boot = np.empty(n_bootstrap)
    for start in range(0, n_bootstrap, 500):  # 500 resamples at a time: memory n_users x 500
        idx = rng.integers(0, len(diff), size=(min(500, n_bootstrap - start), len(diff)))
        boot[start : start + len(idx)] = diff[idx].mean(axis=1)
    nonzero = np.count_nonzero(diff)
    return {
        "metric": metric, "split": split, "users": int(len(diff)),
        "a": {**info_a, "run": str(run_a), "mean": float(a.mean())},
        "b": {**info_b, "run": str(run_b), "mean": float(b.mean())},
        "mean_difference": float(diff.mean()),
        "bootstrap_95": [float(np.quantile(boot, 0.025)), float(np.quantile(boot, 0.975))],
        "users_differing": int(nonzero),
        "p_paired_t": paired_p(a, b, "t"),
        "p_wilcoxon": paired_p(a, b, "wilcoxon"),
    }


def holm(pvalues: Sequence[float], family: int | None = None) -> np.ndarray:
    """Holm's step-down adjusted p-values of ``pvalues``, in their order: with ``m`` tests sorted
    by p, the ``r``-th smallest (0-based) is adjusted to ``max_{j <= r} min(1, (m - j) p_(j))``;
    it controls the family-wise error rate at any α (reject where the adjusted p is below α).

    ``family`` (at least ``len(pvalues)``): the number of tests the family will hold, those not
    measured yet counting as p = 1; an adjusted p then only falls as they are measured, so a
    significant result read from part of the family stays significant."""
    p = np.asarray(pvalues, dtype=float)
    m = len(p) if family is None else family
    if m < len(p):
        raise ValueError(f"a family of {m} tests cannot hold {len(p)}")
    order = np.argsort(p, kind="stable")
    adjusted = np.empty_like(p)
    adjusted[order] = np.maximum.accumulate(np.minimum(1.0, (float(m) - np.arange(len(p))) * p[order]))
    return adjusted
