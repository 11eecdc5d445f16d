"""The trainer's direct fused-Adam step (``trainer.adam_step``) against ``torch.optim.Adam.step``.

Per model (the settings of :mod:`benchmarks.floors`), after a warm-up epoch, ``--epochs`` rounds,
each the trainer's ``train_epoch`` once with each step, the order alternating between rounds
(the old form: the optimiser behind a proxy, so that ``adam_step`` falls back to
``optimizer.step()``), then an epoch of batches whose steps alternate between the forms. Both
forms update bit for bit alike (tests/test_train_adam_step.py). Per form: the median epoch and
the median step, in wall and thread CPU time. Writes ``results/adam_step.{json,md}``.

    python -m benchmarks.adam_step [--datasets lfm2k,tiktok] [--models bpr,vbpr,bm3] [--epochs 6]
"""

from __future__ import annotations

import os
import statistics
import time

import torch

from benchmarks.common import per_model_main
from benchmarks.floors import training_setup
from prismrec.train.trainer import adam_step, train_epoch

FORMS = ("optimizer.step()", "adam_step")


class _Plain:
    """The optimiser behind a proxy, so that the trainer's ``adam_step`` calls its ``step()``."""

    def __init__(self, optimizer) -> None:
        self.zero_grad, self.step = optimizer.zero_grad, optimizer.step


def measure(name: str, data, epochs: int) -> dict:
    """Median epoch (the forms alternated epoch by epoch) and step (alternated batch by batch: each
    batch's gradients computed once per form, then that form's step timed) of both forms."""
    model, _, sampler, optimizer = training_setup(name, data)
    steps = {FORMS[0]: optimizer.step, FORMS[1]: lambda: adam_step(optimizer)}
    model.on_epoch_start(0)
    train_epoch(model, sampler, optimizer, 0, model.device)  # warm-up
    epoch = {form: [] for form in FORMS}
    step = {form: [] for form in FORMS}
    loads = []
    for r in range(epochs):
        order = FORMS if r % 2 == 0 else FORMS[::-1]
        for form in order:
            model.on_epoch_start(r + 1)
            c0 = time.thread_time()
            row = train_epoch(model, sampler, _Plain(optimizer) if form == FORMS[0] else optimizer, r + 1,
                              model.device)
            epoch[form].append((row["train_s"], time.thread_time() - c0))
        for b, batch in enumerate(sampler.epoch()):
            for form in (order if b % 2 == 0 else order[::-1]):
                optimizer.zero_grad(set_to_none=True)
                sum(model.batch_loss(batch).values()).backward()
                t0, c0 = time.perf_counter(), time.thread_time()
                steps[form]()
                step[form].append((time.perf_counter() - t0, time.thread_time() - c0))
        loads.append(os.getloadavg()[0])
    res = {form: {"epoch_s": statistics.median(x[0] for x in epoch[form]),
                  "epoch_cpu_s": statistics.median(x[1] for x in epoch[form]),
                  "step_ms": 1000 * statistics.median(x[0] for x in step[form]),
                  "step_cpu_ms": 1000 * statistics.median(x[1] for x in step[form])} for form in FORMS}
    return {"forms": res, "batches": len(sampler), "epochs": epochs, "load1": f"{min(loads):.1f}-{max(loads):.1f}"}


def markdown(res: dict) -> str:
    old, new = FORMS
    lines = ["# The trainer's direct fused-Adam step vs torch.optim's Adam.step", "",
             f"{res['machine']}; {res['threads']} thread(s); {res.get('date', '')}.", "",
             f"| dataset/model | step ms: {old} / {new} | step CPU ms | epoch s: {old} / {new} | epoch CPU s | "
             "epoch CPU speed-up | batches x epochs | 1-min load |", "|---|---|---|---|---|---|---|---|"]
    for key, r in res["rows"].items():
        a, b = r["forms"][old], r["forms"][new]
        lines.append(f"| {key} | {a['step_ms']:.2f} / {b['step_ms']:.2f} | {a['step_cpu_ms']:.2f} / {b['step_cpu_ms']:.2f} | "
                     f"{a['epoch_s']:.3f} / {b['epoch_s']:.3f} | "
                     f"{a['epoch_cpu_s']:.3f} / {b['epoch_cpu_s']:.3f} | {a['epoch_cpu_s'] / b['epoch_cpu_s']:.3f}x | "
                     f"{r['batches']} x {r['epochs']} | {r['load1']} |")
    lines += ["", "Epoch: the trainer's `train_epoch` with each step form, alternated epoch by epoch (the order "
              "switching every round), medians. Step: after each epoch pair, every batch's gradients computed once "
              "per form and that form's step timed, alternated batch by batch, medians. CPU: the thread's CPU "
              "time, which preemptions do not inflate. Both forms give the same parameters and optimiser state bit for bit "
              "(tests/test_train_adam_step.py, tests/test_trainer_steps.py)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    per_model_main("adam_step", measure, markdown, "bpr,vbpr,bm3",
                   lambda r: ", ".join(f"{f}: {v['epoch_cpu_s']:.3f} s CPU, step {v['step_ms']:.2f} ms"
                                       for f, v in r["forms"].items()))


if __name__ == "__main__":
    main()
