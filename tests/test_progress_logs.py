"""What a researcher sees while and after a model trains: the per-epoch line (80 columns, ETA
from patience or the epoch cap), run.log in the run directory, curves.png, and that neither of
the two is hashed by the finish marker."""

import io
import json

import pytest

from prismrec.experiment.config import resolve_config
from prismrec.experiment.curves import write_curves
from prismrec.experiment.rundir import RunDir
from prismrec.experiment.runs import run_experiment
from prismrec.train.trainer import _Progress

ROW = {"loss": 0.6931, "valid_recall@20": 0.1234, "train_s": 2.0, "eval_s": 1.0}


def feed(progress, epochs, best_at):
    """Epochs 0..epochs-1; validation improves only at the epochs in ``best_at``."""
    best = -1
    for e in range(epochs):
        if e in best_at:
            best = e
        row = {**ROW, "epoch": e, f"valid_{progress.metric}": ROW["valid_recall@20"]}
        progress.update(row, best, 0.2)


def test_eta_is_bounded_by_patience_or_cap_and_says_which():
    p = _Progress(total=1000, patience=5, metric="recall@20", enabled=False)
    feed(p, 3, best_at={0})  # two epochs without improvement: 6 - 2 = 4 more at most
    left, bound = p.eta(2)
    assert (left, bound) == (4, "patience")
    assert "eta<=0:12 (patience)" in p.line({**ROW, "epoch": 2}, 0, 0.2)  # 4 epochs x 3 s
    q = _Progress(total=4, patience=20, metric="recall@20", enabled=False)
    feed(q, 2, best_at={0, 1})
    assert q.eta(1) == (2, "cap")
    assert "last epoch" in q.line({**ROW, "epoch": 3}, 1, 0.2)
    w = _Progress(total=1000, patience=5, metric="recall@20", enabled=False, min_epochs=50)
    feed(w, 3, best_at={0})  # patience alone would allow 4 more; the warm-up holds until epoch 50
    assert w.eta(2) == (47, "patience")


def test_plain_line_per_epoch_when_not_a_terminal_fits_80_columns():
    stream, sink = io.StringIO(), []
    p = _Progress(total=1000, patience=20, metric="precision@100", enabled=True, sink=sink.append,
                  stream=stream)
    with p:
        feed(p, 3, best_at={0, 2})
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3 and lines == sink
    assert "\r" not in stream.getvalue() and "\x1b" not in stream.getvalue()
    assert all(len(line) <= 80 for line in lines), lines
    assert lines[2].startswith("ep 3/1000 loss 0.6931 P@100 0.1234 best 0.2000@3")


def test_quiet_progress_still_feeds_the_log():
    stream, sink = io.StringIO(), []
    p = _Progress(total=10, patience=2, metric="recall@20", enabled=False, sink=sink.append, stream=stream)
    feed(p, 2, best_at={0})
    assert stream.getvalue() == "" and len(sink) == 2


def test_run_dir_has_run_log_and_curves_outside_the_finish_hashes(planted, tmp_path):
    cfg = resolve_config("lightgcn", "planted", {"epochs": 3, "threads": 1})
    out = tmp_path / "run"
    run_experiment(cfg, [3], out, dataset=planted, progress=False, log=lambda m: None)
    log = (out / "run.log").read_text().splitlines()
    assert "start: lightgcn on planted" in log[0]
    assert sum(" ep " in line for line in log) == 3
    assert "finished: reached epochs=3; best epoch" in log[-1]
    png = (out / "curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    marker = json.loads((out / "FINISHED").read_text())
    assert set(marker["files"]) == {"config.yaml", "metrics.json", "model.pt"}
    # the log and the picture are informative: changing them leaves the run finished and readable
    (out / "run.log").write_text("edited\n")
    (out / "curves.png").unlink()
    assert RunDir(out).is_finished()
    # --overwrite clears them with the rest of the run
    RunDir(out).clear()
    assert not (out / "run.log").exists()


def test_a_drawing_failure_never_fails_the_run(tmp_path):
    notes = []
    assert write_curves([], "recall@20", 0, tmp_path / "c.png", log=notes.append) is None
    assert write_curves([{"epoch": 0, "loss_bpr": 0.5, "valid_recall@20": 0.1}], "recall@20", 0,
                        tmp_path / "missing-folder" / "c.png", log=notes.append) is None
    assert len(notes) == 2 and all("curves.png not drawn" in n for n in notes)


def test_curves_mark_the_best_epoch(tmp_path):
    history = [{"epoch": e, "loss_bpr": 0.7 - 0.1 * e, "loss_reg": 1e-4, "loss": 0.7 - 0.1 * e,
                "valid_recall@20": v} for e, v in enumerate([0.1, 0.3, 0.2])]
    path = write_curves(history, "recall@20", 1, tmp_path / "c.png", "demo")
    assert path is not None and path.stat().st_size > 10_000
