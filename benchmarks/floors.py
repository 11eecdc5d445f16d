"""Every model's epoch against its floor: the kernels it cannot avoid, timed in the same process.

For each registered model (default settings) on a dataset: one warm-up epoch (the trainer's
loop and a validation, so that what follows starts where a run's later epochs do), then
``--epochs`` measured epochs. A measured epoch runs every training batch twice, back to back:

* **floor**: the batch's forward and backward under a recorder of torch's operator calls
  (``TorchDispatchMode``) that keeps every matrix product (sparse adjacency and kNN products,
  dense GEMMs of the encoders and losses: ``mm``, ``addmm``, ``bmm``, ...), every (log-)softmax /
  logsumexp / exponential, every top-k, every FFT (SMORE's spectral filters) and every row
  gather / scatter (embedding lookups and their backward) and every random draw (:data:`RANDOM`),
  with their real arguments; the recorded calls are then replayed bare (no autograd, no Python
  model code) and timed, plus the batch's optimiser step;
* **epoch**: the same batch, right after, run by the trainer's own ``train_epoch`` (sampling,
  forward, backward, divergence guard, optimiser step), the floor's work subtracted.

Validation alternates the same way: a full validation, then the kernels of one eval-mode forward
replayed bare plus the users x items GEMM and top-k over the validation users in the
evaluator's batches (3 rounds, medians). Interleaving batch by batch keeps both sides under the
same machine load, which on a shared machine swings by 2-3x within minutes.

``epoch / floor`` then says how much of an epoch is overhead on top of those kernels (element-wise
work, sampling, Python); 1.0 is the floor. Every span is also timed in the thread's CPU time
(``time.thread_time``, one thread): on a busy machine preemptions stretch wall time unevenly
between the two sides of a batch, CPU time not, so the CPU-time ratio is the steadier of the two. The
training epoch is also timed in epochs of its own, as a run trains (nothing between its batches):
the interleaved epoch runs each batch right after its floor's replay, which evicts a small model's
data from the caches (:mod:`benchmarks.interleave_control`), so the headline ratio is that run-alone
epoch plus the validation, in CPU time, over the same floor. Writes ``results/floors.{json,md}`` (or
``floors_<dataset>`` for other datasets), one row per model, resumable (``--models`` to rerun some).
Notes on the measurements (dates, loads, what changed between reruns) live in the JSON's ``notes``
(markdown) and are printed under the table, so that a rerun keeps them.

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

from benchmarks.common import RESULTS, machine, write
from benchmarks.multimodal import MODALITIES, MODEL_SETTINGS
from prismrec.data import BPRSampler, load_dataset
from prismrec.eval import Evaluator
from prismrec.experiment.config import resolve_config
from prismrec.models import MODELS, get_model
from prismrec.recommender import PretrainedItems
from prismrec.train.allocator import keep_freed_memory
from prismrec.train import trainer
from prismrec.train.trainer import adam_step, seed_everything, train_epoch

PRODUCTS = {"mm", "addmm", "bmm", "baddbmm", "addbmm", "mv", "addmv", "_sparse_mm", "_sparse_addmm",
            "_sparse_sparse_matmul", "sspaddmm", "_sparse_csr_mm"}
SOFTMAX = {"_log_softmax", "_log_softmax_backward_data", "_softmax", "_softmax_backward_data", "logsumexp",
           "exp", "exp_"}  # exp: the pass of a log-sum-exp fused by hand (losses.gemm_logsumexp)
SELECT = {"topk"}
FFT = {"_fft_r2c", "_fft_c2r", "_fft_c2c"}  # SMORE's spectral filters: its own unavoidable transform
GATHER = {"embedding", "embedding_dense_backward", "index_select", "index", "index_add", "index_add_",
          "index_put", "index_put_", "_index_put_impl_", "gather", "scatter_add", "scatter_add_"}
RANDOM = {"rand", "randn", "rand_like", "randn_like", "randint", "randint_like", "randperm", "bernoulli",
          "bernoulli_", "normal", "normal_", "uniform_", "exponential_", "geometric_", "log_normal_", "cauchy_",
          "random_", "multinomial", "native_dropout"}
"""Random draws: a method's noise is part of its computation (BM3's dropout masks, SIGER's and
GUME's perturbations, LGMRec's Gumbel noise), so its draws count, as their own kind. A dropout
via ``F.dropout`` records its ``bernoulli_``; the mask's multiplication is element-wise work."""
KERNELS = PRODUCTS | SOFTMAX | SELECT | GATHER | FFT | RANDOM
SETTINGS = MODEL_SETTINGS
"""Per model and dataset, the settings a model needs beyond its defaults where the modalities are
not one image-like and one text-like (prismrec.nn.roles): FREEDOM's and DRAGON's modality weights,
SMORE's and MMGCN's parts and LGMRec's contrastive order (the first modality in the image part,
as before parts went by name), as in the quality benchmarks and the headline study."""


def settings(model: str, dataset: str) -> dict:
    """What a model gets beyond its defaults on ``dataset``: the quality benchmarks' modality pair
    (lfm2k: text + audio, not its third file) and :data:`SETTINGS`."""
    from prismrec.experiment.config import model_class

    fields = model_class(model).Config.__dataclass_fields__
    pair = {"modalities": MODALITIES[dataset].strip("[]").split(",")} if dataset in MODALITIES and "modalities" in fields else {}
    return {**pair, **SETTINGS.get(model, {}).get(dataset, {})}


def is_kernel(func) -> bool:
    """Whether an operator is one of the floor's :data:`KERNELS`."""
    return func.overloadpacket.__name__ in KERNELS


class KernelRecorder(TorchDispatchMode):
    """Keeps every call of an operator for which ``keep(func)`` holds (default: the floor's
    :data:`KERNELS`), with its arguments, while active."""

    def __init__(self, keep=is_kernel) -> None:
        super().__init__()
        self.keep = keep
        self.calls: list[tuple] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.keep(func):
            self.calls.append((func, args, kwargs))
        return func(*args, **kwargs)


def kind(call) -> str:
    """``sparse`` (a product with a sparse operand), ``gemm``, ``softmax``, ``topk``, ``gather``, ``fft``
    or ``random``."""
    func, args, _ = call
    name = func.overloadpacket.__name__
    if name in GATHER:
        return "gather"
    if name in RANDOM:
        return "random"
    if name in FFT:
        return "fft"
    if name in SOFTMAX:
        return "softmax"
    if name in SELECT:
        return "topk"
    sparse = any(isinstance(a, torch.Tensor) and a.layout != torch.strided for a in args)
    return "sparse" if sparse else "gemm"


def replay(calls) -> None:
    """Run the recorded calls again, bare: fresh outputs, no autograd. An in-place draw
    (``uniform_``, ``bernoulli_``, ...) refills its recorded tensor, which the finished batch no
    longer reads; a draw from a model's own generator advances it, as a second batch would."""
    with torch.no_grad():
        for func, args, kwargs in calls:
            kw = {k: (torch.empty_like(v) if k == "out" and isinstance(v, torch.Tensor) else v)
                  for k, v in kwargs.items()}
            func(*args, **kw)


def kinds_s(calls, group=kind, clock=time.perf_counter) -> dict:
    """Seconds (by ``clock``) of one bare replay of the recorded calls, split by ``group(call)``
    (default :func:`kind`)."""
    groups: dict[str, list] = {}
    for call in calls:
        groups.setdefault(group(call), []).append(call)
    seconds = {}
    for k, c in groups.items():
        t0 = clock()
        replay(c)
        seconds[k] = clock() - t0
    return seconds


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


class FloorFirst:
    """A sampler whose every batch, before the trainer gets it, is run once under the recorder and
    its kernels replayed bare and timed (the floor), by ``group`` (default :func:`kind`; ``keep``:
    which operators, default the floor's; ``clock``: wall time unless given). The time this takes
    is kept apart, so that the trainer's epoch minus it is the epoch as
    :func:`~prismrec.train.trainer.train_epoch` runs it."""

    def __init__(self, model, sampler, optimizer, epoch: int, keep=is_kernel, group=kind,
                 clock=time.perf_counter) -> None:
        self.model, self.sampler, self.optimizer, self.epoch_index = model, sampler, optimizer, epoch
        self.keep, self.group, self.clock = keep, group, clock
        self.kernels: dict[str, float] = {}
        self.cpu_kernels = self.aside_s = self.aside_cpu = 0.0  # aside: the floor's whole work
        self.batches = self.calls = 0

    def epoch(self):
        for batch in self.sampler.epoch():
            t0, c0 = time.perf_counter(), time.thread_time()
            if self.batches == 0:
                self.model.on_epoch_start(self.epoch_index)
            self.optimizer.zero_grad(set_to_none=True)
            with KernelRecorder(self.keep) as rec:
                sum(self.model.batch_loss(batch).values()).backward()
            c1 = time.thread_time()
            for k, seconds in kinds_s(rec.calls, self.group, self.clock).items():
                self.kernels[k] = self.kernels.get(k, 0.0) + seconds
            self.cpu_kernels += time.thread_time() - c1
            self.calls += len(rec.calls)
            del rec
            if self.batches == 0:  # the trainer's run of the batch starts from the same state
                self.model.on_epoch_start(self.epoch_index)
            self.batches += 1
            self.aside_s += time.perf_counter() - t0
            self.aside_cpu += time.thread_time() - c0
            yield batch


class StepTimer:
    """The optimiser, its steps (the trainer's :func:`~prismrec.train.trainer.adam_step`) timed
    in thread CPU time (the trainer times them in wall time)."""

    def __init__(self, optimizer) -> None:
        self.optimizer, self.cpu = optimizer, 0.0

    def zero_grad(self, set_to_none: bool = True) -> None:
        """As the trainer releases the optimiser's gradients (its ``release_grads``, where the
        measured version has one; older ones call ``zero_grad(set_to_none=True)``)."""
        getattr(trainer, "release_grads", lambda o: o.zero_grad(set_to_none=True))(self.optimizer)

    def step(self) -> None:
        c0 = time.thread_time()
        adam_step(self.optimizer)
        self.cpu += time.thread_time() - c0


def training_setup(name: str, data):
    """What the per-batch benchmarks time: :func:`build`'s model (with :func:`settings`) in training
    mode, the trainer's sampler and its fused Adam at the model's configured train settings."""
    model, cfg = build(name, data, settings(name, data.name))
    tc = cfg.train
    sampler = BPRSampler(data.train, tc.batch_size, tc.negative_pool, tc.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=tc.lr, fused=True)
    model.train()
    return model, cfg, sampler, optimizer


def interleaved_epoch(model, sampler, optimizer, epoch: int) -> dict:
    """One training epoch whose every batch is run twice, back to back: once under the recorder
    (its kernels then replayed bare and timed: the floor) and once by the trainer's own
    :func:`~prismrec.train.trainer.train_epoch` (sampling, forward, backward, divergence guard,
    optimiser step: the epoch). Batch by batch, so that a machine whose load swings slows both
    sides alike.

    A model whose first batch of an epoch does more (LATTICE rebuilds its learned graph) gets
    ``on_epoch_start`` before both runs of that batch. Returns the trainer's epoch seconds (its
    sampling included), the floor's replay seconds by :func:`kind`, the optimiser steps' seconds
    (part of both), the batches and the recorded calls.
    """
    model.train()
    floor = FloorFirst(model, sampler, optimizer, epoch)
    timed = StepTimer(optimizer)
    c0 = time.thread_time()
    row = train_epoch(model, floor, timed, epoch, model.device)
    cpu = {"train": time.thread_time() - c0 - floor.aside_cpu, "kernels": floor.cpu_kernels, "optimizer": timed.cpu}
    return {"train_s": row["train_s"] - floor.aside_s, "kernels_s": floor.kernels, "optimizer_s": row["optim_s"],
            "batches": floor.batches, "calls": floor.calls, "cpu_s": cpu}


def interleaved_validation(model, evaluator, data, k: int, bs: int, rounds: int = 3) -> dict:
    """Validation seconds and its floor, alternated ``rounds`` times (medians): a full
    ``evaluator.evaluate(model, "valid")``, then the kernels of one eval-mode forward replayed
    bare plus the users x items GEMM and top-k of the validation users in the evaluator's batches."""
    users = torch.from_numpy((data.valid.getnnz(axis=1) > 0).nonzero()[0])
    valid, floor, forward, rank = [], [], [], []
    valid_cpu, floor_cpu = [], []  # the same spans in thread CPU time
    for _ in range(rounds):
        t0, c0 = time.perf_counter(), time.thread_time()
        evaluator.evaluate(model, "valid")
        valid.append(time.perf_counter() - t0)
        valid_cpu.append(time.thread_time() - c0)
        model.eval()
        with torch.no_grad(), KernelRecorder() as rec:
            out = model()
        c0 = time.thread_time()
        fwd = sum(kinds_s(rec.calls).values())
        fwd_cpu = time.thread_time() - c0
        del rec
        t0, c0 = time.perf_counter(), time.thread_time()
        with torch.no_grad():
            for start in range(0, len(users), bs):
                torch.topk(model.score(users[start : start + bs], out), k, dim=1)
        rank.append(time.perf_counter() - t0)
        floor_cpu.append(fwd_cpu + time.thread_time() - c0)
        forward.append(fwd)
        floor.append(fwd + rank[-1])
        del out
    model.train()
    return {"valid_s": statistics.median(valid), "floor_valid_s": statistics.median(floor),
            "eval_forward_kernels_s": statistics.median(forward), "rank_s": statistics.median(rank),
            "valid_cpu_s": statistics.median(valid_cpu), "floor_valid_cpu_s": statistics.median(floor_cpu)}


def epoch_alone_cpu(model, sampler, optimizer, evaluator, epoch: int) -> float:
    """Thread CPU seconds of one training epoch as a run trains it, uninterrupted (no floor work
    between its batches), then an untimed validation, as a run's next epoch starts after one."""
    model.train()
    model.on_epoch_start(epoch)
    c0 = time.thread_time()
    train_epoch(model, sampler, optimizer, epoch, model.device)
    seconds = time.thread_time() - c0
    evaluator.evaluate(model, "valid")
    return seconds


def measure(name: str, data, epochs: int) -> dict:
    """Epoch seconds (training, validation) and their floors for one model.

    Epoch 0 is a plain warm-up (the trainer's loop and a validation), so that the measured epochs
    start where a training run's later epochs do; then ``epochs`` interleaved epochs
    (:func:`interleaved_epoch`), each followed by an interleaved validation and an epoch run alone
    (:func:`epoch_alone_cpu`: the same trainer without the floor's work between its batches, which
    leaves a small model's next batch colder than a run's). Medians.
    """
    t0 = time.perf_counter()
    model, cfg = build(name, data, settings(name, data.name))
    build_s = time.perf_counter() - t0
    tc = cfg.train
    sampler = BPRSampler(data.train, tc.batch_size, tc.negative_pool, tc.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=tc.lr, fused=True)
    evaluator = Evaluator(data, ks=tc.topk, batch_size=tc.eval_batch_size)
    model.train()
    model.on_epoch_start(0)
    warm = train_epoch(model, sampler, optimizer, 0, model.device)["train_s"]
    evaluator.evaluate(model, "valid")

    runs, vals, alone = [], [], []
    for epoch in range(1, epochs + 1):
        runs.append(interleaved_epoch(model, sampler, optimizer, epoch))
        vals.append(interleaved_validation(model, evaluator, data, max(tc.topk), tc.eval_batch_size))
        alone.append(epoch_alone_cpu(model, sampler, optimizer, evaluator, epoch))
    mid = sorted(range(epochs), key=lambda e: runs[e]["train_s"])[epochs // 2]  # the median epoch
    floor, val = runs[mid], vals[mid]
    train_s = floor["train_s"]
    floor_train = sum(floor["kernels_s"].values()) + floor["optimizer_s"]
    valid_s, floor_valid = val["valid_s"], val["floor_valid_s"]
    per_batch = {k: v / floor["batches"] for k, v in floor["kernels_s"].items()}
    mid_cpu = sorted(range(epochs), key=lambda e: runs[e]["cpu_s"]["train"])[epochs // 2]  # by CPU time
    cpu, val_cpu = runs[mid_cpu]["cpu_s"], vals[mid_cpu]
    floor_cpu = cpu["kernels"] + cpu["optimizer"] + val_cpu["floor_valid_cpu_s"]
    return {
        "train_cpu_s": cpu["train"], "floor_train_cpu_s": cpu["kernels"] + cpu["optimizer"],
        "valid_cpu_s": val_cpu["valid_cpu_s"], "floor_valid_cpu_s": val_cpu["floor_valid_cpu_s"],
        "ratio_cpu": (cpu["train"] + val_cpu["valid_cpu_s"]) / floor_cpu,
        "train_alone_cpu_s": statistics.median(alone),
        "ratio_cpu_alone": (statistics.median(alone) + val_cpu["valid_cpu_s"]) / floor_cpu,
        "train_s": train_s, "valid_s": valid_s, "epoch_s": train_s + valid_s,
        "floor_train_s": floor_train, "floor_valid_s": floor_valid, "floor_s": floor_train + floor_valid,
        "ratio": (train_s + valid_s) / (floor_train + floor_valid),
        "ratio_train": train_s / floor_train, "ratio_valid": valid_s / floor_valid,
        "batches": floor["batches"], "batch_kernels_s": per_batch,
        "optimizer_step_s": floor["optimizer_s"] / floor["batches"], "batch_calls": floor["calls"] / floor["batches"],
        "parameters": sum(p.numel() for p in model.parameters()),
        "eval_forward_kernels_s": val["eval_forward_kernels_s"], "rank_s": val["rank_s"], "build_s": build_s,
        "warmup_train_s": warm, "epochs_measured": epochs, "floor_method": "interleaved per batch",
        "load1": os.getloadavg()[0],
    }


def headline(row: dict) -> float:
    """A row's headline epoch / floor: in CPU time with the training epoch run alone (the interleaved
    ratios where a row predates that column)."""
    return row.get("ratio_cpu_alone", row.get("ratio_cpu", row["ratio"]))


def markdown(res: dict) -> str:
    rows = sorted(res["models"].items(), key=lambda kv: -headline(kv[1]))
    lines = [f"# Epoch vs floor per model on {res['dataset']}", "",
             f"{res['machine']}; {res['threads']} thread(s); updated {res['date']}.", "",
             "| model | train s | floor | ratio | valid s | floor | ratio | interleaved: epoch / floor | "
             "interleaved, CPU time | **run alone, CPU time: epoch / floor** | "
             "per batch: sparse / GEMM / softmax+top-k / FFT / random / gather / step ms | batches | 1-min load |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in rows:
        cpu_ratio = f"{r['ratio_cpu']:.2f}" if "ratio_cpu" in r else "-"
        alone = f"{r['ratio_cpu_alone']:.2f}" if "ratio_cpu_alone" in r else "-"
        bk = r["batch_kernels_s"]
        ms = " / ".join(f"{1000 * x:.1f}" for x in (bk.get("sparse", 0), bk.get("gemm", 0),
                                                     bk.get("softmax", 0) + bk.get("topk", 0), bk.get("fft", 0),
                                                     bk.get("random", 0), bk.get("gather", 0),
                                                     r["optimizer_step_s"]))
        lines.append(f"| {name} | {r['train_s']:.2f} | {r['floor_train_s']:.2f} | {r['ratio_train']:.2f} | "
                     f"{r['valid_s']:.2f} | {r['floor_valid_s']:.2f} | {r['ratio_valid']:.2f} | "
                     f"{r['ratio']:.2f} | {cpu_ratio} | **{alone}** | {ms} | {r['batches']} | {r['load1']:.2f} |")
    lines += ["", "Floor = the model's own kernels replayed bare in the same process: for every training batch "
              "of an epoch (each batch also run and timed as the trainer runs it, right after), every matrix "
              "product (sparse adjacency / kNN, dense GEMMs), (log-)softmax, top-k, FFT, random draw (dropout "
              "masks, noise, Gumbel draws: the method's own randomness, counted as its own kind) and row "
              "gather/scatter of its forward and backward, plus its fused-Adam step; per validation "
              "the eval-mode forward's kernels plus the users x items GEMM and top-k. Epochs: median of the "
              "interleaved epochs after a warm-up epoch, default settings (EGRA's pretrained vectors faked at "
              "their size) plus what the quality benchmarks give (the modality pair, lfm2k: text + audio; "
              "FREEDOM's and DRAGON's mm_weights 0.5/0.5; SMORE's and MMGCN's modality_roles and LGMRec's "
              "hcl_order with the first modality in the image part). Interleaved: the epochs whose batches "
              "alternate with their floor's, in wall time and in the thread's CPU time (one thread), which "
              "preemptions by other processes on a busy machine do not inflate. Run alone (the headline, sorted "
              "by it, furthest first): the training epoch's CPU time measured again in epochs of their own, right "
              "after each interleaved validation (nothing between the trainer's batches, as in a run), plus the "
              "validation's, over the same floor: the interleaved epoch runs each batch right after its floor's "
              "recording and bare replay, which stream its recorded tensors through the caches (3.5-43 MiB a "
              "batch on lfm2k and tiktok; a run does not), and a "
              "small model's next batch pays the refill (`python -m benchmarks.interleave_control`: the same "
              "trainer with a pass over an unrelated 64 MB buffer between batches loses about as much). "
              "'-': rows measured before a column was recorded."]
    odd = [n for n, r in rows if r.get("floor_method") != "interleaved per batch"]
    if odd:
        lines.append(f"Rows of {', '.join(odd)}: measured by an earlier version of this script (floor "
                     "recorded in one epoch, epochs timed after it), not comparable; rerun them.")
    if res.get("notes"):  # kept in the JSON, so that a rerun of some rows keeps them
        lines += ["", res["notes"].rstrip("\n")]
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
              f"(train {r['ratio_train']:.2f}, valid {r['ratio_valid']:.2f}; CPU time {r['ratio_cpu']:.2f}), "
              f"load {r['load1']:.2f}", flush=True)
        write(name, res, markdown(res))


if __name__ == "__main__":
    main()
