"""Every model's epoch against its floor: the kernels it cannot avoid, timed in the same process.

For each registered model (default settings) on a dataset: one recorded epoch that also warms
up, then ``--epochs`` measured epochs (training pass + one full validation, as the trainer runs
them). The floor of an epoch comes from the model's own kernels:

* **training**: every batch's forward and backward run under a recorder of torch's
  operator calls (``TorchDispatchMode``) that keeps every matrix product (sparse adjacency and
  kNN products, dense GEMMs of the encoders and losses: ``mm``, ``addmm``, ``bmm``, ...), every
  (log-)softmax / logsumexp / exponential, every top-k and every row gather / scatter (embedding lookups and
  their backward), with their real arguments. Right after each batch, its recorded calls are
  replayed bare (no autograd, no Python model code) and timed; plus that batch's optimiser step
  over all parameters; summed over the epoch;
* **validation**: the recorded kernels of one eval-mode forward, plus the users x items GEMM and
  top-k over the validation users in the evaluator's batches.

``epoch / floor`` then says how much of an epoch is overhead on top of those kernels (element-wise
work, sampling, Python); 1.0 is the floor. Writes ``results/floors.{json,md}`` (or
``floors_<dataset>`` for other datasets), one row per model, resumable (``--models`` to rerun some).

    python -m benchmarks.floors [--dataset tiktok] [--models a,b] [--epochs 1] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time

import prismrec  # noqa: F401  (sets the OpenMP wait policy before torch loads)
import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from benchmarks.common import RESULTS, machine, median_time, write
from benchmarks.multimodal import MODEL_SETTINGS
from prismrec.data import BPRSampler, load_dataset
from prismrec.eval import Evaluator
from prismrec.experiment.config import resolve_config
from prismrec.models import MODELS, get_model
from prismrec.recommender import PretrainedItems
from prismrec.train.allocator import keep_freed_memory
from prismrec.train.trainer import seed_everything, train_epoch

PRODUCTS = {"mm", "addmm", "bmm", "baddbmm", "addbmm", "mv", "addmv", "_sparse_mm", "_sparse_addmm",
            "_sparse_sparse_matmul", "sspaddmm", "_sparse_csr_mm"}
SOFTMAX = {"_log_softmax", "_log_softmax_backward_data", "_softmax", "_softmax_backward_data", "logsumexp",
           "exp", "exp_"}  # exp: the pass of a log-sum-exp fused by hand (losses.gemm_logsumexp)
SELECT = {"topk"}
GATHER = {"embedding", "embedding_dense_backward", "index_select", "index", "index_add", "index_add_",
          "index_put", "index_put_", "_index_put_impl_", "gather", "scatter_add", "scatter_add_"}
KERNELS = PRODUCTS | SOFTMAX | SELECT | GATHER
SETTINGS = MODEL_SETTINGS
"""Per model and dataset, the settings a model needs beyond its defaults (FREEDOM's modality weights
on datasets whose modalities are not one image and one text), as in the quality benchmarks."""


class KernelRecorder(TorchDispatchMode):
    """Keeps every call of an operator in :data:`KERNELS` (with its arguments) while active."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.overloadpacket.__name__ in KERNELS:
            self.calls.append((func, args, kwargs))
        return func(*args, **kwargs)


def kind(call) -> str:
    """``sparse`` (a product with a sparse operand), ``gemm``, ``softmax``, ``topk`` or ``gather``."""
    func, args, _ = call
    name = func.overloadpacket.__name__
    if name in GATHER:
        return "gather"
    if name in SOFTMAX:
        return "softmax"
    if name in SELECT:
        return "topk"
    sparse = any(isinstance(a, torch.Tensor) and a.layout != torch.strided for a in args)
    return "sparse" if sparse else "gemm"


def replay(calls) -> None:
    """Run the recorded calls again, bare: fresh outputs, no autograd."""
    with torch.no_grad():
        for func, args, kwargs in calls:
            kw = {k: (torch.empty_like(v) if k == "out" and isinstance(v, torch.Tensor) else v)
                  for k, v in kwargs.items()}
            func(*args, **kw)


def median_s(fn, repeats: int = 5) -> float:
    """Median wall seconds of ``fn()`` over ``repeats`` runs (after one warm-up run when repeats > 1)."""
    return median_time(fn, repeats, warmup=1 if repeats > 1 else 0)["median"]


def kinds_s(calls, repeats: int = 5) -> dict:
    """Replay seconds of the recorded calls, split by :func:`kind` (median of ``repeats``)."""
    groups: dict[str, list] = {}
    for call in calls:
        groups.setdefault(kind(call), []).append(call)
    return {k: median_s(lambda c=c: replay(c), repeats) for k, c in groups.items()}


def build(name: str, data, settings: dict):
    """A fresh model with default settings; a declared earlier-stage input is faked at its real size
    (EGRA's pretrained item vectors: random, 64-d), since only its cost matters here."""
    cfg = resolve_config(name, data.name, settings)
    seed_everything(cfg.train.seed)
    cls = get_model(name)
    inputs = {}
    for need in cls.required_inputs(cfg.params):
        if need != "pretrained_items":
            raise RuntimeError(f"{name} needs {need!r}, which this benchmark cannot fake")
        vectors = np.random.default_rng(0).standard_normal((data.n_items, 64)).astype(np.float32)
        inputs[need] = PretrainedItems(vectors, "random (floors benchmark)", None)
    return cls(data, cfg.params, **inputs), cfg


def kernel_epoch(model, sampler, optimizer, epoch: int) -> dict:
    """One training epoch with every batch's kernels recorded and replayed bare right after it.

    Every batch counts (a model may do more in some, e.g. LATTICE rebuilds its learned graph in
    the first batch of an epoch). Returns the replay seconds by :func:`kind`, summed over the
    batches, the optimiser steps' seconds, the batches and the recorded calls.
    """
    model.train()
    model.on_epoch_start(epoch)
    kernels: dict[str, float] = {}
    step_s, batches, calls = 0.0, 0, 0
    for batch in sampler.epoch():
        optimizer.zero_grad(set_to_none=True)
        with KernelRecorder() as rec:
            terms = model.batch_loss(batch)
            sum(terms.values()).backward()
        for k, seconds in kinds_s(rec.calls, repeats=1).items():
            kernels[k] = kernels.get(k, 0.0) + seconds
        t0 = time.perf_counter()
        optimizer.step()
        step_s += time.perf_counter() - t0
        batches, calls = batches + 1, calls + len(rec.calls)
    return {"kernels_s": kernels, "optimizer_s": step_s, "batches": batches, "calls": calls}


def measure(name: str, data, epochs: int) -> dict:
    """Epoch seconds (training, validation) and their floors for one model.

    The recorded epoch comes first and doubles as the warm-up of the measured epochs after it.
    """
    t0 = time.perf_counter()
    model, cfg = build(name, data, SETTINGS.get(name, {}).get(data.name, {}))
    build_s = time.perf_counter() - t0
    tc = cfg.train
    sampler = BPRSampler(data.train, tc.batch_size, tc.negative_pool, tc.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=tc.lr, fused=True)
    evaluator = Evaluator(data, ks=tc.topk, batch_size=tc.eval_batch_size)
    floor = kernel_epoch(model, sampler, optimizer, 0)

    # one validation: the eval-mode forward's kernels + users x items GEMM and top-k
    model.eval()
    with torch.no_grad(), KernelRecorder() as rec_eval:
        out = model()
    eval_kernels = kinds_s(rec_eval.calls, repeats=3)
    users = torch.from_numpy((data.valid.getnnz(axis=1) > 0).nonzero()[0])
    k, bs = max(tc.topk), tc.eval_batch_size

    def rank():
        with torch.no_grad():
            for start in range(0, len(users), bs):
                torch.topk(model.score(users[start : start + bs], out), k, dim=1)

    rank_s = median_s(rank, repeats=3)
    del out, rec_eval

    train, valid = [], []
    for epoch in range(1, epochs + 1):
        model.train()
        model.on_epoch_start(epoch)
        train.append(train_epoch(model, sampler, optimizer, epoch, model.device)["train_s"])
        t0 = time.perf_counter()
        evaluator.evaluate(model, "valid")
        valid.append(time.perf_counter() - t0)
    floor_train = sum(floor["kernels_s"].values()) + floor["optimizer_s"]
    floor_valid = sum(eval_kernels.values()) + rank_s
    train_s, valid_s = statistics.median(train), statistics.median(valid)
    per_batch = {k: v / floor["batches"] for k, v in floor["kernels_s"].items()}
    return {
        "train_s": train_s, "valid_s": valid_s, "epoch_s": train_s + valid_s,
        "floor_train_s": floor_train, "floor_valid_s": floor_valid, "floor_s": floor_train + floor_valid,
        "ratio": (train_s + valid_s) / (floor_train + floor_valid),
        "ratio_train": train_s / floor_train, "ratio_valid": valid_s / floor_valid,
        "batches": floor["batches"], "batch_kernels_s": per_batch,
        "optimizer_step_s": floor["optimizer_s"] / floor["batches"], "batch_calls": floor["calls"] / floor["batches"],
        "parameters": sum(p.numel() for p in model.parameters()),
        "eval_forward_kernels_s": eval_kernels, "rank_s": rank_s, "build_s": build_s,
        "epochs_measured": epochs, "floor_method": "every batch of one epoch", "load1": os.getloadavg()[0],
    }


def markdown(res: dict) -> str:
    rows = sorted(res["models"].items(), key=lambda kv: -kv[1]["ratio"])
    lines = [f"# Epoch vs floor per model on {res['dataset']}", "",
             f"{res['machine']}; {res['threads']} thread(s); updated {res['date']}.", "",
             "| model | train s | floor | ratio | valid s | floor | ratio | **epoch / floor** | "
             "per batch: sparse / GEMM / softmax+top-k / gather / step ms | batches | 1-min load |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in rows:
        bk = r["batch_kernels_s"]
        ms = " / ".join(f"{1000 * x:.1f}" for x in (bk.get("sparse", 0), bk.get("gemm", 0),
                                                     bk.get("softmax", 0) + bk.get("topk", 0), bk.get("gather", 0),
                                                     r["optimizer_step_s"]))
        lines.append(f"| {name} | {r['train_s']:.2f} | {r['floor_train_s']:.2f} | {r['ratio_train']:.2f} | "
                     f"{r['valid_s']:.2f} | {r['floor_valid_s']:.2f} | {r['ratio_valid']:.2f} | "
                     f"**{r['ratio']:.2f}** | {ms} | {r['batches']} | {r['load1']:.2f} |")
    lines += ["", "Floor = the model's own kernels replayed bare in the same process: for every training batch "
              "of one epoch, every matrix product (sparse adjacency / kNN, dense GEMMs), (log-)softmax, top-k "
              "and row gather/scatter of its forward and backward, plus its fused-Adam step; per validation "
              "the eval-mode forward's kernels plus the users x items GEMM and top-k. Epochs: median of the "
              "measured epochs after the recorded one, default settings (EGRA's pretrained vectors faked at "
              "their size; FREEDOM with mm_weights 0.5/0.5 as in the quality benchmarks). Sorted by "
              "epoch / floor, furthest first."]
    odd = [n for n, r in rows if r.get("floor_method", "one batch x batches") != "every batch of one epoch"]
    if odd:
        lines.append(f"Floor of {', '.join(odd)}: one recorded batch times the batches of an epoch (an "
                     "earlier version of this script; exact for models whose batches all do the same work).")
    return "\n".join(lines) + "\n"


def main() -> None:
    keep_freed_memory()  # as `prismrec train` does
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", default="tiktok")
    parser.add_argument("--models", default=",".join(sorted(MODELS)))
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    name = "floors" if args.dataset == "tiktok" else f"floors_{args.dataset}"
    path = RESULTS / f"{name}.json"
    res = json.loads(path.read_text()) if path.exists() else {"models": {}}
    if res.get("threads") not in (None, args.threads):
        res["models"] = {}  # other thread count: start over
    data = load_dataset(args.dataset)
    for model in args.models.split(","):
        try:
            r = measure(model, data, args.epochs)
        except Exception as exc:  # one model's failure must not lose the others' rows
            print(f"{model}: failed: {type(exc).__name__}: {exc}", flush=True)
            continue
        res["models"][model] = r
        res.update(machine=machine(), dataset=args.dataset, threads=args.threads,
                   date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
        print(f"{model}: epoch {r['epoch_s']:.2f} s, floor {r['floor_s']:.2f} s, ratio {r['ratio']:.2f} "
              f"(train {r['ratio_train']:.2f}, valid {r['ratio_valid']:.2f}), load {r['load1']:.2f}", flush=True)
        write(name, res, markdown(res))


if __name__ == "__main__":
    main()
