"""Pieces of the speed benchmarks that must be right for their numbers to mean anything (nothing timed)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks.contention import matrix_markdown, parse_cells, passive_pair, result_name, run_cell
from benchmarks.floors import KernelRecorder, build, kind, replay
from benchmarks.peers import write_atomic_files
from prismrec.data import BPRSampler


def test_atomic_files_hold_the_same_split(planted, tmp_path):
    folder = write_atomic_files(planted, tmp_path)
    for split in ("train", "valid", "test"):
        lines = (folder / planted.name / f"{planted.name}.{split}.inter").read_text().splitlines()
        assert lines[0] == "user_id:token\titem_id:token"
        pairs = np.array([list(map(int, line.split("\t"))) for line in lines[1:]])
        m = getattr(planted, split).tocoo()
        assert sorted(map(tuple, pairs)) == sorted(zip(m.row.tolist(), m.col.tolist()))


def test_recorder_keeps_a_batchs_kernels_and_replays_them(planted):
    model, cfg = build("lightgcn", planted, {"n_layers": 2})
    batch = next(iter(BPRSampler(planted.train, 256, "train_items", 0).epoch()))
    with KernelRecorder() as rec:
        terms = model.batch_loss(batch)
        sum(terms.values()).backward()
    kinds = [kind(c) for c in rec.calls]
    assert kinds.count("sparse") >= 2 * 2 - 1  # forward layers (the last one row-restricted) and backward
    assert "gather" in kinds and "gemm" not in kinds  # LightGCN has no dense weight matrices
    grad = model.user_emb.weight.grad.clone()
    replay(rec.calls)  # bare: touches no parameter or gradient
    assert torch.equal(model.user_emb.weight.grad, grad)


def test_build_fakes_pretrained_items_at_their_size(planted):
    model, _ = build("egra", planted, {})
    assert model.pretrained_run == "random (floors benchmark)"


def test_interleaved_epoch_steps_once_per_batch_and_records_every_batch(planted):
    """Each batch is recorded (no step) and then run as the trainer runs it (one step): the model
    trains exactly as in a plain epoch, and the floor covers every batch."""
    from benchmarks.floors import interleaved_epoch

    model, cfg = build("lightgcn", planted, {"n_layers": 2})
    sampler = BPRSampler(planted.train, 256, "train_items", 0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    n_batches = sum(1 for _ in sampler.epoch())
    r = interleaved_epoch(model, sampler, optimizer, 1)
    assert r["batches"] == n_batches and r["calls"] > 0
    assert {"sparse", "gather"} <= set(r["kernels_s"])
    steps = {int(s["step"]) for s in optimizer.state.values()}
    assert steps == {n_batches}


def test_interleaved_rounds_alternate_the_order_and_keep_rounds_after_the_warmup():
    from benchmarks.common import interleaved_rounds, table_head

    calls, seen = [], []
    runs = {name: (lambda name=name: calls.append(name) or f"{name}{len(calls)}") for name in ("a", "b", "c")}
    got = interleaved_rounds(runs, 2, warmup=1, progress=lambda r, name, result: seen.append((r, name, result)))
    assert calls == ["a", "b", "c", "c", "b", "a", "a", "b", "c"]  # round 0 (warm-up) forward, then reversed
    assert got == {"a": ["a6", "a7"], "b": ["b5", "b8"], "c": ["c4", "c9"]}
    assert seen[:3] == [(0, "c", "c4"), (0, "b", "b5"), (0, "a", "a6")] and len(seen) == 6
    assert table_head("T", "note", ["x", "y"]) == ["# T", "", "note", "", "| x | y |", "|---|---|"]


def test_measure_reports_the_epoch_run_alone_over_the_same_floor(planted):
    """A floors row holds the interleaved ratio and the one of the training epoch run alone (its
    own uninterrupted epochs, each after a validation, as in a run), both over the same floor."""
    from benchmarks.floors import markdown, measure

    row = measure("bpr", planted, 1)
    floor = row["floor_train_cpu_s"] + row["floor_valid_cpu_s"]
    assert row["train_alone_cpu_s"] > 0
    assert abs(row["ratio_cpu_alone"] - (row["train_alone_cpu_s"] + row["valid_cpu_s"]) / floor) < 1e-12
    page = markdown({"models": {"bpr": row}, "dataset": planted.name, "machine": "m", "threads": 1, "date": "d"})
    line = next(x for x in page.splitlines() if x.startswith("| bpr |"))
    assert line.count("|") == page.splitlines()[4].count("|") and f"{row['ratio_cpu_alone']:.2f}" in line


def test_contention_cells_parse_or_name_the_bad_one():
    assert parse_cells("1/PASSIVE,2/gomp,auto/spin1000") == [("1", "PASSIVE"), ("2", "gomp"), ("auto", "spin1000")]
    for bad in ("gomp", "0/PASSIVE", "2/spin", "2/SLEEP", "two/ACTIVE"):
        with pytest.raises(ValueError, match=repr(bad)):
            parse_cells(f"1/PASSIVE,{bad}")


def test_contention_runs_of_other_datasets_or_models_keep_their_own_files():
    names = {result_name(d, m) for d in ("lfm2k", "tiktok") for m in ("lightgcn", "mgcn")}
    assert names == {"contention", "contention_tiktok", "contention_mgcn", "contention_tiktok_mgcn"}


def test_a_failed_contention_cell_stops_the_run_with_the_workers_last_line(monkeypatch):
    import subprocess
    from types import SimpleNamespace

    def failing(cmd, **kw):
        return subprocess.CompletedProcess(cmd, 1, "", "Traceback ...\nConfigError: freedom: set mm_weights\n")

    monkeypatch.setattr(subprocess, "run", failing)
    args = SimpleNamespace(dataset="lfm2k", model="freedom", epochs=1, cell_timeout=5.0)
    with pytest.raises(SystemExit, match="1/PASSIVE cell of freedom on lfm2k failed: ConfigError: freedom: set mm_"):
        run_cell(args, "1", "PASSIVE")


def test_contention_matrix_pairs_cells_by_the_threads_they_used():
    def cell(seconds, used):
        return {"epoch_s": seconds, "threads_used": [used]}

    old_auto = {"idle": {"1/PASSIVE": cell(0.1, 1), "auto/PASSIVE": cell(0.2, 2), "2/ACTIVE": cell(0.05, 2)},
                "busy": {"1/PASSIVE": cell(0.1, 1), "auto/PASSIVE": cell(0.3, 2)}}
    pair = passive_pair(old_auto)  # an "auto" cell from before the size rule used 2 threads
    assert pair["idle"][2]["epoch_s"] == 0.2 and pair["busy"][2]["epoch_s"] == 0.3
    assert passive_pair({"idle": {"1/PASSIVE": cell(0.1, 1), "2/ACTIVE": cell(0.05, 2)}}) is None
    text = matrix_markdown([{"dataset": "lfm2k", "model": "bpr", "nodes": 3283, "date": "d", "pair": pair},
                            {"dataset": "baby", "model": "bpr", "nodes": 26495, "date": "d", "pair": pair}])
    rows = [line for line in text.splitlines() if line.startswith("| lfm2k") or line.startswith("| baby")]
    assert rows[0].startswith("| lfm2k | 3,283 | bpr | 0.10 | 0.20 | 2.00 | 0.10 | 0.30 | 3.00 | 1 |")
    assert " | 2 | d |" in rows[1]  # auto picks two threads from 8,000 users + items up


def test_interleave_control_times_the_same_trainer_three_ways(planted):
    """The control's three ways each train one epoch a round (the work between batches kept apart:
    each batch is handed over after it, once), and the row's ratios are those of its medians."""
    from benchmarks.interleave_control import WAYS, Between, markdown, measure

    sampler = BPRSampler(planted.train, 256, "train_items", 0)
    work = []
    feed = Between(sampler, lambda: work.append(len(work)))
    assert sum(1 for _ in feed.epoch()) == len(work) == len(sampler) and feed.aside_cpu >= 0
    row = measure("bpr", planted, 2)
    assert set(row["train_cpu_s"]) == set(WAYS) and all(len(v) == 2 for v in row["rounds_cpu_s"].values())
    assert all(s > 0 for s in row["train_cpu_s"].values())
    # BPR-MF's kernels read its two tables (gathers), their zero-filled gradients and the batch's
    # B x 3 gradient rows (scatters), and the ids: between tables + rows and twice that
    tables, rows = (planted.n_users + planted.n_items) * 64 * 4 / 2**20, 3 * 2048 * 64 * 4 / 2**20
    assert tables + rows <= row["replay_inputs_mb"] <= 2 * (tables + rows)
    assert row["sweep_vs_alone"] == row["train_cpu_s"]["sweep"] / row["train_cpu_s"]["alone"]
    page = markdown({"rows": {"planted/bpr": row}, "machine": "m", "threads": 1, "date": "d"})
    line = next(x for x in page.splitlines() if x.startswith("| planted/bpr |"))
    assert f"({row['interleaved_vs_alone']:.2f})" in line
