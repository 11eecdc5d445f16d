"""One-node BPR and ``emb_norm`` terms against plain autograd's, in the same process.

``losses.bpr_loss`` and ``losses.emb_norm`` are single autograd nodes whose values and gradients
are bit-identical to the plain autograd expressions they replace (tests/test_losses.py). This
measures what that saves per training batch (forward, backward and fused-Adam step, as the
trainer runs it) for the models whose batch kernels are tiny (BPR, VBPR; LightGCN as a model
whose propagation dominates): every batch of an epoch is run once with each form, back to back,
the order alternating from batch to batch, so both forms see the same machine load. Since BPR-MF's
and VBPR's two terms became one node (``losses.bpr_terms``; ``benchmarks/fused_nodes.py``
measures that step; equal to these forms up to float rounding since its shorter backward,
tests/test_bpr_terms.py), "one node" is that node for them. Medians of
the per-batch milliseconds over ``--epochs`` epochs (after a warm-up epoch), the 1-minute load
recorded. Writes ``results/loss_nodes.{json,md}``.

    python -m benchmarks.loss_nodes [--datasets tiktok,lfm2k] [--models bpr,vbpr,lightgcn] [--epochs 2]
"""

from __future__ import annotations

import contextlib
import importlib
import os
import statistics
import time

import prismrec  # noqa: F401  (sets the OpenMP wait policy before torch loads)
import torch
import torch.nn.functional as F

from benchmarks.common import per_model_main
from benchmarks.floors import training_setup
from prismrec import losses


def autograd_bpr(user, pos, neg):
    """``bpr_loss`` as plain autograd records it (eight nodes)."""
    diff = (user * pos).sum(dim=1) - (user * neg).sum(dim=1)
    return F.softplus(-diff).mean()


def autograd_emb_norm(*rows):
    """``emb_norm`` in one process as plain autograd records it (a node per norm, sum, division)."""
    return sum(torch.linalg.norm(x) for x in rows) / rows[0].shape[0]


def autograd_bpr_terms(zu, zij, reg_weight):
    """BPR-MF's and VBPR's two terms (``losses.bpr_terms``, one node since) as plain autograd."""
    zi, zj = zij.chunk(2)
    return autograd_bpr(zu, zi, zj), reg_weight * autograd_emb_norm(zu, zi, zj)


@contextlib.contextmanager
def plain_autograd(model):
    """Within: ``model``'s module, ``l2_reg`` and BPR-MF's / VBPR's fused terms use the plain
    autograd forms."""
    module = importlib.import_module(type(model).__module__)
    saved = {a: getattr(module, a) for a in ("bpr_loss", "emb_norm") if hasattr(module, a)}
    form = losses.REG_FORMS["emb_norm"]
    fused = losses._BPRTerms.apply
    refs = {"bpr_loss": autograd_bpr, "emb_norm": autograd_emb_norm}
    try:
        for attr in saved:
            setattr(module, attr, refs[attr])
        losses.REG_FORMS["emb_norm"] = autograd_emb_norm
        losses._BPRTerms.apply = autograd_bpr_terms
        yield
    finally:
        for attr, fn in saved.items():
            setattr(module, attr, fn)
        losses.REG_FORMS["emb_norm"] = form
        losses._BPRTerms.apply = fused


def step_s(model, optimizer, batch) -> float:
    """Seconds of one training step as the trainer runs it (forward, backward, optimiser step)."""
    t0 = time.perf_counter()
    terms = model.batch_loss(batch)
    total = sum(terms.values())
    torch.stack([v.detach() for v in terms.values()])  # the trainer's logged terms
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    optimizer.step()
    return time.perf_counter() - t0


def measure(name: str, data, epochs: int) -> dict:
    """Per-batch milliseconds with each form, batch by batch in alternating order (medians)."""
    model, _, sampler, optimizer = training_setup(name, data)
    times: dict[str, list[float]] = {"one_node": [], "autograd": []}
    loads = []
    for epoch in range(epochs + 1):  # epoch 0: warm-up, not kept
        model.on_epoch_start(epoch)
        for b, batch in enumerate(sampler.epoch()):
            order = ("one_node", "autograd") if b % 2 == 0 else ("autograd", "one_node")
            for form in order:
                with plain_autograd(model) if form == "autograd" else contextlib.nullcontext():
                    seconds = step_s(model, optimizer, batch)
                if epoch:
                    times[form].append(seconds)
        loads.append(os.getloadavg()[0])
    one, ref = (statistics.median(times[k]) * 1000 for k in ("one_node", "autograd"))
    return {"one_node_ms": one, "autograd_ms": ref, "saved_ms": ref - one, "speedup": ref / one,
            "one_node_epoch_ms": sum(times["one_node"]) * 1000 / epochs,
            "autograd_epoch_ms": sum(times["autograd"]) * 1000 / epochs,
            "batches": len(times["one_node"]) // epochs, "epochs": epochs,
            "load1": [min(loads), max(loads)]}


def markdown(res: dict) -> str:
    lines = ["# One-node BPR / emb_norm terms vs plain autograd, per training batch", "",
             f"{res['machine']}; {res['threads']} thread(s); {res['date']}.", "",
             "| dataset | model | autograd ms | one node ms | saved ms | speed-up | epoch ms (autograd / one node) "
             "| batches x epochs | 1-min load |", "|---|---|---|---|---|---|---|---|---|"]
    for key, r in res["rows"].items():
        dataset, model = key.split("/")
        lines.append(f"| {dataset} | {model} | {r['autograd_ms']:.2f} | {r['one_node_ms']:.2f} | "
                     f"{r['saved_ms']:.2f} | {r['speedup']:.3f}x | {r['autograd_epoch_ms']:.0f} / "
                     f"{r['one_node_epoch_ms']:.0f} | {r['batches']} x {r['epochs']} | "
                     f"{r['load1'][0]:.1f}-{r['load1'][1]:.1f} |")
    lines += ["", "Per batch: forward, backward and fused-Adam step as the trainer runs them, median over "
              "every batch of the measured epochs; each batch run with both forms back to back, the order "
              "alternating. The two forms give bit-identical terms and gradients (tests/test_losses.py)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    per_model_main("loss_nodes", measure, markdown, "bpr,vbpr,lightgcn", lambda r: (
        f"autograd {r['autograd_ms']:.2f} ms, one node {r['one_node_ms']:.2f} ms per batch ({r['speedup']:.3f}x)"))


if __name__ == "__main__":
    main()
