"""This session's fused training nodes against the nodes they replace, in the same process.

Per training batch, as the trainer runs it (forward, the terms' sum and logging, backward,
fused-Adam step), two forms that gave the same terms and gradients bit for bit when this was
measured (results/fused_nodes.md); since, the fused nodes take fewer passes and equal the
unfused ones up to float rounding (tests/test_bpr_terms.py, tests/test_bm3.py):

* **before**: BPR-MF's and VBPR's terms as the two loss functions' nodes (``losses.bpr_loss``,
  ``reg_weight * losses.emb_norm`` of the split rows); BM3's one-layer encoder as the propagation
  node then ``_EncoderHead``, its predictor rows sliced, its dropout mask boolean, a
  ``losses.cosine`` node per pair with autograd's mean, ``1 -`` and weight; the trainer's
  terms summed one by one, logged through a stacked copy, a concatenation and per-term tensors;
* **after**: ``losses.bpr_terms`` (both terms one node), BM3's ``_HalvedEncoder`` with split
  rows, an in-place float mask and ``losses.cosine_terms`` (a view's norm once for its two targets,
  the mean, ``1 -`` and weight inside the node), the trainer's terms stacked once and logged as
  floats.

Every batch of an epoch runs once with each form, back to back, the order alternating from batch
to batch, so both see the same machine load. Medians of the per-batch milliseconds over
``--epochs`` epochs after a warm-up epoch, the 1-minute load recorded. Writes
``results/fused_nodes.{json,md}``.

    python -m benchmarks.fused_nodes [--datasets tiktok,lfm2k] [--models bpr,vbpr,bm3] [--epochs 2]
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time

import prismrec  # noqa: F401  (sets the OpenMP wait policy before torch loads)
import torch

from benchmarks.common import per_model_main
from benchmarks.floors import training_setup
from prismrec.losses import bpr_loss, cosine, emb_norm, unit_rows
from prismrec.models import bm3 as bm3_module
from prismrec import losses
from prismrec.nn import lightgcn, residual_encoder


def unfused_bpr_terms(zu, zij, reg_weight):
    """BPR-MF's and VBPR's terms as the loss functions' own nodes on the split rows."""
    zi, zj = zij.chunk(2)
    return bpr_loss(zu, zi, zj), reg_weight * emb_norm(zu, zi, zj)


def unfused_bm3_batch_loss(net, batch):
    """BM3's batch loss as the unfused nodes computed it (call with ``net.target`` the boolean-mask
    form, :func:`boolean_mask_target`)."""
    users, u_at = residual_encoder.unique(batch[0], net.n_users)
    items, i_at = residual_encoder.unique(batch[1], net.n_items)
    y = lightgcn(net.adjacency, torch.cat([net.user_emb, net.item_emb]), net.config.n_layers)
    index = torch.cat([users, items + net.n_users])
    _, rows, norm_u, norm_i = residual_encoder._EncoderHead.apply(y, net.item_emb, index, net.n_users)
    g = net.predictor(rows)
    online_u, online_i = g[: len(users)].index_select(0, u_at), g[len(users):].index_select(0, i_at)
    target_u = unit_rows(net.target(rows[: len(users)])).index_select(0, u_at)
    target_i = unit_rows(net.target(rows[len(users):])).index_select(0, i_at)
    cfg = net.config
    terms = {"rec": (1 - cosine(online_u, target_i).mean()) + (1 - cosine(online_i, target_u).mean()),
             "reg": cfg.reg_weight * (norm_u + norm_i) / net.n_items}
    for m, projector in net.projectors.items():
        h_m = projector.linear(projector.features.index_select(0, items))
        target_m = unit_rows(net.target(h_m)).index_select(0, i_at)
        online_m = net.predictor(h_m).index_select(0, i_at)
        terms[f"align_{m}"] = cfg.cl_weight * (1 - cosine(online_m, target_i).mean())
        terms[f"mask_{m}"] = cfg.cl_weight * (1 - cosine(online_m, target_m).mean())
    return terms


def boolean_mask_target(net):
    def target(rows):
        rows, p = rows.detach(), net.config.dropout
        return rows if p == 0.0 else rows * (torch.rand(rows.shape, device=rows.device) >= p) / (1.0 - p)
    return target


@contextlib.contextmanager
def unfused(model):
    """Within: ``model`` computes its batch loss with the nodes this session fused."""
    saved = losses._BPRTerms.apply
    try:
        losses._BPRTerms.apply = unfused_bpr_terms
        if isinstance(model, bm3_module.BM3):
            model.batch_loss = lambda batch: unfused_bm3_batch_loss(model, batch)
            model.target = boolean_mask_target(model)
        yield
    finally:
        losses._BPRTerms.apply = saved
        for attr in ("batch_loss", "target"):
            model.__dict__.pop(attr, None)


def step_before(model, optimizer, batch, sums: dict) -> None:
    """One batch with the previous trainer's bookkeeping (terms summed one by one, logged as tensors)."""
    terms = model.batch_loss(batch)
    total = sum(terms.values())
    logged = torch.stack([v.detach() for v in terms.values()])
    values = torch.cat([logged]).cpu()
    row = dict(zip(tuple(terms), values[0:len(terms)]))
    float(sum(row.values()))  # the divergence check's total
    for k, value in row.items():
        sums[k] = sums.get(k, 0.0) + float(value)
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    optimizer.step()


def step_after(model, optimizer, batch, sums: dict) -> None:
    """One batch with the trainer's bookkeeping (terms stacked once, logged as floats)."""
    terms = model.batch_loss(batch)
    stacked = torch.stack(list(terms.values()))
    total = stacked.sum()
    values = stacked.detach().reshape(-1).tolist()
    sum(values)  # the divergence check's total
    for k, value in zip(terms, values):
        sums[k] = sums.get(k, 0.0) + value
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    optimizer.step()


def measure(name: str, data, epochs: int) -> dict:
    """Per-batch milliseconds of each form, batch by batch in alternating order (medians)."""
    model, _, sampler, optimizer = training_setup(name, data)
    times: dict[str, list[float]] = {"before": [], "after": []}
    cpu: dict[str, list[float]] = {"before": [], "after": []}
    loads, sums = [], {}
    for epoch in range(epochs + 1):  # epoch 0: warm-up, not kept
        model.on_epoch_start(epoch)
        for b, batch in enumerate(sampler.epoch()):
            for form in ("after", "before") if b % 2 == 0 else ("before", "after"):
                t0, c0 = time.perf_counter(), time.thread_time()
                if form == "before":
                    with unfused(model):
                        step_before(model, optimizer, batch, sums)
                else:
                    step_after(model, optimizer, batch, sums)
                if epoch:
                    times[form].append(time.perf_counter() - t0)
                    cpu[form].append(time.thread_time() - c0)
        loads.append(os.getloadavg()[0])
    after, before = (statistics.median(times[k]) * 1000 for k in ("after", "before"))
    cpu_after, cpu_before = (statistics.median(cpu[k]) * 1000 for k in ("after", "before"))
    return {"after_ms": after, "before_ms": before, "saved_ms": before - after, "speedup": before / after,
            "after_cpu_ms": cpu_after, "before_cpu_ms": cpu_before, "cpu_speedup": cpu_before / cpu_after,
            "after_epoch_ms": sum(times["after"]) * 1000 / epochs,
            "before_epoch_ms": sum(times["before"]) * 1000 / epochs,
            "batches": len(times["after"]) // epochs, "epochs": epochs, "load1": [min(loads), max(loads)]}


def markdown(res: dict) -> str:
    lines = ["# Fused training nodes (BPR-MF / VBPR terms, BM3 encoder, trainer bookkeeping) vs the nodes they "
             "replace, per training batch", "",
             f"{res['machine']}; {res['threads']} thread(s); {res['date']}.", "",
             "| dataset | model | before ms | after ms | saved ms | speed-up | CPU ms (before / after) | CPU speed-up "
             "| epoch ms (before / after) | batches x epochs | 1-min load |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for key, r in res["rows"].items():
        dataset, model = key.split("/")
        lines.append(f"| {dataset} | {model} | {r['before_ms']:.2f} | {r['after_ms']:.2f} | "
                     f"{r['saved_ms']:.2f} | {r['speedup']:.3f}x | {r['before_cpu_ms']:.2f} / {r['after_cpu_ms']:.2f} | "
                     f"{r['cpu_speedup']:.3f}x | {r['before_epoch_ms']:.0f} / "
                     f"{r['after_epoch_ms']:.0f} | {r['batches']} x {r['epochs']} | "
                     f"{r['load1'][0]:.1f}-{r['load1'][1]:.1f} |")
    lines += ["", "Per batch: forward, the terms' sum and logging, backward and fused-Adam step, median over "
              "every batch of the measured epochs; each batch run with both forms back to back, the order "
              "alternating. ms: wall time; CPU ms: the thread's CPU time (one thread), which a busy machine's "
              "preemptions do not inflate. Both forms give the same terms and gradients, up to float rounding (tests/test_bpr_terms.py, "
              "tests/test_bm3.py, tests/test_trainer_steps.py)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    per_model_main("fused_nodes", measure, markdown, "bpr,vbpr,bm3", lambda r: (
        f"before {r['before_ms']:.2f} ms, after {r['after_ms']:.2f} ms per batch ({r['speedup']:.3f}x; "
        f"CPU {r['before_cpu_ms']:.2f} / {r['after_cpu_ms']:.2f} ms, {r['cpu_speedup']:.3f}x)"))


if __name__ == "__main__":
    main()
