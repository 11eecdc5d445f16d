"""An epoch of BPR triples: negatives checked against a bit set of the training pairs vs a binary
search over their sorted keys (``prismrec.data.sampler.BITSET_MAX_PAIRS``), and the bit set read
in the training pairs' user order (the sampler's way) vs in the epoch's shuffled order.

All draw the same batches (``tests/test_sampler.py``, ``tests/test_sampler_order.py``); this
measures what the lookup costs per epoch. The three are alternated round by round in one process
(:func:`benchmarks.common.interleaved_rounds`), medians and ranges reported with the load
average. Writes ``results/sampler.{json,md}``, one row per dataset.

    python -m benchmarks.sampler [--datasets tiktok,lfm2k] [--rounds 15]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from functools import partial

from benchmarks.common import RESULTS, interleaved_rounds, machine, table_head, write
from prismrec.data import BPRSampler, load_dataset
from prismrec.data import sampler as sampler_module


def epoch_s(sampler: BPRSampler) -> float:
    """Seconds to draw one epoch of batches."""
    t0 = time.perf_counter()
    for _ in sampler.epoch():
        pass
    return time.perf_counter() - t0


def measure(dataset: str, rounds: int) -> dict:
    """Median epoch seconds of each lookup, alternated round by round after a warm-up round."""
    data = load_dataset(dataset)
    bits = BPRSampler(data.train, seed=1)
    limit = sampler_module.BITSET_MAX_PAIRS
    sampler_module.BITSET_MAX_PAIRS = 0
    try:
        search = BPRSampler(data.train, seed=1)
    finally:
        sampler_module.BITSET_MAX_PAIRS = limit
    assert bits._bits is not None and search._bits is None, "the dataset is too large for the bit set"
    shuffled = BPRSampler(data.train, seed=1)  # the bit set read in the epoch's shuffled order
    plain = shuffled.sample_negatives
    shuffled.sample_negatives = lambda users, order=None: plain(users)
    samplers = {"bit set": bits, "bit set, shuffled order": shuffled, "binary search": search}
    times = interleaved_rounds({k: partial(epoch_s, s) for k, s in samplers.items()}, rounds, warmup=1)
    rows = {k: {"median_s": statistics.median(v), "range_s": [min(v), max(v)]} for k, v in times.items()}
    return {"pairs": int(data.train.nnz), "users": data.n_users, "items": data.n_items,
            "bitset_bytes": int(bits._bits.nbytes), "rounds": rounds, "lookups": rows,
            "speedup": rows["binary search"]["median_s"] / rows["bit set"]["median_s"],
            "user_order_speedup": rows["bit set, shuffled order"]["median_s"] / rows["bit set"]["median_s"],
            "load1": os.getloadavg()[0]}


def markdown(res: dict) -> str:
    lines = table_head("BPR sampler: one epoch of triples", f"{res['machine']}; updated {res['date']}.",
                       ["dataset", "pairs", "bit set, user order ms (range)", "bit set, shuffled order ms (range)",
                        "binary search ms (range)", "speed-up vs search / vs shuffled", "bit set size", "1-min load"])

    def cell(t):
        return f"{1000 * t['median_s']:.1f} ({1000 * t['range_s'][0]:.1f}-{1000 * t['range_s'][1]:.1f})"

    for name, r in res["datasets"].items():
        shuffled = r["lookups"].get("bit set, shuffled order")
        lines.append(f"| {name} | {r['pairs']:,} | {cell(r['lookups']['bit set'])} | "
                     f"{cell(shuffled) if shuffled else '-'} | {cell(r['lookups']['binary search'])} | "
                     f"{r['speedup']:.1f}x / {r.get('user_order_speedup', float('nan')):.1f}x | "
                     f"{r['bitset_bytes'] / 2**20:.1f} MiB | {r['load1']:.2f} |")
    lines += ["", "One epoch of (user, positive, negative) batches of 2048 (shuffle, negatives drawn and "
              "redrawn while they are training pairs, batches sliced), the three lookups "
              "alternated round by round in one process, medians after a warm-up round. All draw the "
              "same batches (tests/test_sampler.py, tests/test_sampler_order.py)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--datasets", default="tiktok,lfm2k")
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    path = RESULTS / "sampler.json"
    res = json.loads(path.read_text()) if path.exists() else {"datasets": {}}
    for name in args.datasets.split(","):
        res["datasets"][name] = r = measure(name, args.rounds)
        res.update(machine=machine(), date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
        print(f"{name}: bit set {1000 * r['lookups']['bit set']['median_s']:.1f} ms, in shuffled order "
              f"{1000 * r['lookups']['bit set, shuffled order']['median_s']:.1f} ms, binary search "
              f"{1000 * r['lookups']['binary search']['median_s']:.1f} ms per epoch", flush=True)
        write("sampler", res, markdown(res))


if __name__ == "__main__":
    main()
