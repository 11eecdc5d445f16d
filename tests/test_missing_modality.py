"""Missing modalities: masks written by build and derive, loaded and imputed by load_dataset
(prismrec.data.features.impute_features), and the corruptions of benchmarks/robustness.py."""

import json

import numpy as np
import pandas as pd
import pytest

from prismrec.data import load_dataset
from prismrec.data.build import build_dataset
from prismrec.data.derive import corrupt_modality
from prismrec.data.features import impute_features, nearest_rows
from prismrec.data.synthetic import write_planted_dataset
from prismrec.errors import ConfigError, DatasetError

IMAGE = np.array([[1.0, 0.0], [9.0, 9.0], [3.0, 4.0], [5.0, 2.0]], dtype=np.float32)
TEXT = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [1.0, 0.9]], dtype=np.float32)
MASK = np.array([True, False, True, True])


def test_mean_and_zero_imputation_by_hand():
    filled, record = impute_features({"image": IMAGE, "text": TEXT}, {"image": MASK}, "mean")
    np.testing.assert_allclose(filled["image"][1], [(1 + 3 + 5) / 3, (0 + 4 + 2) / 3])
    np.testing.assert_array_equal(filled["image"][[0, 2, 3]], IMAGE[[0, 2, 3]])
    assert filled["text"] is TEXT and record == {"image": {"rows": 1, "method": "mean", "fallback_mean": 0}}
    zero, _ = impute_features({"image": IMAGE}, {"image": MASK}, "zero")
    np.testing.assert_array_equal(zero["image"][1], [0, 0])
    assert IMAGE[1, 0] == 9.0  # the input is not modified


def test_neighbour_imputation_by_hand():
    # Item 1's text (1, 1) is closest by cosine to item 3 (1, 0.9), then to items 0 and 2 (tied:
    # the lower id wins). With k=2 its image is the mean of the images of items 3 and 0.
    filled, record = impute_features({"image": IMAGE, "text": TEXT}, {"image": MASK}, "neighbour", k=2)
    np.testing.assert_allclose(filled["image"][1], (IMAGE[3] + IMAGE[0]) / 2)
    assert record["image"]["fallback_mean"] == 0
    np.testing.assert_array_equal(nearest_rows(TEXT[[1]], TEXT[[0, 2, 3]], 3), [[2, 0, 1]])
    # An item missing every modality falls back to the mean.
    both, record = impute_features({"image": IMAGE, "text": TEXT}, {"image": MASK, "text": np.arange(4) != 1},
                                   "neighbour", k=2)
    np.testing.assert_allclose(both["image"][1], IMAGE[[0, 2, 3]].mean(axis=0))
    assert record["image"]["fallback_mean"] == 1
    with pytest.raises(ConfigError, match="impute must be one of"):
        impute_features({"image": IMAGE}, {"image": MASK}, "median")


def test_build_writes_the_mask_and_load_dataset_imputes_it(tmp_path):
    raw = tmp_path / "raw.csv"
    rows = [(u, i) for u in ("a", "b", "c", "d") for i in ("p", "q", "r")]
    pd.DataFrame(rows, columns=["user", "item"]).to_csv(raw, index=False)
    np.savez(tmp_path / "img.npz", ids=np.array(["p", "r"]), vectors=np.array([[1.0, 0.0], [3.0, 4.0]]))
    np.savez(tmp_path / "txt.npz", ids=np.array(["p", "q", "r"]), vectors=np.array([[1.0, 0], [0, 1.0], [0.1, 1]]))
    folder = build_dataset(raw, tmp_path / "m", min_count=3, missing_features="mean", impute="neighbour",
                           item_features={"image": tmp_path / "img.npz", "text": tmp_path / "txt.npz"})
    np.testing.assert_array_equal(np.load(folder / "image_mask.npy"), [True, False, True])
    assert not (folder / "text_mask.npy").exists()
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["impute"] == "neighbour" and manifest["features"]["image"]["mask"] == "image_mask.npy"
    data = load_dataset(folder, impute_k=1)  # the folder's default: q's text (0, 1) is nearest to r's (0.1, 1)
    np.testing.assert_array_equal(data.feature_masks["image"], [True, False, True])
    assert list(data.feature_masks) == ["image"]
    np.testing.assert_allclose(data.features["image"].numpy()[1], [3.0, 4.0])
    assert data.manifest["imputation"]["image"] == {"rows": 1, "method": "neighbour", "fallback_mean": 0}
    np.testing.assert_allclose(load_dataset(folder).features["image"].numpy()[1], [2.0, 2.0])  # k=10: both
    np.testing.assert_allclose(load_dataset(folder, impute="mean").features["image"].numpy()[1], [2.0, 2.0])
    np.testing.assert_allclose(load_dataset(folder, impute="zero").features["image"].numpy()[1], [0.0, 0.0])
    with pytest.raises(ConfigError, match="impute: 'nope'"):
        load_dataset(folder, impute="nope")
    np.save(folder / "image_mask.npy", np.ones(5, dtype=bool))
    with pytest.raises(DatasetError, match=r"image_mask.npy: expected a boolean vector of 3 items"):
        load_dataset(folder)


def test_corruptions_drop_mask_and_noise(tmp_path):
    src = write_planted_dataset(tmp_path / "p", n_users=40, n_items=50, per_user=8, seed=1)
    small = corrupt_modality(src, "p-drop10", "image", "drop", 0.1, seed=4, impute="zero")
    large = corrupt_modality(src, "p-drop40", "image", "drop", 0.4, seed=4)
    mask_small, mask_large = np.load(small / "image_mask.npy"), np.load(large / "image_mask.npy")
    assert (~mask_small).sum() == 5 and (~mask_large).sum() == 20
    assert not (~mask_small & mask_large).any()  # a larger fraction drops a superset of the rows
    data = load_dataset(small)
    assert data.manifest["corruption"]["rows"] == 5 and data.manifest["impute"] == "zero"
    assert not data.features["image"].numpy()[~mask_small].any()
    np.testing.assert_array_equal(data.features["text"].numpy(), np.load(src / "text_feat.npy"))
    noisy = corrupt_modality(src, "p-noise40", "image", "noise", 0.4, seed=4)
    before, after = np.load(src / "image_feat.npy"), np.load(noisy / "image_feat.npy")
    changed = (before != after).any(axis=1)
    np.testing.assert_array_equal(changed, ~mask_large)  # the same seeded rows
    assert abs(after[changed].mean(axis=0) - before.mean(axis=0)).max() < 3 * before.std(axis=0).max() / np.sqrt(20) + 0.1
    assert not (noisy / "image_mask.npy").exists()
    with pytest.raises(ConfigError, match="has no audio_feat.npy"):
        corrupt_modality(src, "x", "audio", "drop", 0.1)
