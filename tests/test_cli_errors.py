"""Bad input to the CLI: one clean line (what, where, how to fix), exit code 2, nothing half-written.

Each case is a command line with placeholders ({data}: the data directory holding ``planted`` and
the broken datasets below, {run}: a finished run, {tmp}: an empty scratch folder) and a pattern
the single error line must match.
"""

import re
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from prismrec.cli import app
from prismrec.errors import ModelRefused
from prismrec.experiment.compare import run_compare
from prismrec.experiment.config import resolve_config
from prismrec.experiment.runs import run_experiment

runner = CliRunner()


@pytest.fixture(scope="module")
def data_dir(planted_dir, tmp_path_factory):
    """``planted`` plus copies broken in one way each (by name)."""
    import shutil

    root = tmp_path_factory.mktemp("bad-data")
    shutil.copytree(planted_dir, root / "planted")

    def copy(name):
        folder = root / name
        shutil.copytree(planted_dir, folder)
        (folder / "planted.inter").rename(folder / f"{name}.inter")
        return folder

    lines = (copy("latin") / "latin.inter").read_bytes().split(b"\n")
    lines[4] += b"\xe9"
    (root / "latin" / "latin.inter").write_bytes(b"\n".join(lines))
    (copy("csvnpy") / "image_feat.npy").write_text("0.1,0.2\n0.3,0.4\n")
    n_items = np.load(planted_dir / "image_feat.npy").shape[0]
    np.save(copy("zerowidth") / "image_feat.npy", np.zeros((n_items, 0), dtype=np.float32))
    np.save(copy("allzero") / "image_feat.npy", np.zeros((n_items, 16), dtype=np.float32))
    (copy("imageonly") / "text_feat.npy").unlink()
    header, *rows = (copy("novalid") / "novalid.inter").read_text().splitlines()
    relabelled = [row[:-1] + "0" if row.endswith("\t1") else row for row in rows]  # valid rows -> train
    (root / "novalid" / "novalid.inter").write_text("\n".join([header, *relabelled]) + "\n")
    return root


def _one_epoch_run(model: str, data_dir, tmp_path_factory):
    from prismrec.data import load_dataset

    run = tmp_path_factory.mktemp("runs") / model
    run_experiment(resolve_config(model, "planted", {"epochs": 1, "threads": 1}), [5], run,
                   dataset=load_dataset(data_dir / "planted"), progress=False)
    return run


@pytest.fixture(scope="module")
def finished_run(data_dir, tmp_path_factory):
    return _one_epoch_run("lightgcn", data_dir, tmp_path_factory)


@pytest.fixture(scope="module")
def other_run(data_dir, tmp_path_factory):
    """A second finished run on ``planted`` (BPR), for commands that take two runs."""
    return _one_epoch_run("bpr", data_dir, tmp_path_factory)


def invoke(args, data_dir, run, tmp, run2=None):
    args = [a.format(data=data_dir, run=run, tmp=tmp, run2=run2) for a in args]
    return runner.invoke(app, args)


BARE = ["train", "--model", "lightgcn", "--dataset", "planted", "--data-dir", "{data}", "--out", "{tmp}/run"]
TRAIN = BARE + ["--set", "epochs=1", "--set", "threads=1"]

CASES = {
    # settings, checked before any data is read or anything trained
    "epochs=0": (BARE + ["--set", "threads=1", "--set", "epochs=0"], r"setting epochs=0 is invalid: .*whole number >= 1"),
    "epochs=-1": (BARE + ["--set", "threads=1", "--set", "epochs=-1"], r"setting epochs=-1 is invalid"),
    "batch_size=0": (TRAIN + ["--set", "batch_size=0"], r"setting batch_size=0 is invalid"),
    "topk=0": (TRAIN + ["--set", "topk=0"], r"^error: setting topk=\(0,\) is invalid"),
    "patience<0": (TRAIN + ["--set", "patience=-2"], r"setting patience=-2 is invalid"),
    "threads<0": (BARE + ["--set", "epochs=1", "--set", "threads=-1"], r"setting threads=-1 is invalid"),
    "lr=0": (TRAIN + ["--set", "lr=0"], r"setting lr=0.0 is invalid"),
    "eval_batch_size=0": (TRAIN + ["--set", "eval_batch_size=0"], r"setting eval_batch_size=0 is invalid"),
    "device=tpu": (TRAIN + ["--set", "device=tpu"], r"device='tpu' is invalid: the device must be one of cpu"),
    "device=cuda:": (TRAIN + ["--set", "device=cuda:"],
                     r"^error: device must be a string, got \{'cuda': None\} \(YAML reads 'cuda:' as a mapping: "),
    "valid_metric": (TRAIN + ["--set", "valid_metric=recall@7"], r"valid_metric='recall@7' is invalid"),
    "unknown key": (TRAIN + ["--set", "layers=2"], r"unknown setting\(s\) layers .*n_layers"),
    "bad --set": (TRAIN + ["--set", "lr"], r"--set expects key=value, got 'lr'"),
    # a key given twice: the later value was used, silently
    "--set a key twice": (TRAIN + ["--set", "lr=0.01", "--set", "lr=0.001"],
                          r"^error: --set lr given twice \(lr=0\.01, lr=0\.001\): give it once$"),
    "--set epochs twice": (TRAIN + ["--set", "epochs=0"], r"^error: --set epochs given twice \(epochs=1, epochs=0\)"),
    # a --config file and a --set of the same key: the --set overrides the file (the README's order), no error
    "--config and --set of one key": (BARE + ["--config", "{tmp}/epochs.yaml", "--set", "epochs=0"],
                                      r"^error: setting epochs=0 is invalid"),
    "ill-typed": (TRAIN + ["--set", "lr=fast"], r"lr must be a number, got 'fast'"),
    # the folders made above a new --out were left behind, empty
    "refused on the data, --out in new folders": (["train", "--model", "mgcn", "--dataset", "planted", "--data-dir",
                                                   "{data}", "--out", "{tmp}/new/runs/run", "--set", "knn_k=500",
                                                   "--quiet"], r"model 'mgcn' rejects its settings: knn_k=500"),
    "unknown model": (["train", "--model", "lightgcm", "--dataset", "planted", "--data-dir", "{data}"],
                      r"unknown model 'lightgcm'; registered: .*lightgcn"),
    "empty model": (["train", "--model", "", "--dataset", "planted"], r"model name '' is empty"),
    "unknown dataset": (["train", "--model", "bpr", "--dataset", "nope", "--data-dir", "{data}"],
                        r"dataset 'nope' not found in .*available: .*planted"),
    "empty dataset": (["train", "--model", "bpr", "--dataset", "", "--data-dir", "{data}"], "dataset name is empty"),
    "missing data dir": (["train", "--model", "bpr", "--dataset", "x", "--data-dir", "{tmp}/none"],
                         r"data directory .*none does not exist"),
    "model too large": (TRAIN + ["--set", "embedding_size=99999999999", "--quiet"],  # was torch's RuntimeError
                        r"model 'lightgcn' does not fit in memory on 'planted' with its settings \([\d,.]+ GiB were asked"),
    # mmgcn said "... does not fit in memory ... with its settings (); lower the sizes you set (embedding_size, ...)"
    "model too deep": (["train", "--model", "mmgcn", "--dataset", "planted", "--data-dir", "{data}", "--out", "{tmp}/run",
                        "--set", "n_layers=1000000000000", "--quiet"],
                       r"^error: setting n_layers=1000000000000 is invalid: a layer count must be at most 1,000"),
    # trained forever (no error, no end); a search range drew such a count
    "lightgcn too deep": (TRAIN + ["--set", "n_layers=1e12", "--quiet"], r"setting n_layers=1000000000000 is invalid"),
    "tune: a range of layer counts": (["tune", "--model", "lightgcn", "--dataset", "planted", "--data-dir", "{data}",
                                       "--out", "{tmp}/t", "--space", "n_layers=1..1e20"],
                                      r"setting n_layers=100000000000000000000 is invalid: a layer count must be at"),
    "model's own check": (TRAIN + ["--set", "n_layers=-1", "--quiet"], r"model 'lightgcn' rejects its settings: n_layers"),
    "modalities twice": (["train", "--model", "gume", "--dataset", "planted", "--data-dir", "{data}", "--out",
                          "{tmp}/run", "--set", "epochs=1", "--set", "modalities=[image,image]", "--quiet"],
                         # was trained, image used as two modalities (gume's "at least 2" passed)
                         r"model 'gume' rejects its settings: modalities=\['image', 'image'\] names image more than "
                         r"once: list each modality once, e.g. --set modalities=\[image\]"),
    "--seeds abc": (TRAIN + ["--seeds", "abc"], r"--seeds 'abc': 'abc' is not a whole number.*--n-seeds"),
    "--seeds empty": (TRAIN + ["--seeds", ""], r"--seeds '' holds no seed"),
    "--seeds and --n-seeds": (TRAIN + ["--seeds", "1", "--n-seeds", "2"], "not both"),
    "--n-seeds 0": (TRAIN + ["--n-seeds", "0"], r"--n-seeds must be a whole number from 1 to 100"),
    "broken yaml": (TRAIN + ["--config", "{tmp}/broken.yaml"], r"config file .*broken\.yaml, line 2, column 1: not valid YAML"),
    "a key twice in yaml": (TRAIN + ["--config", "{tmp}/twice.yaml"],  # was the last one, silently
                            r"twice\.yaml, line 3, column 3: .*the key 'lr' is given twice in one section"),
    "missing yaml": (TRAIN + ["--config", "{tmp}/nope.yaml"], r"config file .*nope\.yaml does not exist"),
    "--set model": (TRAIN + ["--set", "model=mgcn"], r"--set model=mgcn: choose the model with the --model option"),
    "--set seed": (TRAIN + ["--set", "seed=5"], r"--set seed=5: choose seeds with --seeds"),
    "--out ''": (TRAIN[:-4] + ["--out", ""], r"--out '\.': give a folder path for the run directory"),
    "seed in a --config file": (TRAIN + ["--config", "{tmp}/seed.yaml"],  # was ignored: trained with seed 999
                                r"config file .*seed\.yaml sets seed: 42, but seeds are chosen on the command line"),
    "another model's config": (TRAIN + ["--config", "{tmp}/mgcn.yaml"], r"the settings name model 'mgcn' but model 'lightgcn'"),
    "egra: missing pretrained run": (["train", "--model", "egra", "--dataset", "planted", "--data-dir", "{data}", "--out",
                                      "{tmp}/run", "--set", "pretrained={tmp}/nope", "--quiet"],
                                     r"pretrained='.*nope' is not a directory"),
    "egra: pre_model with a pretrained run": (["train", "--model", "egra", "--dataset", "planted", "--data-dir", "{data}",
                                               "--out", "{tmp}/run", "--set", "pretrained={run}", "--set",
                                               "pre_model=freedom", "--quiet"],  # was ignored: P from {run}
                                              r"pre_model='freedom' only acts in the stage-1 training of "
                                              r"pretrained=auto, but pretrained='.*lightgcn' takes P from that run"),
    "egra: pre_model=egra": (["train", "--model", "egra", "--dataset", "planted", "--data-dir", "{data}", "--out",
                              "{tmp}/run", "--set", "pre_model=egra", "--quiet"],  # was a nested grid of EGRA runs
                             r"pre_model='egra' needs pretrained representations itself"),
    # were found once stage 1 had trained (a pretraining grid, hours on a real dataset) and filled the cache
    "egra: knn_k above the items, before stage 1": (["train", "--model", "egra", "--dataset", "planted", "--data-dir",
                                                     "{data}", "--out", "{tmp}/run", "--set", "knn_k=500", "--set",
                                                     "pretrain_cache={tmp}/cache", "--quiet"],
                                                    r"model 'egra' rejects its settings: knn_k=500 exceeds the number "
                                                    r"of items \(200\)$"),
    "egra: k_pre above the items": (["train", "--model", "egra", "--dataset", "planted", "--data-dir", "{data}", "--out",
                                     "{tmp}/run", "--set", "k_pre=200", "--set", "pretrain_cache={tmp}/cache",
                                     "--quiet"],  # was "k must be between 1 and 199 ..."
                                    r"k_pre=200 exceeds the other items \(199\): B_pre links each item to k_pre others$"),
    "--track ''": (TRAIN + ["--track", "", "--quiet"], r"--track '' names no target"),  # was: no tracking, silently
    "--track mlflow:": (TRAIN + ["--track", "mlflow:", "--quiet"],  # was a local store in a folder named 'mlflow:'
                        r"--track 'mlflow:': 'mlflow:' is not a tracking target prismrec knows"),
    "--track a file": (TRAIN + ["--track", "{tmp}/file", "--quiet"],  # was "FILE: File exists"
                       r"--track .*file: .*file is an existing file, not a folder"),
    # was "FILE/run: Not a directory"
    "--track tensorboard:a file": (TRAIN + ["--track", "tensorboard:{tmp}/file", "--quiet"],
                                   r"--track tensorboard:.*file: .*file is an existing file, not a folder"),
    "--out is a file": (TRAIN[:-4] + ["--out", "{tmp}/file"], r"--out .*file is an existing file, not a folder"),
    "--out under a file": (TRAIN[:-4] + ["--out", "{tmp}/file/run"],  # was the bare "FILE/run: Not a directory"
                           r"--out .*file/run: .*file is a file, not a folder; give a folder path for the run"),
    "compare: --out under a file": (["compare", "--models", "bpr", "--datasets", "planted", "--data-dir", "{data}",
                                     "--out", "{tmp}/file/c", "--seeds", "1"], r"--out .*file/c: .*file is a file, not"),
    # was "dataset 'planted' not found in .../planted (available: none)"; datasets: an empty table, exit 0
    "--data-dir is a dataset": (["train", "--model", "bpr", "--dataset", "planted", "--data-dir", "{data}/planted"],
                                r"the data directory .*planted is itself the dataset folder of 'planted': give the "
                                r"folder above it, --data-dir .*bad-data\d*$"),
    "datasets --data-dir is a dataset": (["datasets", "--data-dir", "{data}/planted"], r"is itself the dataset folder"),
    # dataset files
    "latin-1 .inter": (["train", "--model", "bpr", "--dataset", "latin", "--data-dir", "{data}"],
                       r"latin\.inter, line 5, byte \d+: byte 0xe9 is not UTF-8"),
    "csv named .npy": (["train", "--model", "bpr", "--dataset", "csvnpy", "--data-dir", "{data}"],
                       r"csvnpy/image_feat\.npy is not a NumPy \.npy file: it is a text file"),
    "zero-width features": (["train", "--model", "lightgcn", "--dataset", "zerowidth", "--data-dir", "{data}"],
                            r"zerowidth/image_feat\.npy: the feature matrix has \d+ rows but zero columns"),
    "empty valid split": (["train", "--model", "bpr", "--dataset", "novalid", "--data-dir", "{data}", "--out", "{tmp}/run",
                           "--quiet"],
                          r"novalid\.inter: the valid split is empty \(no row has x_label 1\); training selects"),
    # other commands
    "train: --workers two": (["train", "--model", "bpr", "--dataset", "planted", "--data-dir", "{data}", "--seeds", "1,2",
                              "--workers", "two", "--out", "{tmp}/t"],
                             r"^error: --workers two: give auto or a whole number >= 1 \(runs trained at the same time\)"),
    "compare: --workers 0": (["compare", "--models", "bpr", "--datasets", "planted", "--out", "{tmp}/c", "--workers", "0"],
                             r"^error: --workers 0: give auto or a whole number >= 1"),
    "compare: empty model list": (["compare", "--models", ",", "--datasets", "planted", "--out", "{tmp}/c"],
                                  r"--models ',' names nothing"),
    "compare: unknown model": (["compare", "--models", "bpr,nope", "--datasets", "planted", "--out", "{tmp}/c"],
                               r"unknown model 'nope'"),
    "compare: empty valid split": (["compare", "--models", "bpr,lightgcn", "--datasets", "planted,novalid", "--data-dir",
                                    "{data}", "--out", "{tmp}/c", "--seeds", "1"],
                                   r"novalid\.inter: the valid split is empty \(no row has x_label 1\)"),
    "compare: --set MODEL.seed": (["compare", "--models", "bpr", "--datasets", "planted", "--data-dir", "{data}", "--out",
                                   "{tmp}/c", "--seeds", "1", "--set", "bpr.seed=3"],  # was: trained, cell failed, exit 1
                                  r"--set bpr\.seed=3: choose seeds with --seeds"),
    "compare --report-only, no such --out": (["compare", "--models", "bpr", "--datasets", "planted", "--data-dir",
                                              "{data}", "--out", "{tmp}/typo", "--report-only"],  # was: an empty summary
                                             r"--out .*typo does not exist: --report-only summarises the finished cells"),
    "compare: --set a key twice": (["compare", "--models", "bpr,lightgcn", "--datasets", "planted", "--data-dir",
                                    "{data}", "--out", "{tmp}/c", "--seeds", "1", "--set", "lr=0.01", "--set",
                                    "lr=0.001"], r"^error: --set lr given twice \(lr=0\.01, lr=0\.001\): give it once$"),
    "compare: --set MODEL.key twice": (["compare", "--models", "bpr,lightgcn", "--datasets", "planted", "--data-dir",
                                        "{data}", "--out", "{tmp}/c", "--seeds", "1", "--set", "bpr.lr=0.01", "--set",
                                        "lightgcn.lr=0.01", "--set", "bpr.lr=0.001"],
                                       r"^error: --set bpr\.lr given twice \(bpr\.lr=0\.01, bpr\.lr=0\.001\): give it once$"),
    # were found when the model was built: compare trained bpr, then failed the lightgcn cell (exit 1, a
    # results table written); tune wrote a study whose trials were all refused
    "compare: a model's own check": (["compare", "--models", "bpr,lightgcn", "--datasets", "planted", "--data-dir",
                                      "{data}", "--out", "{tmp}/c", "--seeds", "1", "--set", "lightgcn.n_layers=-1"],
                                     r"^error: model 'lightgcn' rejects its settings: n_layers must be >= 0, got -1$"),
    # were found as the cell started, after the cells before it had trained (hours, on a real dataset)
    "compare: knn_k above one cell's items": (["compare", "--models", "lightgcn,mgcn", "--datasets", "planted",
                                               "--data-dir", "{data}", "--out", "{tmp}/c", "--seeds", "1", "--set",
                                               "epochs=1", "--set", "mgcn.knn_k=500"],
                                              r"^error: compare cell planted / mgcn: model 'mgcn' rejects its settings: "
                                              r"knn_k=500 exceeds the number of items \(200\); no cell was trained: "
                                              r"--set mgcn\.<setting>=\.\.\. changes a setting for mgcn alone"),
    "compare: a modality one dataset lacks": (["compare", "--models", "bpr,vbpr", "--datasets", "planted,imageonly",
                                               "--data-dir", "{data}", "--out", "{tmp}/c", "--seeds", "1", "--set",
                                               "vbpr.modalities=[text]"],
                                              r"^error: compare cell imageonly / vbpr: model 'vbpr' rejects its "
                                              r"settings: vbpr needs modality feature\(s\) text but dataset "
                                              r"'imageonly' has image"),
    "compare: fewer modalities than a model needs": (["compare", "--models", "lightgcn,gume", "--datasets",
                                                      "imageonly", "--data-dir", "{data}", "--out", "{tmp}/c",
                                                      "--seeds", "1"],
                                                     r"^error: compare cell imageonly / gume: model 'gume' rejects its "
                                                     r"settings: gume needs at least 2 modalities"),
    "tune: a space the model's own check refuses": (["tune", "--model", "lightgcn", "--dataset", "planted", "--data-dir",
                                                     "{data}", "--out", "{tmp}/t", "--space", "n_layers=-3..1"],
                                                    r"^error: model 'lightgcn' rejects its settings: n_layers must be "
                                                    r">= 0, got -3$"),
    "compare: --seeds abc": (["compare", "--models", "bpr", "--datasets", "planted", "--out", "{tmp}/c", "--seeds", "x"],
                             r"--seeds 'x'"),
    "demo: a model refused on the data": (["demo", "--dataset", "imageonly", "--data-dir", "{data}", "--models",
                                           "gume,lightgcn", "--epochs", "1", "--out", "{tmp}/demo", "--quiet"],
                                          # was the error, and {tmp}/demo/imageonly/gume/ left behind, empty
                                          r"model 'gume' rejects its settings: gume needs at least 2 modalities"),
    "demo: a later model refused on the data": (["demo", "--dataset", "imageonly", "--data-dir", "{data}", "--models",
                                                 "lightgcn,gume", "--epochs", "1", "--out", "{tmp}/demo", "--quiet"],
                                                # was found after lightgcn had trained and written its run
                                                r"model 'gume' rejects its settings: gume needs at least 2 modalities"),
    # was "needs at least 1 modalities; ... and [] were selected", "1 modalities are used"
    "train vbpr --set modalities=[]": (["train", "--model", "vbpr", "--dataset", "planted", "--data-dir", "{data}",
                                        "--out", "{tmp}/run", "--set", "modalities=[]", "--quiet"],
                                       r"vbpr needs at least 1 modality; dataset 'planted' offers image, text and none "
                                       r"was selected$"),
    "train freedom, one modality, two weights": (["train", "--model", "freedom", "--dataset", "planted", "--data-dir",
                                                  "{data}", "--out", "{tmp}/run", "--set", "modalities=[text]", "--set",
                                                  "mm_weights=[0.5,0.5]", "--quiet"],
                                                 r"mm_weights has 2 weights \[0\.5, 0\.5\] but 1 modality is used \(text\)"),
    "recommend --users ''": (["recommend", "--run", "{run}", "--users", "", "--data-dir", "{data}"],
                             r"--users '' names no user"),
    "recommend --users 1,1": (["recommend", "--run", "{run}", "--users", "1,2,1", "--data-dir", "{data}"],
                              r"--users names 1 twice; list each user once"),
    "recommend --out x.json": (["recommend", "--run", "{run}", "--users", "1", "--data-dir", "{data}", "--out",
                                "{tmp}/recs.json"], r"--out .*recs\.json: recommend writes a CSV .*give a \.csv"),
    "compare --set model=": (["compare", "--models", "bpr", "--datasets", "planted", "--out", "{tmp}/c", "--set",
                              "model=lightgcn"], r"choose the model with the --model option \(compare: --models\)"),
    "recommend --users x": (["recommend", "--run", "{run}", "--users", "1,x", "--data-dir", "{data}"],
                            r"--users must be comma-separated integer ids or 'all'"),
    "recommend unknown user": (["recommend", "--run", "{run}", "--users", "100000", "--data-dir", "{data}"],
                               r"unknown user id\(s\) \[100000\]"),
    "recommend --out missing folder": (["recommend", "--run", "{run}", "--users", "1", "--data-dir", "{data}",
                                        "--out", "{tmp}/missing/recs.csv"], r"the folder .*missing does not exist"),
    "recommend --k -1": (["recommend", "--run", "{run}", "--users", "1", "--k", "-1"], r"Invalid value for '--k'"),
    "recommend missing run": (["recommend", "--run", "{tmp}/none", "--users", "1"], r"run directory .*none does not exist"),
    "evaluate --ks abc": (["evaluate", "--run", "{run}", "--ks", "abc"], r"--ks 'abc': 'abc' is not a cut-off"),
    "evaluate --ks huge": (["evaluate", "--run", "{run}", "--ks", "9" * 25], r"is not a cut-off; give whole numbers from 1"),
    "evaluate --ks 0": (["evaluate", "--run", "{run}", "--ks", "0,10"], r"--ks '0,10': '0' is not a cut-off"),
    # a cut-off above the item count (planted: 200 items) was accepted: precision@500 counted empty slots
    "evaluate --ks above the items": (["evaluate", "--run", "{run}", "--ks", "10,500", "--data-dir", "{data}"],
                                      r"^error: --ks 10,500: cut-off 500 is above the 200 items of planted; give "
                                      r"cut-offs from 1 to 200$"),
    "significance --metric K above the items": (["significance", "--a", "{run}", "--b", "{run2}", "--metric",
                                                 "recall@201", "--data-dir", "{data}"],
                                                r"--metric recall@201: cut-off 201 is above the 200 items of planted"),
    "train --set topk above the items": (TRAIN + ["--set", "topk=[10,500]", "--set", "valid_metric=recall@10"],
                                         r"setting topk=\[10, 500\]: cut-off 500 is above the 200 items of planted; "
                                         r"give cut-offs from 1 to 200 with --set topk="),
    "compare --set topk above the items": (["compare", "--models", "bpr", "--datasets", "planted", "--data-dir",
                                            "{data}", "--out", "{tmp}/c", "--seeds", "1", "--set", "topk=[20,300]"],
                                           r"setting topk=\[20, 300\]: cut-off 300 is above the 200 items"),
    "tune --set a key twice": (["tune", "--model", "bpr", "--dataset", "planted", "--data-dir", "{data}", "--out",
                                "{tmp}/t", "--space", "lr=0.001|0.01", "--set", "epochs=1", "--set", "epochs=2"],
                               r"^error: --set epochs given twice \(epochs=1, epochs=2\): give it once$"),
    "tune --set topk above the items": (["tune", "--model", "bpr", "--dataset", "planted", "--data-dir", "{data}",
                                         "--out", "{tmp}/t", "--space", "lr=0.001|0.01", "--set", "topk=[20,300]"],
                                        r"setting topk=\[20, 300\]: cut-off 300 is above the 200 items"),
    "evaluate --split": (["evaluate", "--run", "{run}", "--split", "train"], r"--split 'train': choose valid or test"),
    "evaluate --tail-share": (["evaluate", "--run", "{run}", "--tail-share", "1.5"], r"--tail-share 1.5"),
    "evaluate --strategy typo": (["evaluate", "--run", "{run}", "--strategy", "knnn"], r"--strategy 'knnn': choose one of"),
    "evaluate --strategy warm": (["evaluate", "--run", "{run}", "--strategy", "knn"],
                                 r"--strategy and --id-rows choose how cold items are scored: use them with --mode cold"),
    "evaluate --id-rows warm": (["evaluate", "--run", "{run}", "--id-rows", "zero"], r"use them with --mode cold"),
    "evaluate --mask-valid at valid": (["evaluate", "--run", "{run}", "--split", "valid", "--mask-valid"],
                                       r"--mask-valid masks the validation items .*: use it with --split test"),
    # the same run as A and B was tested against itself: "p = 1, 0 users differ", exit 0
    "significance: the same run twice": (["significance", "--a", "{run}", "--b", "{run}", "--data-dir", "{data}"],
                                         r"--a .*lightgcn and --b .*lightgcn are the same run"),
    "significance: the same run, trailing slash": (["significance", "--a", "{run}", "--b", "{run}/", "--data-dir",
                                                    "{data}"], r"are the same run: a run tested against itself"),
    "significance: the same run, via ..": (["significance", "--a", "{run}/../lightgcn", "--b", "{run}", "--data-dir",
                                            "{data}"], r"are the same run"),
    "significance --metric": (["significance", "--a", "{run}", "--b", "{run}", "--metric", "auc"], r"--metric 'auc'"),
    "serve --port 99999": (["serve", "--run", "{run}", "--port", "99999"], r"Invalid value for '--port'"),
    "serve --exclude": (["serve", "--run", "{run}", "--exclude", "all"], r"--exclude 'all'"),
    "build --text-cols": (["build", "--interactions", "{tmp}/raw.csv", "--out", "{tmp}/built", "--min-count", "3",
                           "--item-text", "{tmp}/text.csv"], r"text\.csv: no column 'text' .* with --text-cols$"),
    "build --user-col": (["build", "--interactions", "{tmp}/raw.csv", "--out", "{tmp}/built", "--user-col", "uid"],
                         r"no column 'uid' .* with --user-col$"),
    # was "no column 'item' (columns: user, item)"
    "build: spaces after the commas": (["build", "--interactions", "{tmp}/spaced.csv", "--out", "{tmp}/built"],
                                       r"spaced\.csv: the header names ' item', with spaces, not 'item'"),
    "build --item-features twice": (["build", "--interactions", "{tmp}/raw.csv", "--out", "{tmp}/built", "--min-count",
                                     "3", "--item-features", "image=a.npz", "--item-features", "image=b.csv"],
                                    r"--item-features names 'image' twice \(a\.npz and b\.csv\)"),  # b.csv won
    # was a random split, the time column read and ignored
    "build --time-col without --split temporal": (["build", "--interactions", "{tmp}/raw.csv", "--out", "{tmp}/built",
                                                   "--time-col", "ts"],
                                                  r"--time-col 'ts' orders the rows of --split temporal, and --split is "
                                                  r"'random': add --split temporal .* or drop --time-col$"),
    "build --min-count": (["build", "--interactions", "{tmp}/raw.csv", "--out", "{tmp}/built", "--min-count", "1"],
                          r"--min-count must be at least 3"),
    # were tracebacks (OverflowError, numpy's "expected non-negative integer")
    "synth --scale inf": (["synth", "tiktok", "--out", "{tmp}/s", "--scale", "inf"], r"--scale inf: give a factor > 0"),
    "synth --seed -1": (["synth", "tiktok", "--out", "{tmp}/s", "--scale", "0.01", "--seed", "-1"],
                        r"--seed must be a whole number from 0 to 2\*\*32-1, got -1"),
    "unknown command": (["trian"], r"No such command 'trian'"),
    "missing option": (["train", "--dataset", "planted"], r"Missing option '--model'"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_clean_line(case, data_dir, finished_run, other_run, tmp_path):
    args, pattern = CASES[case]
    (tmp_path / "broken.yaml").write_text("lr: [0.1,\n")
    (tmp_path / "twice.yaml").write_text("train:\n  lr: 0.01\n  lr: 0.1\n")
    (tmp_path / "seed.yaml").write_text("train:\n  seed: 42\n  lr: 0.01\n")
    (tmp_path / "epochs.yaml").write_text("train:\n  epochs: 1\n  threads: 1\n")
    (tmp_path / "mgcn.yaml").write_text("model: mgcn\ntrain:\n  lr: 0.01\n")
    (tmp_path / "file").write_text("not a folder")
    (tmp_path / "raw.csv").write_text("user,item\n" + "".join(f"u{u},i{i}\n" for u in range(4) for i in range(3)))
    (tmp_path / "spaced.csv").write_text("user, item\n" + "".join(f"u{u}, i{i}\n" for u in range(4) for i in range(3)))
    (tmp_path / "text.csv").write_text("item,title\ni0,a\ni1,b\ni2,c\n")
    before = sorted(p.name for p in tmp_path.iterdir())
    result = invoke(args, data_dir, finished_run, tmp_path, other_run)
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and len(lines) == 1, result.output
    assert lines[0].startswith("error: ") and re.search(pattern, lines[0]), lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing half-written


def test_compare_refuses_a_cell_on_its_dataset_before_the_first_cell_trains(data_dir, tmp_path):
    """knn_k above the items (planted: 200) was found as the mgcn cell started, after the lightgcn
    cell before it had trained and written its run; now every cell is checked on its dataset first."""
    out, started = tmp_path / "cmp", []
    with pytest.raises(ModelRefused, match=r"compare cell planted / mgcn: .*knn_k=500 exceeds the number of items"):
        run_compare(["lightgcn", "mgcn"], ["planted"], [1], out, {"epochs": 1, "mgcn.knn_k": 500}, str(data_dir),
                    log=started.append)
    assert not started and not out.exists()  # no cell started: no run directory, no metrics.json
    assert not list(tmp_path.rglob("metrics.json"))


def test_significance_of_a_run_against_itself_by_relative_path_or_link(finished_run, data_dir, monkeypatch):
    monkeypatch.chdir(finished_run.parent)
    (finished_run.parent / "link").symlink_to(finished_run, target_is_directory=True)
    for a, b in ((str(finished_run), "lightgcn"), ("./lightgcn", "link")):
        result = runner.invoke(app, ["significance", "--a", a, "--b", b, "--data-dir", str(data_dir)])
        assert result.exit_code == 2 and result.output.strip().splitlines() == [
            f"error: --a {Path(a)} and --b {b} are the same run: a run tested against itself differs for no user; give "
            "the run directories of the two models to compare"], result.output


def test_debug_shows_the_traceback(data_dir, tmp_path):
    args = ["--debug", *BARE, "--set", "threads=1", "--set", "epochs=0"]
    result = invoke(args, data_dir, None, tmp_path)
    assert result.exit_code != 0 and type(result.exception).__name__ == "ConfigError"
    assert "epochs=0 is invalid" in str(result.exception), result.exception


def test_all_zero_features_are_a_one_line_warning(data_dir, tmp_path):
    result = invoke(["train", "--model", "bpr", "--dataset", "allzero", "--data-dir", "{data}", "--out", "{tmp}/r",
                     "--set", "epochs=1", "--set", "threads=1", "--quiet"], data_dir, None, tmp_path)
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert [line for line in lines if line.startswith("warning: ")] == [
        next(line for line in lines if "allzero/image_feat.npy: every feature value is zero" in line)]
    assert lines[-1] == f"run directory: {tmp_path / 'r'}"  # --quiet still prints the run directory


def test_help_version_and_evaluate_output(finished_run, data_dir):
    from prismrec import __version__

    top = runner.invoke(app, ["--help"])
    assert top.exit_code == 0 and "prismrec trains, evaluates, compares and serves" in top.output
    assert runner.invoke(app, ["--version"]).output.strip() == f"prismrec {__version__}"
    result = runner.invoke(app, ["evaluate", "--run", str(finished_run), "--data-dir", str(data_dir)])
    assert result.exit_code == 0, result.output
    written = finished_run / "evaluation-test.json"
    assert written.is_file() and f"evaluation written to {written}" in " ".join(result.output.split())


def test_cuda_without_a_gpu_is_one_line_before_any_data_is_read(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    result = runner.invoke(app, ["train", "--model", "bpr", "--dataset", "nope", "--data-dir", str(tmp_path),
                                 "--set", "device=cuda"])
    assert result.exit_code == 2 and result.output.strip().splitlines() == [
        "error: device='cuda' but this machine has no CUDA GPU that torch can use; run with --set device=cpu"]
    compare = runner.invoke(app, ["compare", "--models", "bpr", "--datasets", "x", "--out", str(tmp_path / "c"),
                                  "--set", "device=cuda:0"])
    assert compare.exit_code == 2 and "no CUDA GPU" in compare.output and not (tmp_path / "c").exists()


def test_data_dir_that_is_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    result = runner.invoke(app, ["datasets", "--data-dir", str(tmp_path / "f")])
    assert result.exit_code == 2 and "is a file, not a folder" in result.output


def test_datasets_in_an_empty_data_dir_says_so(tmp_path):
    # was an empty table: nothing said that no dataset was found, nor what a dataset folder is
    result = runner.invoke(app, ["datasets", "--data-dir", str(tmp_path)])
    assert result.exit_code == 0 and result.output.strip().splitlines() == [
        f"no datasets found in {tmp_path}. A dataset is a folder <name>/ holding <name>.inter (MMRec layout, see "
        "README); add one there, build one from raw interactions with `prismrec build --interactions FILE --out "
        f"{tmp_path / 'NAME'}`, or give another --data-dir."], result.output
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "data.inter").write_text("userID\titemID\tx_label\n")  # misnamed: not mine.inter
    result = runner.invoke(app, ["datasets", "--data-dir", str(tmp_path)])
    assert result.exit_code == 0 and result.output.startswith(f"no datasets found in {tmp_path} (mine/ holds no "
                                                              "mine.inter). A dataset is"), result.output


def test_an_os_error_below_a_file_names_the_file(tmp_path):
    """Paths not checked up front (export's files, cache folders): the OS error's line names the file in the way."""
    import errno

    from prismrec.cli import _file_in_the_way

    (tmp_path / "file").write_text("x")
    below = OSError(errno.ENOTDIR, "Not a directory", str(tmp_path / "file" / "x" / "y"))
    assert _file_in_the_way(below) == f" ({tmp_path / 'file'} is a file, not a folder: give a path that is a folder or under one)"
    assert _file_in_the_way(OSError(errno.EEXIST, "File exists", str(tmp_path / "file"))).startswith(f" ({tmp_path / 'file'} is a file")
    assert _file_in_the_way(OSError(errno.ENOENT, "No such file", str(tmp_path / "nope"))) == ""
    assert _file_in_the_way(OSError(errno.EEXIST, "File exists", str(tmp_path))) == ""  # a folder: nothing to add
