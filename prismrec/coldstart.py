"""Inductive scoring of cold items: representing an item from its content alone.

A cold item (no training interaction; :mod:`prismrec.data.derive`) has an ID embedding that never
learned anything, so its row of a model's final item representations ``Z_I`` is noise (BPR-MF,
LightGCN) or a mix of noise and whatever its modality branch adds. :func:`cold_item_embeddings`
replaces the rows of every item without training interactions by a content-derived vector in
the same space, chosen by :class:`ColdStartConfig.strategy`:

* ``native``: keep the model's own rows (its forward output as trained; for graph models with an
  item-item kNN graph, the cold item already receives its content neighbours' messages).
* ``hook``: the model's own content-only path, :meth:`Recommender.content_item_embeddings`
  (each multimodal model documents its path: ``prismrec.nn.content`` and the model's
  ``content_item_embeddings``); an error where it returns ``None``. ``id_rows`` chooses what
  that path does with the cold items' untrained ID rows: ``zero`` (removed), ``impute`` (the
  mean of their warm neighbours' rows on a feature graph), ``model`` (the model's default).
* ``map``: a ridge regression ``W`` from content ``x_i`` to ``z_i``, fitted on the warm items in
  closed form (``min ||X_w W - Z_w||² + λ||W||²`` on centred data, intercept = the means;
  ``λ = ridge · trace(X_wᵀX_w) / dims``, so ``ridge`` does not depend on the feature scale), then
  ``z_c = x_c W``.
* ``knn``: ``z_c`` = the mean of ``z_j`` over the cold item's ``k`` nearest warm items by content
  cosine (blocked, ``O(n · k)`` memory).
* ``auto``: ``hook`` where the model provides one, else ``knn``.

Content ``x_i`` is the concatenation of the item's L2-normalised modality vectors (the model's
own modalities, else all of the dataset's), so its cosine is the mean of the per-modality
cosines. ID-only models (BPR, LightGCN) score cold items with ``native`` in the reference
tables, next to the popularity and random references (:func:`reference_scores`), so the gain
of content is visible; ``map``/``knn`` on them measure content added after training.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from prismrec.data.features import nearest_rows, unit_rows
from prismrec.errors import ConfigError
from prismrec.eval.groups import item_degrees
from prismrec.recommender import Output, Recommender

STRATEGIES = ("auto", "native", "hook", "map", "knn")
ID_ROW_CHOICES = ("model", "zero", "impute")
REFERENCES = ("popularity", "random", "order")


@dataclass
class ColdStartConfig:
    """How cold items are represented at scoring time (see the module docstring)."""

    strategy: str = "auto"
    """``auto`` (the model's hook, else ``knn``), ``native``, ``hook``, ``map`` or ``knn``."""
    knn_k: int = 10
    """``k`` warm neighbours averaged by ``knn``."""
    ridge: float = 1.0
    """Relative ridge strength of ``map``: ``λ = ridge · trace(X_wᵀX_w) / dims``."""
    modalities: list[str] | None = None
    """Content used by ``map``/``knn``; ``None`` = the model's modalities, else all the dataset's."""
    id_rows: str = "model"
    """``hook``: the cold items' ID rows ``zero``ed or ``impute``d from feature-graph neighbours,
    or the ``model``'s documented default (:attr:`Recommender.content_id_rows`)."""

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"--strategy {self.strategy!r}: choose one of {', '.join(STRATEGIES)}")
        if self.id_rows not in ID_ROW_CHOICES:
            raise ConfigError(f"--id-rows {self.id_rows!r}: choose one of {', '.join(ID_ROW_CHOICES)}")
        if isinstance(self.knn_k, bool) or not isinstance(self.knn_k, int) or self.knn_k < 1:
            raise ConfigError(f"cold-start knn_k must be a positive whole number, got {self.knn_k!r}")
        if not self.ridge > 0:
            raise ConfigError(f"cold-start ridge must be positive, got {self.ridge!r}")


def is_multimodal(model: Recommender) -> bool:
    """Whether ``model`` reads item features (it declares non-empty ``modalities``)."""
    return bool(getattr(model, "modalities", None))


def content_matrix(dataset, modalities: list[str] | None = None) -> np.ndarray:
    """``n_items x Σ d_m`` float32: each modality's rows L2-normalised, concatenated."""
    names = list(dataset.features) if modalities is None else list(modalities)
    missing = [m for m in names if m not in dataset.features]
    if missing or not names:
        raise ConfigError(f"cold-item content needs modality features ({', '.join(missing) or 'none given'}); "
                          f"dataset {dataset.name!r} has {', '.join(dataset.features) or 'none'}")
    return np.concatenate([unit_rows(dataset.features[m].numpy()) for m in names], axis=1)


def ridge_map(x_warm: np.ndarray, z_warm: np.ndarray, x_new: np.ndarray, ridge: float = 1.0) -> np.ndarray:
    """Closed-form ridge regression with intercept from ``x_warm`` to ``z_warm``, applied to ``x_new``.

    ``λ = ridge · trace(XᵀX) / dims`` on the centred warm features; solved in the primal
    (``dims x dims``) or the dual (``n x n``) form, whichever is smaller. Float64.
    """
    x = np.asarray(x_warm, dtype=np.float64)
    z = np.asarray(z_warm, dtype=np.float64)
    mu_x, mu_z = x.mean(axis=0), z.mean(axis=0)
    xc, zc = x - mu_x, z - mu_z
    lam = ridge * max(float((xc * xc).sum()) / xc.shape[1], 1e-12)
    q = np.asarray(x_new, dtype=np.float64) - mu_x
    if xc.shape[1] <= xc.shape[0]:
        w = np.linalg.solve(xc.T @ xc + lam * np.eye(xc.shape[1]), xc.T @ zc)
        return (q @ w + mu_z).astype(np.float32)
    alpha = np.linalg.solve(xc @ xc.T + lam * np.eye(xc.shape[0]), zc)
    return ((q @ xc.T) @ alpha + mu_z).astype(np.float32)


def knn_mean(x_warm: np.ndarray, z_warm: np.ndarray, x_new: np.ndarray, k: int = 10) -> np.ndarray:
    """Mean of ``z_warm`` over each ``x_new`` row's ``k`` most cosine-similar ``x_warm`` rows."""
    neighbours = nearest_rows(x_new, x_warm, k)
    return np.asarray(z_warm, dtype=np.float32)[neighbours].mean(axis=1)


def resolve_strategy(model: Recommender, out: Output, strategy: str, items: torch.Tensor,
                     id_rows: str = "model") -> tuple[str, torch.Tensor | None]:
    """The concrete strategy ``auto`` stands for, and the hook's rows when it is used."""
    if strategy not in ("auto", "hook"):
        return strategy, None
    rows = model.content_item_embeddings(items, out, id_rows=None if id_rows == "model" else id_rows)
    if rows is not None:
        return "hook", rows
    if strategy == "hook":
        raise ConfigError(f"model {model.name!r} has no content-only path (content_item_embeddings returns "
                          "None); use --strategy map or knn")
    return "knn", None


@torch.no_grad()
def cold_item_embeddings(model: Recommender, out: Output, dataset,
                         config: ColdStartConfig | None = None) -> tuple[Output, dict]:
    """``out`` with the item rows of every item without training interactions replaced by the
    strategy's content-derived rows, and a record ``{"strategy", "items", ...}``.

    Warm rows, user rows and ``aux`` are unchanged; ``model.score`` then ranks with them.
    """
    config = config or ColdStartConfig()
    degree = item_degrees(dataset.train)
    cold = np.flatnonzero(degree == 0)
    warm = np.flatnonzero(degree > 0)
    cold_t = torch.from_numpy(cold).to(out.item.device)
    strategy, rows = resolve_strategy(model, out, config.strategy, cold_t, config.id_rows) if len(cold) else (
        config.strategy, None)
    record = {"strategy": strategy, "requested": config.strategy, "items": int(len(cold))}
    if strategy == "hook":
        record["id_rows"] = model.content_id_rows if config.id_rows == "model" else config.id_rows
    if strategy == "native" or not len(cold):
        return out, record
    if rows is None:
        modalities = config.modalities or (list(model.modalities) if is_multimodal(model) else None)
        x = content_matrix(dataset, modalities)
        z = out.item.detach().cpu().numpy()
        if strategy == "map":
            new = ridge_map(x[warm], z[warm], x[cold], config.ridge)
            record["ridge"] = config.ridge
        else:
            new = knn_mean(x[warm], z[warm], x[cold], config.knn_k)
            record["knn_k"] = config.knn_k
        rows = torch.from_numpy(new)
        record["modalities"] = modalities or list(dataset.features)
    item = out.item.clone()
    item[cold_t] = rows.to(item.device, item.dtype)
    return Output(out.user, item, out.aux), record


def reference_scores(kind: str, dataset, seed: int = 0):
    """A ``users -> B x n_items`` score function of a reference ranking.

    ``popularity``: the item's training degree, ties (every cold item has degree 0) in the random
    order below, not by id: item ids often follow popularity or time (lfm2k's do), and a tie broken
    by id would smuggle that order in. ``random``: a fixed pseudo-random score per (user, item)
    pair from an integer hash of ``(seed, user, item)``, so it does not depend on how users are
    batched. ``order``: one pseudo-random item order shared by every user (a hash of
    ``(seed, item)``): what untrained ID rows amount to, since users' embeddings share a common
    direction and so rank random item vectors in much the same order. Its mean equals
    ``random``'s, but one draw varies far more with item popularity: compare an ID-only model's
    cold rows with the spread of ``order`` over seeds (:func:`fixed_order_spread`).
    """
    if kind == "popularity":
        degree = torch.from_numpy(item_degrees(dataset.train).astype(np.float64))
        noise = reference_scores("random", dataset, seed)
        # Degrees are integers and the noise lies in [0, 0.5): it only orders equal degrees.
        return lambda users: (degree.to(users.device) + noise(users).to(torch.float64) / 2**25).to(torch.float32)
    if kind in ("random", "order"):
        items = torch.arange(dataset.n_items, dtype=torch.int64)

        def scores(users: torch.Tensor) -> torch.Tensor:
            u = users.to(torch.int64).cpu().unsqueeze(1) * (kind == "random")
            h = (u * 1_000_003 + items.unsqueeze(0) + int(seed) * 7_919) * 6364136223846793005 + 1442695040888963407
            h = h ^ (h >> 29)
            h = h * 2862933555777941757 + 3037000493  # int64 arithmetic wraps: a cheap mixing hash
            return ((h >> 40) & 0xFFFFFF).to(torch.float32).to(users.device)

        return scores
    raise ConfigError(f"reference must be one of {', '.join(REFERENCES)}, got {kind!r}")


def fixed_order_spread(dataset, split: str, mode: str, seeds: int = 100, ks=(10, 20)) -> dict:
    """Median and 5 % / 95 % quantiles, over ``seeds`` draws of the ``order`` reference, of each
    cold-item metric: the range an ID-only model's untrained cold rows fall in by chance."""
    from prismrec.eval import evaluate_cold

    exclude = dataset.train
    runs = [evaluate_cold(reference_scores("order", dataset, s), dataset.split(split), exclude,
                          dataset.cold(split), mode, ks=ks) for s in range(seeds)]
    keys = [k for k in runs[0] if "@" in k]
    return {k: {"median": float(np.median([r[k] for r in runs])), "q05": float(np.quantile([r[k] for r in runs], 0.05)),
                "q95": float(np.quantile([r[k] for r in runs], 0.95))} for k in keys} | {"draws": seeds}
