"""Memory and time of one training epoch + one validation as the data grows: tiktok -> baby ->
Electronics size, on CPU.

Each (size, model) runs in its own subprocess, so its peak resident memory is its own: the
parent reads it from the child's resource usage (``os.wait4``), and the child reports where it
was reached (after loading the data, after building the model and its graphs, after training,
after validation). The datasets are synthetic folders of each size written by
:func:`prismrec.data.synthetic.write_sized_dataset` (same counts, power-law degrees, the real
feature sizes: 128-d image/audio at tiktok size, 4096-d image + 384-d text at baby and
Electronics size), generated once under ``--data-root``.

An epoch may be capped (``--max-batches electronics=40``): the batches that ran are timed and the
epoch's time is extrapolated (marked "est." in the table, with the batches run recorded). The
validation always ranks every item for every validation user. EGRA's stage 0 (a full MGCN run
whose item representations are its ``P``) is replaced by random ``P`` of the same shape: its cost
is the MGCN row. Results are written after every cell (a rerun skips the cells already measured
with the same settings unless ``--fresh``): ``results/scale.{json,md}``.

kNN graphs go to the graph cache (:mod:`prismrec.graph.cache`) in ``<data-root>/graphs`` (unless
``PRISMREC_GRAPH_CACHE`` is set): the first kNN model at a size computes them (its build time
includes them; the table says ``built N``), the later ones read them (``cache``). Each phase's
CPU seconds are recorded beside its wall time: on a shared machine they show the growth with
size far better than wall time does.

    nice -n 5 python -m benchmarks.scale [--sizes tiktok,baby,electronics] [--models lightgcn,...]
        [--threads 1] [--max-batches electronics=40] [--timeout 3600] [--data-root runs/scale-data] [--again]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import RESULTS, atomic_write

MODELS = ["lightgcn", "rlmmrec", "mgcn", "freedom", "gume", "egra", "siger"]
SIZES = ["tiktok", "baby", "electronics"]
LIMIT_GB = 24.0
SETTINGS = {("tiktok", "freedom"): {"mm_weights": [0.5, 0.5]}}
"""Settings a model needs at a size: FREEDOM's image/text weights have no text modality at tiktok
size (image + audio), so they are given explicitly."""


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _phase(out: dict, name: str) -> None:
    """Tell the parent (stderr) which phase ended: a timed-out cell says how far it got."""
    print(f"[child] {name} done after {time.perf_counter() - out['_t0']:.0f}s, peak RSS {_rss_mb():.0f} MiB",
          file=sys.stderr, flush=True)


def child(size: str, model_name: str, folder: str, threads: int, max_batches: int) -> dict:
    """Load, build, train one (possibly capped) epoch, validate once; return timings and the
    peak RSS after each phase (MiB)."""
    import itertools

    import numpy as np
    import torch

    from prismrec.data import BPRSampler, load_dataset
    from prismrec.eval import Evaluator
    from prismrec.experiment.config import resolve_config
    from prismrec.models import get_model
    from prismrec.recommender import PretrainedItems
    from prismrec.train.trainer import seed_everything, train_epoch

    import prismrec.graph.knn as knn

    computed = []  # top-k graphs this cell computed (the others came from the graph cache)
    topk = knn._topk_cosine
    knn._topk_cosine = lambda *args: computed.append(args[0].shape) or topk(*args)
    torch.set_num_threads(threads)
    out: dict = {"size": size, "model": model_name, "threads": threads, "_t0": time.perf_counter()}
    t0, c0 = time.perf_counter(), time.process_time()
    data = load_dataset(folder)
    _phase(out, "load")
    out.update(load_s=time.perf_counter() - t0, load_cpu_s=time.process_time() - c0,
               rss_after_load_mb=_rss_mb(), users=data.n_users,
               items=data.n_items, train_interactions=int(data.train.nnz))
    cfg = resolve_config(model_name, data.name, {"threads": threads, **SETTINGS.get((size, model_name), {})})
    seed_everything(cfg.train.seed)
    cls = get_model(model_name)
    inputs = {}
    if "pretrained_items" in cls.required_inputs(cfg.params):  # stand-in for stage 0 (an MGCN run)
        dim = 64
        inputs["pretrained_items"] = PretrainedItems(
            np.random.default_rng(0).standard_normal((data.n_items, dim), dtype=np.float32))
    t0, c0 = time.perf_counter(), time.process_time()
    model = cls(data, cfg.params, **inputs)
    out.update(build_s=time.perf_counter() - t0, build_cpu_s=time.process_time() - c0, rss_after_build_mb=_rss_mb(),
               knn_computed=[list(shape) for shape in computed],
               parameters=sum(p.numel() for p in model.parameters()))
    _phase(out, "build")
    sampler = BPRSampler(data.train, cfg.train.batch_size, cfg.train.negative_pool, cfg.train.seed)
    total = len(sampler)
    cap = max_batches if 0 < max_batches < total else total

    class Capped:  # the first `cap` batches of an epoch
        def epoch(self):
            return itertools.islice(sampler.epoch(), cap)

    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr, fused=True)
    model.train()
    c0 = time.process_time()
    model.on_epoch_start(0)
    row = train_epoch(model, Capped(), optimizer, 0, model.device)
    train_cpu = time.process_time() - c0
    out.update(batches=cap, batches_per_epoch=total, train_s=row["train_s"],
               epoch_s=row["train_s"] * total / cap, epoch_estimated=cap < total, loss=row["loss"],
               train_cpu_s=train_cpu, epoch_cpu_s=train_cpu * total / cap, rss_after_train_mb=_rss_mb())
    _phase(out, f"train ({cap} batches)")
    evaluator = Evaluator(data, ks=cfg.train.topk, batch_size=cfg.train.eval_batch_size)
    t0, c0 = time.perf_counter(), time.process_time()
    valid = evaluator.evaluate(model, "valid")
    out.update(eval_s=time.perf_counter() - t0, eval_cpu_s=time.process_time() - c0, valid_users=valid.get("users"),
               rss_after_eval_mb=_rss_mb())
    out.pop("_t0")
    return out


def run_child(size: str, model: str, folder: Path, threads: int, max_batches: int, timeout: float) -> dict:
    """The child's report plus its peak RSS as the kernel counted it, and the load average."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    # kNN graphs go to a cache beside the synthetic data: built by the first model that needs
    # them, read by the others (the cell records which)
    env.setdefault("PRISMREC_GRAPH_CACHE", str(folder.parent / "graphs"))
    cached_before = sorted(p.name for p in Path(env["PRISMREC_GRAPH_CACHE"]).glob("*.npz"))
    cmd = [sys.executable, "-m", "benchmarks.scale", "--child", size, model, str(folder), str(threads),
           str(max_batches)]
    load_before = os.getloadavg()
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = started + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.perf_counter() > deadline:
            proc.kill()
            pid, status, usage = os.wait4(proc.pid, 0)
            break
        time.sleep(0.5)
    stdout, stderr = proc.stdout.read(), proc.stderr.read()
    cached_after = sorted(p.name for p in Path(env["PRISMREC_GRAPH_CACHE"]).glob("*.npz"))
    result = {"size": size, "model": model, "wall_s": time.perf_counter() - started,
              "graphs_built": len(set(cached_after) - set(cached_before)),
              "peak_rss_mb": usage.ru_maxrss / 1024, "cpu_s": usage.ru_utime + usage.ru_stime,
              "load_before": load_before, "load_after": os.getloadavg()}
    code = os.waitstatus_to_exitcode(status)
    if code == 0 and stdout.strip():
        result.update(json.loads(stdout.strip().splitlines()[-1]))
        result["status"] = "ok"
    else:
        result["status"] = "timeout" if time.perf_counter() > deadline else f"failed (exit {code})"
        result["error"] = "\n".join((stderr or stdout).strip().splitlines()[-6:])
    result["fits_24gb"] = result["peak_rss_mb"] <= LIMIT_GB * 1024 if result["status"] == "ok" else None
    return result


def render(results: dict) -> str:
    lines = ["# Scale: one epoch + one validation on CPU, tiktok -> baby -> Electronics size", "",
             f"Synthetic folders of each size (`prismrec synth`), threads={results['threads']}, one model "
             "per subprocess; peak RSS is the child's maximum resident set (kernel rusage). "
             "\"est.\": the epoch was capped at the batches shown and its time extrapolated. "
             "EGRA's stage 0 (an MGCN run) is not included (random P of the same shape). Seconds are "
             "wall time on the machine as it was (load: its 1-minute load average when the cell "
             "started; a 2-core machine at load 10 runs a cell at a fraction of a core): compare "
             "sizes and memory, not absolute speed; CPU s is the child's own CPU time, all phases. "
             "kNN: `built N` when the cell computed N top-k graphs (stored in the graph cache, "
             "`prismrec.graph.cache`), `cache` when it read those an earlier cell built on the same "
             "features (MGCN builds the image and text graphs; GUME, SIGER, EGRA and FREEDOM reuse "
             "them).", ""]
    header = ["size", "model", "status", "build s", "kNN", "batches", "epoch s", "epoch CPU s", "valid s",
              "valid CPU s", "CPU s", "peak RSS GiB", "≤ 24 GB", "load"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in sorted(results["cells"], key=_order):
        ok = r["status"] == "ok"
        epoch = f"{r['epoch_s']:.1f}" + (" est." if r.get("epoch_estimated") else "") if ok else "-"
        batches = f"{r['batches']}/{r['batches_per_epoch']}" if ok else "-"
        lines.append(
            f"| {r['size']} | {r['model']} | {r['status']} | {_num(r.get('build_s'), '.1f')} | {_knn(r)} | "
            f"{batches} | {epoch} | {_num(r.get('epoch_cpu_s'))} | {_num(r.get('eval_s'), '.1f')} | "
            f"{_num(r.get('eval_cpu_s'))} | {_num(r.get('cpu_s'))} | "
            f"{r['peak_rss_mb'] / 1024:.2f} | "
            f"{'yes' if r['fits_24gb'] else ('no' if r['fits_24gb'] is False else '-')} | "
            f"{r['load_before'][0]:.1f} |")
    sizes = {r["size"]: (r.get("users"), r.get("items"), r.get("train_interactions")) for r in results["cells"]
             if r["status"] == "ok"}
    lines += ["", "Sizes: " + "; ".join(f"{s} {u:,} users, {i:,} items, {n:,} train interactions"
                                       for s, (u, i, n) in sorted(sizes.items(), key=lambda kv: _size_rank(kv[0]))),
              ""]
    lines += growth(results["cells"])
    lines += phases(results["cells"], "electronics")
    failed = [r for r in results["cells"] if r["status"] != "ok"]
    for r in failed:
        lines.append(f"- {r['size']} / {r['model']}: {r['status']}: `{r.get('error', '')[-300:]}`")
    return "\n".join(lines) + "\n"


def growth(cells: list[dict]) -> list[str]:
    """Per model: peak RSS and epoch time at each size, and the factor from the smallest to the
    largest size measured (the data grow ~25x in interactions from tiktok to Electronics)."""
    ok = {(r["size"], r["model"]): r for r in cells if r["status"] == "ok"}
    models = [m for m in MODELS if any((s, m) in ok for s in SIZES)]
    if not models:
        return []
    lines = ["## Growth tiktok -> baby -> Electronics", "",
             "Seconds are the child's CPU seconds where recorded (less sensitive to the machine's load "
             "than wall time), else wall seconds marked w.", "",
             "| model | peak RSS GiB (tiktok / baby / Electronics) | epoch s (tiktok / baby / Electronics) | "
             "valid s (tiktok / baby / Electronics) |", "|---|---|---|---|"]
    for m in models:
        cells = [ok.get((s, m)) for s in SIZES]
        rss = " / ".join("-" if r is None else f"{r['peak_rss_mb'] / 1024:.2f}" for r in cells)
        epoch = " / ".join(_cpu_or_wall(r, "epoch_cpu_s", "epoch_s") for r in cells)
        valid = " / ".join(_cpu_or_wall(r, "eval_cpu_s", "eval_s") for r in cells)
        lines.append(f"| {m} | {rss} | {epoch} | {valid} |")
    return lines + [""]


def phases(cells: list[dict], size: str) -> list[str]:
    """Where the memory goes at ``size``: the peak RSS after each phase, and the parameters."""
    rows = sorted((r for r in cells if r["size"] == size and r["status"] == "ok"), key=_order)
    if not rows:
        return []
    lines = [f"## Peak RSS after each phase at {size} size (GiB)", "",
             "Loading keeps the features once, float32 (1.13 GB at Electronics size); building adds the "
             "model's parameters (where a model trains the raw features, as MMRec's MGCN family does, a "
             "second copy of them) and its graphs; training adds the gradients and Adam's two moments of "
             "every parameter; validation adds one block of user x item scores (eval_batch_size x items).", "",
             "| model | parameters (M) | load | build | train | valid |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['parameters'] / 1e6:.1f} | "
                     + " | ".join(f"{r[f'rss_after_{k}_mb'] / 1024:.2f}" for k in ("load", "build", "train", "eval"))
                     + " |")
    return lines + [""]


def _cpu_or_wall(r: dict | None, cpu: str, wall: str) -> str:
    if r is None:
        return "-"
    return f"{r[cpu]:.0f}" if r.get(cpu) is not None else f"{r[wall]:.0f} w"


def _knn(r: dict) -> str:
    if r["status"] != "ok" or ("knn_computed" not in r and "graphs_built" not in r):
        return "-"
    if r["model"] in ("lightgcn", "rlmmrec"):
        return "none"
    built = len(r["knn_computed"]) if "knn_computed" in r else r["graphs_built"]  # new cache entries
    return f"built {built}" if built else "cache"


def _size_rank(size: str) -> int:
    return SIZES.index(size) if size in SIZES else len(SIZES)


def _order(r: dict) -> tuple:
    return (_size_rank(r["size"]), MODELS.index(r["model"]) if r["model"] in MODELS else len(MODELS))


def _num(value, spec: str = ".0f") -> str:
    return "-" if value is None else format(value, spec)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        size, model, folder, threads, max_batches = argv[1:6]
        print(json.dumps(child(size, model, folder, int(threads), int(max_batches))))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=",".join(SIZES))
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-batches", default="", help="SIZE=N,... caps the training batches of an epoch")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per cell")
    parser.add_argument("--data-root", type=Path, default=Path("runs/scale-data"))
    parser.add_argument("--scale", type=float, default=1.0, help="shrink the synthetic folders (smoke runs)")
    parser.add_argument("--fresh", action="store_true", help="start the results afresh (drop every cell)")
    parser.add_argument("--again", action="store_true",
                        help="measure the selected cells again (replacing them; other cells are kept)")
    parser.add_argument("--name", default="scale", help="results/<name>.{json,md}")
    args = parser.parse_args(argv)
    from prismrec.data.synthetic import write_sized_dataset

    caps = {k: int(v) for k, v in (p.split("=") for p in args.max_batches.split(",") if p)}
    path = RESULTS / f"{args.name}.json"
    results = json.loads(path.read_text()) if path.is_file() and not args.fresh else {"cells": []}
    results.update(threads=args.threads, scale=args.scale)
    for size in args.sizes.split(","):
        folder = args.data_root / size
        if not folder.is_dir():
            print(f"[scale] writing the synthetic {size} folder to {folder}", flush=True)
            write_sized_dataset(folder, size, args.scale)
        for model in args.models.split(","):
            cap = caps.get(size, 0)
            if not args.again and any(r["size"] == size and r["model"] == model and r["status"] == "ok"
                   and r.get("max_batches") == cap for r in results["cells"]):
                continue
            print(f"[scale] {size} / {model} (max batches {cap or 'all'})", flush=True)
            r = run_child(size, model, folder, args.threads, cap, args.timeout)
            r["max_batches"] = cap
            results["cells"] = [c for c in results["cells"] if (c["size"], c["model"]) != (size, model)] + [r]
            atomic_write(path, json.dumps(results, indent=2))
            atomic_write(RESULTS / f"{args.name}.md", render(results))
            print(f"[scale] {size} / {model}: {r['status']}, peak {r['peak_rss_mb'] / 1024:.2f} GiB, "
                  f"{r.get('epoch_s', float('nan')):.1f} s/epoch, {r.get('eval_s', float('nan')):.1f} s/valid",
                  flush=True)
    print(render(results))


if __name__ == "__main__":
    main()
