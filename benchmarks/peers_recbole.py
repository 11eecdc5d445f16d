"""RecBole side of ``benchmarks/peers.py``: time LightGCN epochs with RecBole's own trainer.

Runs in the peers virtualenv (RecBole and its pinned dependencies, not prismrec), as
``python peers_recbole.py ARGS_JSON``, in a scratch working directory (RecBole writes its logs
and checkpoints under the current directory). Prints one JSON line: seconds of each training
epoch and each validation, after one warm-up epoch, and what the compatibility shim replaced.

The split is the one ``peers.py`` wrote as RecBole atomic files (``<name>.train.inter``,
``.valid.inter``, ``.test.inter``: RecBole's ``benchmark_filename`` mode), so both frameworks
train and validate on exactly the same interactions.
"""

from __future__ import annotations

import json
import sys
import time


def shim() -> list[str]:
    """Restore what RecBole 1.2.1 uses and current NumPy / SciPy dropped; returns what was replaced.

    LightGCN builds its normalised adjacency through ``scipy.sparse.dok_matrix._update``, which
    SciPy removed; the replacement builds the same ``D^-1/2 A D^-1/2`` from COO arrays.
    """
    import numpy as np
    import scipy.sparse as sp
    import torch
    from recbole.model.general_recommender import lightgcn

    replaced = []
    # NumPy 2 removed these aliases; RecBole's Config re-exports them under their old names.
    for alias, target in (("float_", np.float64), ("complex_", np.complex128), ("unicode_", np.str_)):
        if alias not in np.__dict__:
            setattr(np, alias, target)
            replaced.append(f"numpy.{alias}")
    if not hasattr(sp.dok_matrix, "_update"):
        def get_norm_adj_mat(self):
            n_users = self.n_users
            rows = self.interaction_matrix.row
            cols = self.interaction_matrix.col + n_users
            size = n_users + self.n_items
            a = sp.coo_matrix((np.ones(2 * len(rows), dtype=np.float32),
                               (np.concatenate([rows, cols]), np.concatenate([cols, rows]))), shape=(size, size))
            degree = np.asarray(a.sum(axis=1)).ravel() + 1e-7  # RecBole adds the same epsilon
            d = sp.diags(np.power(degree, -0.5))
            lap = sp.coo_matrix(d @ a @ d)
            index = torch.LongTensor(np.vstack([lap.row, lap.col]))
            return torch.sparse_coo_tensor(index, torch.FloatTensor(lap.data), torch.Size(lap.shape))

        lightgcn.LightGCN.get_norm_adj_mat = get_norm_adj_mat
        replaced.append("LightGCN.get_norm_adj_mat (scipy dok_matrix._update removed)")
    return replaced


def main(args: dict) -> dict:
    import torch

    torch.set_num_threads(args["threads"])
    replaced = shim()
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.model.general_recommender import LightGCN
    from recbole.trainer import Trainer
    from recbole.utils import init_seed

    t0 = time.perf_counter()
    config = Config(model="LightGCN", dataset=args["dataset"], config_dict={
        "data_path": args["data_path"],
        "benchmark_filename": ["train", "valid", "test"],
        "USER_ID_FIELD": "user_id", "ITEM_ID_FIELD": "item_id", "load_col": {"inter": ["user_id", "item_id"]},
        "user_inter_num_interval": "[0,inf)", "item_inter_num_interval": "[0,inf)",
        "embedding_size": args["dim"], "n_layers": args["n_layers"], "reg_weight": args["reg_weight"],
        "learning_rate": args["lr"], "train_batch_size": args["batch_size"],
        "train_neg_sample_args": {"distribution": "uniform", "sample_num": 1},
        "eval_args": {"mode": "full", "order": "RO", "group_by": "user"},
        # full ranking: RecBole batches eval_batch_size // n_items users; match prismrec's users per batch
        "eval_batch_size": args["eval_users"] * (args["n_items"] + 1),
        "metrics": ["Recall", "NDCG", "Precision", "Hit", "MAP"], "topk": args["topk"],
        "valid_metric": "Recall@20", "epochs": args["epochs"] + 1, "seed": 999,
        "device": "cpu", "use_gpu": False, "worker": 0, "show_progress": False, "state": "ERROR",
        "checkpoint_dir": "saved",
    })
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    train_data, valid_data, _ = data_preparation(config, dataset)
    model = LightGCN(config, train_data.dataset).to(config["device"])
    trainer = Trainer(config, model)
    setup_s = time.perf_counter() - t0
    train_s, valid_s = [], []
    for epoch in range(args["epochs"] + 1):
        t0 = time.perf_counter()
        trainer._train_epoch(train_data, epoch, show_progress=False)
        t1 = time.perf_counter()
        trainer._valid_epoch(valid_data, show_progress=False)
        train_s.append(t1 - t0)
        valid_s.append(time.perf_counter() - t1)
    import recbole

    return {"framework": f"RecBole {recbole.__version__}", "torch": torch.__version__,
            "threads": torch.get_num_threads(), "setup_s": setup_s, "train_s": train_s[1:],
            "valid_s": valid_s[1:], "shim": replaced,
            "sizes": {"users": int(dataset.user_num) - 1, "items": int(dataset.item_num) - 1,
                      "train": len(train_data.dataset)}}


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))))
