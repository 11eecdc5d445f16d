"""The benchmark-size synthetic generator: counts, degree shape, MMRec split, seeding, atomicity."""

import numpy as np
import pytest
from typer.testing import CliRunner

from prismrec.cli import app
from prismrec.data import load_dataset
from prismrec.data.synthetic import (
    MIN_DEGREE, SIZES, powerlaw_degrees, powerlaw_interactions, split_labels, split_labels_vectorised,
    write_sized_dataset,
)


def test_powerlaw_degrees_hit_the_total_keep_the_floor_and_have_a_heavy_tail():
    rng = np.random.default_rng(0)
    deg = powerlaw_degrees(20_000, 300_000, 1.25, rng, high=5_000)
    assert deg.sum() == 300_000 and deg.min() >= MIN_DEGREE and deg.max() <= 5_000
    assert deg.max() > 50 * np.median(deg)  # a power law, not a Poisson
    with pytest.raises(ValueError):
        powerlaw_degrees(10, 20, 2.0, rng)


def test_vectorised_split_labels_are_mmrecs_rule_per_user():
    users = np.repeat(np.arange(6), [3, 5, 9, 10, 17, 40])
    labels = split_labels_vectorised(users)
    for u in range(6):
        assert labels[users == u].tolist() == split_labels(int((users == u).sum())).tolist()


def test_interactions_are_unique_grouped_seeded_and_clustered():
    users, items, labels, cluster = powerlaw_interactions(2_000, 600, 20_000, seed=3)
    assert len(np.unique(users * 600 + items)) == len(users) > 0.98 * 20_000
    assert np.all(np.diff(users) >= 0)  # grouped by user
    again = powerlaw_interactions(2_000, 600, 20_000, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip((users, items, labels, cluster), again))
    # most of a user's items share a cluster: a model has something to learn
    top_share = np.mean([np.bincount(cluster[items[users == u]]).max() / (users == u).sum() for u in range(200)])
    assert top_share > 0.3  # 20 clusters: about 0.1 by chance


def test_sized_folder_loads_with_the_real_shape(tmp_path):
    folder = write_sized_dataset(tmp_path / "electronics", "electronics", scale=0.005, seed=1)
    data = load_dataset(folder)
    spec = SIZES["electronics"]
    assert data.n_users == round(spec["n_users"] * 0.005) and data.n_items == round(spec["n_items"] * 0.005)
    assert {k: v.shape[1] for k, v in data.features.items()} == spec["modalities"]
    assert all(v.dtype.is_floating_point and v.element_size() == 4 for v in data.features.values())
    assert [p.name for p in tmp_path.iterdir()] == ["electronics"]  # no partial folder left
    with pytest.raises(FileExistsError):
        write_sized_dataset(folder, "electronics", scale=0.005)


def test_a_killed_synths_leftover_is_removed_by_the_next_one(tmp_path):
    """A killed synth left its hidden .<name>.partial-<pid> folder (up to ~1.2 GB at Electronics
    size) for ever; like build's, a dead process's temporary folder now goes with the next run."""
    import subprocess
    import sys

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    leftover = tmp_path / f".tiny.building-{dead.pid}"
    leftover.mkdir()
    (leftover / "tiny.inter").write_text("partial")
    write_sized_dataset(tmp_path / "tiny", "baby", scale=0.01, seed=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny"]
    write_sized_dataset(tmp_path / "tiny", "baby", scale=0.01, seed=2, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny"] and load_dataset(tmp_path / "tiny").n_users


def test_cli_synth(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["synth", "baby", "--out", str(tmp_path / "b"), "--scale", "0.01"])
    assert result.exit_code == 0, result.output
    assert "194 users" in result.output
    result = runner.invoke(app, ["synth", "huge", "--out", str(tmp_path / "c")])
    assert result.exit_code == 2 and "choose one of tiktok, baby, electronics" in result.output
