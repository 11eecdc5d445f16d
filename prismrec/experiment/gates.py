"""Gate analysis of a trained gated-fusion model (RLMultimodalRec, ALGORITHMS.md §4).

How much does each modality contribute to each item's content vector? Writes, for a finished
single-seed run, ``gates.npy`` (``n_items x M x width`` modality weights of the eval-mode
forward; ``width`` = d for the vector gate, 1 for the scalar gate), ``gates.json`` (mean and std
of each modality's share overall and per item-popularity bucket) and ``gates.png`` (histogram of
the per-item shares, and their distribution per popularity bucket).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from prismrec.errors import RunError
from prismrec.eval.groups import item_degrees, popularity_buckets
from prismrec.experiment.export import load_run


def gate_analysis(run_dir: str | Path, out_dir: str | Path | None = None, data_dir=None, n_buckets: int = 4) -> dict:
    """Write ``gates.npy``, ``gates.json`` and ``gates.png`` for ``run_dir``; return the summary."""
    run = load_run(run_dir, data_dir)
    with torch.no_grad():
        gate = run.model().aux.get("gate")
    if gate is None:
        raise RunError(
            f"run {run_dir} ({run.config.model}) has no learned gate: gate analysis needs "
            "rlmmrec with fusion=gate and at least two modalities"
        )
    weights = gate.cpu().numpy()
    share = weights.mean(axis=2)  # n_items x M: each modality's share of an item's content
    modalities = list(run.model.modalities)
    bucket, labels = popularity_buckets(item_degrees(run.dataset.train), n_buckets)
    summary = {
        "run_dir": str(Path(run_dir).resolve()),
        "modalities": modalities,
        "gate": run.config.params.gate,
        "overall": {m: {"mean": float(share[:, k].mean()), "std": float(share[:, k].std())} for k, m in enumerate(modalities)},
        "by_popularity": {
            label: {m: float(share[bucket == b, k].mean()) for k, m in enumerate(modalities)} | {"items": int((bucket == b).sum())}
            for b, label in enumerate(labels)
        },
    }
    out = Path(out_dir) if out_dir is not None else Path(run_dir) / "gates"
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "gates.npy", weights.astype(np.float32))
    (out / "gates.json").write_text(json.dumps(summary, indent=2))
    _plot(share, bucket, labels, modalities, out / "gates.png")
    return summary


def _plot(share: np.ndarray, bucket: np.ndarray, labels: list[str], modalities: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    bins = np.linspace(0, 1, 41)
    for k, m in enumerate(modalities):
        left.hist(share[:, k], bins=bins, alpha=0.6, label=m)
    left.set(title="per-item modality share (all items)", xlabel="gate weight (mean over dims)", ylabel="items")
    left.legend()
    width = 0.8 / len(modalities)
    for k, m in enumerate(modalities):
        data = [share[bucket == b, k] for b in range(len(labels))]
        positions = np.arange(len(labels)) + (k - (len(modalities) - 1) / 2) * width
        right.boxplot(data, positions=positions, widths=width * 0.9, showfliers=False,
                      patch_artist=True, boxprops={"facecolor": f"C{k}", "alpha": 0.6})
    right.set_xticks(np.arange(len(labels)), labels, rotation=15, fontsize=8)
    right.set(title="modality share by item popularity", ylabel="gate weight", ylim=(0, 1))
    right.legend(handles=[plt.Rectangle((0, 0), 1, 1, color=f"C{k}", alpha=0.6) for k in range(len(modalities))],
                 labels=modalities)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
