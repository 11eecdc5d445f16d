import numpy as np
import pytest
import torch

from prismrec.data import DatasetError, list_datasets, load_dataset, resolve_data_dir

GOOD = "userID\titemID\tx_label\n0\t0\t0\n0\t1\t0\n0\t2\t1\n1\t1\t0\n1\t2\t2\n2\t0\t1\n"


def make(tmp_path, inter=GOOD, name="toy", feats=None):
    folder = tmp_path / name
    folder.mkdir()
    if inter is not None:
        (folder / f"{name}.inter").write_text(inter)
    for modality, array in (feats or {}).items():
        np.save(folder / f"{modality}_feat.npy", array)
    return folder


def test_good_folder_semantics(tmp_path):
    folder = make(tmp_path, feats={"image": np.ones((3, 4), dtype=np.float16), "text": np.eye(3, 2)})
    d = load_dataset(folder)
    assert (d.n_users, d.n_items) == (3, 3)
    assert d.train.toarray().tolist() == [[1, 1, 0], [0, 1, 0], [0, 0, 0]]
    assert d.valid.toarray().tolist() == [[0, 0, 1], [0, 0, 0], [0, 0, 0]]  # user 2 has no train row
    assert d.test.toarray().tolist() == [[0, 0, 0], [0, 0, 1], [0, 0, 0]]
    assert d.manifest["dropped_cold_start_rows"] == {"valid": 1, "test": 0}
    assert set(d.features) == {"image", "text"}
    assert all(f.dtype == np.float32 or str(f.dtype) == "torch.float32" for f in d.features.values())
    assert load_dataset(folder, modalities=["text"]).features.keys() == {"text"}


def test_optional_columns_are_ignored(tmp_path):
    inter = "userID\titemID\trating\ttimestamp\tx_label\n0\t0\t5\t1\t0\n0\t1\t4\t2\t2\n"
    d = load_dataset(make(tmp_path, inter))
    assert d.train.nnz == 1 and d.test.nnz == 1


def test_lookup_by_name_and_env(tmp_path, monkeypatch):
    make(tmp_path)
    monkeypatch.setenv("PRISMREC_DATA", str(tmp_path))
    assert resolve_data_dir() == tmp_path
    assert load_dataset("toy").n_users == 3
    assert [p.name for p in list_datasets()] == ["toy"]
    assert load_dataset("toy", data_dir=tmp_path).n_items == 3


# ---- the bad-input catalogue: one test per case, each error names file, place and fix


def test_missing_folder(tmp_path):
    with pytest.raises(DatasetError, match="not found.*userID"):
        load_dataset("nope", data_dir=tmp_path)


def test_missing_data_dir(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        resolve_data_dir(tmp_path / "absent")


def test_missing_inter(tmp_path):
    folder = make(tmp_path, inter=None)
    (folder / "other.inter").write_text(GOOD)
    with pytest.raises(DatasetError, match=r"toy\.inter is missing.*other\.inter.*rename"):
        load_dataset(folder)


def test_inter_that_is_a_folder(tmp_path):
    folder = make(tmp_path, inter=None)
    (folder / "toy.inter").mkdir()  # was "toy.inter is missing (found toy.inter; rename it to toy.inter)"
    with pytest.raises(DatasetError, match=r"toy\.inter is a folder, not a file"):
        load_dataset(folder)


def test_missing_column(tmp_path):
    with pytest.raises(DatasetError, match="missing column.*x_label"):
        load_dataset(make(tmp_path, "userID\titemID\n0\t0\n"))


def test_non_integer_id(tmp_path):
    with pytest.raises(DatasetError, match=r"line 3, column itemID: 'b' is not an integer"):
        load_dataset(make(tmp_path, "userID\titemID\tx_label\n0\t0\t0\n0\tb\t0\n"))


def test_fractional_id(tmp_path):
    with pytest.raises(DatasetError, match=r"line 2, column userID: '0.5' is not an integer"):
        load_dataset(make(tmp_path, "userID\titemID\tx_label\n0.5\t0\t0\n"))


def test_empty_id(tmp_path):
    with pytest.raises(DatasetError, match=r"line 3, column userID"):
        load_dataset(make(tmp_path, "userID\titemID\tx_label\n0\t0\t0\n\t1\t0\n"))


def test_negative_id(tmp_path):
    with pytest.raises(DatasetError, match=r"line 3, column userID: negative id -1"):
        load_dataset(make(tmp_path, "userID\titemID\tx_label\n0\t0\t0\n-1\t1\t0\n"))


def test_bad_label(tmp_path):
    with pytest.raises(DatasetError, match=r"line 3, column x_label: value 3 is not 0, 1 or 2"):
        load_dataset(make(tmp_path, "userID\titemID\tx_label\n0\t0\t0\n0\t1\t3\n"))


def test_empty_train_split(tmp_path):
    with pytest.raises(DatasetError, match="train split is empty"):
        load_dataset(make(tmp_path, "userID\titemID\tx_label\n0\t0\t1\n0\t1\t2\n"))


def test_no_rows(tmp_path):
    with pytest.raises(DatasetError, match="no rows"):
        load_dataset(make(tmp_path, "userID\titemID\tx_label\n"))


def test_duplicate_pairs(tmp_path):
    inter = "userID\titemID\tx_label\n0\t0\t0\n1\t1\t0\n0\t0\t2\n"
    with pytest.raises(DatasetError, match=r"duplicate .* \(0, 0\) at lines 2 and 4 \(1 duplicate"):
        load_dataset(make(tmp_path, inter))


def test_feature_rows_mismatch(tmp_path):
    folder = make(tmp_path, feats={"image": np.ones((2, 4), dtype=np.float32)})
    with pytest.raises(DatasetError, match=r"image_feat\.npy: 2 rows .* implies 3 items"):
        load_dataset(folder)


def test_feature_nan(tmp_path):
    array = np.ones((3, 4), dtype=np.float32)
    array[2, 1] = np.nan
    with pytest.raises(DatasetError, match=r"non-finite value nan \(as float32\) at row 2 \(item 2\), column 1"):
        load_dataset(make(tmp_path, feats={"text": array}))


def test_feature_inf(tmp_path):
    array = np.ones((3, 4))
    array[1, 3] = np.inf
    with pytest.raises(DatasetError, match=r"non-finite value inf \(as float32\) at row 1"):
        load_dataset(make(tmp_path, feats={"text": array}))


def test_feature_not_2d(tmp_path):
    with pytest.raises(DatasetError, match=r"expected a 2-D array .* shape \(3,\)"):
        load_dataset(make(tmp_path, feats={"audio": np.ones(3)}))


def test_feature_not_numeric(tmp_path):
    with pytest.raises(DatasetError, match="not numeric"):
        load_dataset(make(tmp_path, feats={"audio": np.array([["a"], ["b"], ["c"]])}))


def test_feature_not_npy(tmp_path):
    folder = make(tmp_path)
    (folder / "image_feat.npy").write_bytes(b"\x00\x01binary")
    with pytest.raises(DatasetError, match=r"image_feat\.npy is not a NumPy \.npy file: it has another binary"):
        load_dataset(folder)


def test_feature_csv_named_npy_is_named_a_text_file_not_a_pickle(tmp_path):
    folder = make(tmp_path)
    (folder / "image_feat.npy").write_text("0.1,0.2\n0.3,0.4\n0.5,0.6\n")
    with pytest.raises(DatasetError, match=r"image_feat\.npy is not a NumPy \.npy file: it is a text file") as info:
        load_dataset(folder)
    assert "pickle" not in str(info.value)


def test_feature_object_array_is_not_a_pickle_hint(tmp_path):
    folder = make(tmp_path)
    np.save(folder / "image_feat.npy", np.array([[1, "a"]] * 3, dtype=object), allow_pickle=True)
    with pytest.raises(DatasetError, match="holds Python objects, not numbers") as info:
        load_dataset(folder)
    assert "allow_pickle" not in str(info.value)


def test_feature_zero_width_names_the_file(tmp_path):
    with pytest.raises(DatasetError, match=r"image_feat\.npy: the feature matrix has 3 rows but zero columns"):
        load_dataset(make(tmp_path, feats={"image": np.ones((3, 0), dtype=np.float32)}))


def test_feature_all_zero_is_a_warning_naming_the_file(tmp_path):
    folder = make(tmp_path, feats={"image": np.zeros((3, 4), dtype=np.float32)})
    with pytest.warns(UserWarning, match=r"image_feat\.npy: every feature value is zero"):
        data = load_dataset(folder)
    assert data.features["image"].shape == (3, 4)


def test_latin1_byte_names_the_line(tmp_path):
    folder = make(tmp_path, inter=None)
    (folder / "toy.inter").write_bytes(GOOD.encode().replace(b"1\t1\t0", b"1\t1\xe9\t0"))
    with pytest.raises(DatasetError, match=r"toy\.inter, line 5, byte 4: byte 0xe9 is not UTF-8"):
        load_dataset(folder)


def test_huge_id_is_refused_before_allocating(tmp_path):
    with pytest.raises(DatasetError, match=r"line 3, column itemID: id 99999999999 is far above the row count"):
        load_dataset(make(tmp_path, GOOD.replace("0\t1\t0", "0\t99999999999\t0")))


def test_requested_modality_missing(tmp_path):
    folder = make(tmp_path, feats={"image": np.ones((3, 2))})
    with pytest.raises(DatasetError, match=r"text_feat\.npy not found \(present: image\)"):
        load_dataset(folder, modalities=["image", "text"])


# ---- the real data


@pytest.mark.parametrize(
    "name, users, items, splits",
    [
        ("baby", 19445, 7050, (118551, 20559, 21682)),
        ("tiktok", 9308, 6710, (59541, 3046, 6125)),  # 10 cold-start users' rows dropped
        ("lfm2k", 1858, 1425, (44327, 4799, 7219)),
    ],
)
def test_real_datasets(real_data_dir, name, users, items, splits):
    d = load_dataset(name, real_data_dir)
    assert (d.n_users, d.n_items) == (users, items)
    assert (d.train.nnz, d.valid.nnz, d.test.nnz) == splits
    for f in d.features.values():
        assert f.shape[0] == items and str(f.dtype) == "torch.float32"


def test_manifest_that_is_not_an_object(tmp_path):
    folder = make(tmp_path)
    (folder / "manifest.json").write_text("[1, 2]")
    with pytest.raises(DatasetError, match=r"manifest\.json must hold a JSON object, got a list"):
        load_dataset(folder)


def test_float_id_beyond_int64_is_not_an_integer(tmp_path):
    with pytest.raises(DatasetError, match=r"line 2, column itemID: '1e300' is not an integer"):
        load_dataset(make(tmp_path, GOOD.replace("0\t0\t0", "0\t1e300\t0")))


def test_feature_beyond_float32_is_named(tmp_path):
    array = np.ones((3, 2))
    array[1, 0] = 1e300
    with pytest.raises(DatasetError, match=r"non-finite value inf \(as float32\) at row 1 \(item 1\), column 0"):
        load_dataset(make(tmp_path, feats={"image": array}))


# ---- large files: features converted once, in blocks; integer ids read without text


def test_float64_features_are_loaded_without_a_float64_copy(tmp_path, monkeypatch):
    import tracemalloc

    import prismrec.data.dataset as dataset_module

    monkeypatch.setattr(dataset_module, "_FEATURE_BLOCK_BYTES", 80_000)  # one row per block
    array = np.random.default_rng(0).standard_normal((10, 20_000))  # float64 on disk: 1.6 MB
    folder = make(tmp_path, GOOD + "2\t9\t0\n", feats={"image": array})  # items 0..9
    tracemalloc.start()
    try:
        data = load_dataset(folder)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert data.features["image"].dtype == torch.float32
    assert np.array_equal(data.features["image"].numpy(), array.astype(np.float32))
    # the float32 result (0.8 MB) plus one row read (0.16 MB), its flags and the .inter file's
    # tables (~0.3 MB); reading the whole float64 array first would peak at 1.6 + 0.8 MB
    assert peak < array.nbytes, peak


def test_non_finite_feature_in_a_later_block_names_its_row(tmp_path, monkeypatch):
    import prismrec.data.dataset as dataset_module

    monkeypatch.setattr(dataset_module, "_FEATURE_BLOCK_BYTES", 16)  # one row (4 float32) per block
    array = np.ones((3, 4))
    array[2, 1] = np.nan
    array[2, 3] = 1e300
    with pytest.raises(DatasetError, match=r"nan \(as float32\) at row 2 \(item 2\), column 1 \(1 rows affected\)"):
        load_dataset(make(tmp_path, feats={"text": array}))


def test_integer_fast_path_and_text_path_read_the_same(tmp_path):
    plain = load_dataset(make(tmp_path, name="plain"))
    # an exponent ("1e0") sends the file through the text path; the split is the same
    odd = GOOD.replace("0\t1\t0\n", " 0\t1e0\t0\n").replace("1\t2\t2", "1\t+2\t2")
    texty = load_dataset(make(tmp_path, odd, name="texty"))
    for split in ("train", "valid", "test"):
        assert (plain.split(split) != texty.split(split)).nnz == 0
