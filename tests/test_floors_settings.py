"""The per-dataset settings the speed benchmarks give each model resolve; FFTs and random draws count as kernels."""

import pytest
import torch

from benchmarks.floors import SETTINGS, KernelRecorder, kind, replay, settings
from prismrec.experiment.config import resolve_config


@pytest.mark.parametrize("model,dataset", [(m, d) for m, per in SETTINGS.items() for d in per])
def test_benchmark_settings_resolve(model, dataset):
    config = resolve_config(model, dataset, settings(model, dataset))
    assert config.params.modalities == {"tiktok": ["image", "audio"], "lfm2k": ["text", "audio"]}[dataset]


def test_role_settings_keep_the_first_modality_in_the_image_part():
    assert settings("smore", "lfm2k")["modality_roles"] == ["image", "text"]
    assert settings("mmgcn", "tiktok")["modality_roles"] == ["image", "text"]
    assert settings("lgmrec", "lfm2k")["hcl_order"] == ["text", "audio"]
    assert settings("bpr", "lfm2k") == {}  # no modalities field, nothing added


def test_ffts_are_recorded_as_their_own_kernel():
    x = torch.randn(8, 16)
    with KernelRecorder() as rec:
        torch.fft.irfft(torch.fft.rfft(x, dim=-1) * 2, n=16, dim=-1)
        x @ x.T
    assert [kind(c) for c in rec.calls].count("fft") == 2 and "gemm" in [kind(c) for c in rec.calls]


def test_random_draws_are_recorded_as_their_own_kernel_and_replay_bare():
    x = torch.randn(8, 16, requires_grad=True)
    with KernelRecorder() as rec:
        mask = torch.rand(8, 16) >= 0.5  # BM3's mask
        y = torch.nn.functional.dropout(x, 0.5, training=True) * mask  # F.dropout's bernoulli_
        noise = torch.empty(8, 16).normal_()  # a perturbation's draw
        (y + noise).sum().backward()
    kinds = [kind(c) for c in rec.calls]
    assert kinds.count("random") == 3, kinds
    drawn = rec.calls[kinds.index("random", 2)][1][0]  # normal_'s tensor: refilled by the replay
    before = drawn.clone()
    replay([c for c in rec.calls if kind(c) == "random"])
    assert not torch.equal(drawn, before)


def test_batch_anatomy_groups_every_computing_operator_and_skips_views():
    from benchmarks.batch_anatomy import computes, group

    x = torch.randn(8, 16, requires_grad=True)
    with KernelRecorder(computes) as rec:
        ((x @ x.T).t() * 2).sum().backward()
    groups = [group(c) for c in rec.calls]
    assert "gemm" in groups and "op:mul:8x8" in groups and "op:sum:8x8" in groups  # name:argument shapes
    assert not any(g.split(":")[:2] in (["op", "t"], ["op", "transpose"], ["op", "expand"]) for g in groups)


def test_floors_ab_after_side_takes_only_the_named_files(tmp_path):
    """``floors_ab --paths``: the 'after' package is the 'before' one with only those files from 'after'
    (0f0256a changed both losses.py and models/lattice.py; only losses.py is taken)."""
    import subprocess

    from benchmarks.floors_ab import ROOT, extract

    before, after = "82b7b4f", "0f0256a"
    if subprocess.run(["git", "cat-file", "-e", f"{after}^{{commit}}"], cwd=ROOT, capture_output=True).returncode:
        pytest.skip("needs a git checkout with the history of the speed work")

    def show(rev, path):
        return subprocess.run(["git", "show", f"{rev}:{path}"], cwd=ROOT, capture_output=True, check=True).stdout

    tree = extract(after, extract(before, tmp_path / "mixed"), ("prismrec/losses.py",))
    assert show(before, "prismrec/models/lattice.py") != show(after, "prismrec/models/lattice.py")
    assert (tree / "prismrec" / "losses.py").read_bytes() == show(after, "prismrec/losses.py")
    assert (tree / "prismrec" / "models" / "lattice.py").read_bytes() == show(before, "prismrec/models/lattice.py")


def test_floors_ab_per_batch_imports_two_versions_side_by_side(tmp_path):
    """``floors_ab --per-batch``: two packages in one process, each with its own copy of the floors
    script bound to it (run in a fresh interpreter: it takes the imported modules out of sys.modules)."""
    import subprocess
    import sys

    from benchmarks.floors_ab import ROOT, extract

    if subprocess.run(["git", "cat-file", "-e", "HEAD^{commit}"], cwd=ROOT, capture_output=True).returncode:
        pytest.skip("needs a git checkout")
    trees = [str(extract("HEAD", tmp_path / side)) for side in ("before", "after")]
    code = f"""
import sys
sys.path[:0] = [{str(ROOT)!r}]
from benchmarks.floors_ab import load_version
a, b = (load_version(t) for t in {trees!r})
assert a["prismrec"] is not b["prismrec"] and a["prismrec"].__file__.startswith({trees[0]!r})
assert b["prismrec"].__file__.startswith({trees[1]!r})
for v in (a, b):
    assert v["benchmarks.floors"].BPRSampler is v["prismrec.data"].BPRSampler
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.stdout.strip() == "ok", done.stderr[-2000:]


def test_floors_ab_turns_alternate_the_batches_and_stop_on_a_failure():
    """``floors_ab --per-batch``: the two trainers' epochs take turns batch by batch (before first on
    even batches), each batch timed once; a side that fails stops both, its error raised."""
    from functools import partial

    from benchmarks.floors_ab import Turns

    turns, seen = Turns(3), []

    def epoch(side, fail_at=None):
        for batch in turns.sampler(side, [0, 1, 2]).epoch():
            if batch == fail_at:
                raise ValueError(side)
            seen.append((side, batch))

    turns.run({side: partial(epoch, side) for side in Turns.SIDES})
    assert seen == [("before", 0), ("after", 0), ("after", 1), ("before", 1), ("before", 2), ("after", 2)]
    assert [len(turns.ms[side]) for side in Turns.SIDES] == [3, 3]
    turns = Turns(3)
    with pytest.raises(ValueError, match="after"):
        turns.run({"before": partial(epoch, "before"), "after": partial(epoch, "after", fail_at=1)})
