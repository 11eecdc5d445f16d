"""Pieces several models share: settings checks (prismrec/checks.py), plain propagation, presence
masks, the users-first split of a node table, tables that are a parameter or a frozen buffer, the
hypergraph's membership dropout."""

from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from torch import nn

from prismrec.checks import check_choices, require_fraction, require_items
from prismrec.experiment.config import resolve_config
from prismrec.graph import SparseOperator
from prismrec.models import MODELS
from prismrec.nn.embedding import register_table
from prismrec.nn.hypergraph import hypergraph_propagate
from prismrec.nn.presence import for_missing_modalities, node_presence, view_presence
from prismrec.nn.propagation import propagate
from prismrec.recommender import Output


@dataclass
class _Settings:
    mode: Literal["a", "b"] = "a"
    size: int = 3


def test_check_choices_names_the_setting_outside_its_choices():
    check_choices(_Settings(), "m")
    with pytest.raises(ValueError, match=r"m: mode must be one of \['a', 'b'\], got 'c'"):
        check_choices(_Settings(mode="c"), "m")


def test_require_items_and_require_fraction():
    require_items(10, knn_k=10)
    with pytest.raises(ValueError, match=r"knn_k=11 exceeds the number of items \(10\); b=12 exceeds"):
        require_items(10, knn_k=11, a=3, b=12)
    require_fraction("p", 0.0)
    require_fraction("p", 1.0)
    with pytest.raises(ValueError, match=r"p \(a rate\) must be in \(0, 1\], got 0.0"):
        require_fraction("p", 0.0, "a rate", low_open=True)
    with pytest.raises(ValueError, match=r"p must be in \[0, 1\), got 1.0"):
        require_fraction("p", 1.0, high_open=True)


@pytest.mark.parametrize("model", sorted(MODELS))
def test_check_dataset_refuses_the_shared_bounds_on_the_modality_names_alone(model, planted):
    """``Recommender.check_dataset``'s default, which ``compare`` runs for every cell before the first
    trains: a setting counting items above them (``knn_k``; SIGER's ``co_k``, DAMRS' ``behavior_k``), a
    modality the dataset lacks, fewer modalities than the model runs on (GUME's 2), all without the
    feature values (compare passes their names alone)."""
    cls, config = MODELS[model], resolve_config(model, planted.name, {}).params
    names = replace(planted, features=dict.fromkeys(planted.features))  # image, text: names only
    cls.check_dataset(config, names)  # the defaults fit
    for key in [k for k in cls.item_sizes if hasattr(config, k)]:
        with pytest.raises(ValueError, match=rf"^{key}=201 exceeds the number of items \(200\)$"):
            cls.check_dataset(replace(config, **{key: 201}), names)
    if not hasattr(config, "modalities"):  # an ID model (BPR, LightGCN) reads no modality
        return
    with pytest.raises(ValueError, match=rf"{model} needs modality feature\(s\) audio but dataset 'planted' has image"):
        cls.check_dataset(replace(config, modalities=["audio"]), names)
    image_only = replace(names, features={"image": None})
    if cls.min_modalities < 2:
        cls.check_dataset(config, image_only)
    else:
        with pytest.raises(ValueError, match=rf"{model} needs at least {cls.min_modalities} modalities"):
            cls.check_dataset(config, image_only)


MODEL_DATA_CHECKS = [  # (model, settings, modalities kept, message): each was found only as the model was built
    ("damrs", {"n_pseudo_positives": 101}, None, r"n_pseudo_positives=101 needs at least twice as many items \(200"),
    ("damrs", {"behavior_graph": False, "modalities": ["image"]}, None, r"denoise_feedback weighs feedback"),
    ("dragon", {"user_knn_k": "n_users + 1"}, None, r"user_knn_k=\d+ exceeds the number of users"),
    ("dragon", {"mm_weights": [0.5, 0.6]}, None, r"mm_weights must be non-negative and sum to 1"),
    ("freedom", {"mm_weights": [1.0]}, None, r"mm_weights has 1 weight \[1.0\] but 2 modalities are used"),
    ("mmgcn", {"latent_dims": [256]}, None, r"latent_dims needs one non-negative width per modality \(image, text\)"),
    ("smore", {"image_knn_k": 201}, None, r"^image_knn_k=201 exceeds the number of items \(200\)$"),
    ("smore", {"text_knn_k": 201}, None, r"^text_knn_k=201 exceeds the number of items \(200\)$"),
    ("siger", {"beta_per_modality": True, "beta_modalities": [0.5]}, None, r"beta_modalities needs one β"),
    ("siger", {"anchor_form": "A3"}, ["image"], r"anchor_form='A3' contrasts modalities and needs at least 2"),
]


@pytest.mark.parametrize("model, settings, kept, message", MODEL_DATA_CHECKS)
def test_check_dataset_runs_each_models_own_data_checks_on_the_names_alone(model, settings, kept, message, planted):
    """A model's refusals that depend on the data (user/item counts, which modalities, the part each
    plays) live in its ``check_dataset``, so ``compare`` refuses such a cell before any cell trains
    instead of when the model is built."""
    if settings.get("user_knn_k") == "n_users + 1":
        settings = {**settings, "user_knn_k": planted.n_users + 1}
    cls, config = MODELS[model], resolve_config(model, planted.name, {}).params
    names = replace(planted, features=dict.fromkeys(kept or planted.features))  # names only, as compare passes
    cls.check_dataset(config, names)
    with pytest.raises(ValueError, match=message):
        cls.check_dataset(replace(config, **settings), names)


def test_propagate_is_the_matrix_power():
    g = sp.random(6, 6, density=0.4, random_state=0, format="csr", dtype="float32")
    x = torch.randn(6, 3, generator=torch.Generator().manual_seed(0))
    dense = torch.from_numpy(g.toarray())
    torch.testing.assert_close(propagate(SparseOperator(g), x, 3), dense @ dense @ dense @ x)
    assert propagate(SparseOperator(g), x, 0) is x
    # a step after every product: X <- step(G X)
    torch.testing.assert_close(propagate(SparseOperator(g), x, 2, step=torch.tanh),
                               torch.tanh(dense @ torch.tanh(dense @ x)))


def test_output_of_nodes_splits_users_first():
    z = torch.arange(10.0).view(5, 2)
    out = Output.of_nodes(z, 2, {"behavior": z})
    torch.testing.assert_close(out.user, z[:2])
    torch.testing.assert_close(out.item, z[2:])
    assert out.aux["behavior"] is z and Output.of_nodes(z, 2).aux == {}
    assert out.item.data_ptr() == z[2:].data_ptr()  # views of z, no copy


def test_node_presence_puts_users_first_and_view_presence_adds_full_views():
    items = np.array([[True, False], [True, True], [False, True]])  # n_I x K
    got = node_presence(items, 2)
    assert got.dtype == torch.bool and got.shape == (2, 5)
    np.testing.assert_array_equal(got.numpy(), [[1, 1, 1, 1, 0], [1, 1, 0, 1, 1]])
    assert node_presence(None, 2) is None

    class Masked:  # a dataset whose image rows 1 and 2 were zero-filled
        n_items, feature_masks = 3, {"image": np.array([True, False, False])}
        manifest = {"imputation": {"image": {"method": "zero"}}}

    views = view_presence(Masked(), ["image", "text"], n_users=1, extra_views=1)
    np.testing.assert_array_equal(views.numpy(), [[1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1]])
    Masked.manifest = {"imputation": {"image": {"method": "mean"}}}  # estimates: nothing masked
    assert view_presence(Masked(), ["image", "text"], extra_views=1) is None
    # one object per modality some item lacks, built from that modality's item column
    assert for_missing_modalities(items, 3, lambda keep: keep.nonzero()[0].tolist()) == [[0, 1], [1, 2]]
    assert for_missing_modalities(np.ones((3, 2), dtype=bool), 3, len) == [None, None]
    assert for_missing_modalities(None, 3, len) is None
    with pytest.raises(ValueError, match=r"present_items must hold one row per item \(4\), got shape \(3, 2\)"):
        for_missing_modalities(items, 4, len)


def test_register_table_parameter_or_buffer():
    module = nn.Module()
    register_table(module, "trained", torch.zeros(2, 2), trainable=True)
    register_table(module, "frozen", torch.ones(2, 2), trainable=False)
    register_table(module, "copy", torch.ones(2, 2), trainable=False, persistent=False)
    assert [name for name, _ in module.named_parameters()] == ["trained"]
    assert set(module.state_dict()) == {"trained", "frozen"}


def test_hypergraph_dropout_drops_item_then_user_memberships():
    gen = torch.Generator().manual_seed(0)
    h_items, h_users = torch.rand(5, 3, generator=gen), torch.rand(4, 3, generator=gen)
    x = torch.randn(5, 2, generator=gen)
    plain = hypergraph_propagate(h_items, h_users, x, 2)
    assert all(torch.equal(a, b) for a, b in zip(plain, hypergraph_propagate(h_items, h_users, x, 2, 0.0)))
    torch.manual_seed(3)
    dropped = hypergraph_propagate(h_items, h_users, x, 2, 0.5)
    torch.manual_seed(3)
    d_items = torch.nn.functional.dropout(h_items, 0.5)
    d_users = torch.nn.functional.dropout(h_users, 0.5)
    want = hypergraph_propagate(d_items, d_users, x, 2)
    assert all(torch.equal(a, b) for a, b in zip(dropped, want))
    assert not torch.equal(dropped[0], plain[0])


def test_node_dropout_on_rows_drops_what_the_full_matrix_drops():
    from prismrec.nn.propagation import node_dropout

    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(0))
    assert node_dropout(x, 0.0, 8) is x
    torch.manual_seed(5)
    full = node_dropout(x, 0.5, 8)
    rows = torch.tensor([1, 4, 6])
    torch.manual_seed(5)
    torch.testing.assert_close(node_dropout(x[rows], 0.5, 8, rows), full[rows])
    kept = full != 0
    assert 0 < kept.sum() < x.numel()
    torch.testing.assert_close(full[kept], 2.0 * x[kept])
