"""Modality parts by name in SMORE, MMGCN and LGMRec (prismrec.nn.roles).

The references give their image and text modality different settings (SMORE's kNN sizes, MMGCN's
feature MLP and preference L2, LGMRec's image-to-text contrastive pair). An image-like + text-like
pair gets them by name in either order; other modalities (text + audio here, as lfm2k) must say
which part each plays, and a one-line ConfigError names the setting when they do not.
"""

import pytest

from prismrec.data import load_dataset
from prismrec.data.synthetic import write_planted_dataset
from prismrec.errors import ConfigError
from prismrec.experiment.config import resolve_config
from prismrec.experiment.runs import run_experiment
from prismrec.graph import SparseOperator, knn_graph
from prismrec.models import get_model
from prismrec.nn.roles import modality_parts, role_order
from prismrec.train import seed_everything

IMAGE_K, TEXT_K = 7, 3


@pytest.fixture(scope="module")
def three(tmp_path_factory):
    folder = write_planted_dataset(tmp_path_factory.mktemp("roles") / "three", n_users=40, n_items=30,
                                   per_user=6, modalities={"image": 5, "text": 7, "audio": 3})
    return load_dataset(folder)


def build(model, dataset, **overrides):
    cfg = resolve_config(model, dataset.name, overrides)
    seed_everything(0)
    return get_model(model)(dataset, cfg.params)


def knn_nnz(dataset, modality, k):
    return SparseOperator(knn_graph(dataset.features[modality], k)).nnz


@pytest.mark.parametrize("order", [["image", "text"], ["text", "image"]])
def test_an_image_text_pair_gets_its_parts_by_name_in_either_order(three, order):
    smore = build("smore", three, modalities=order, image_knn_k=IMAGE_K, text_knn_k=TEXT_K)
    assert smore.item_graphs["image"].nnz == knn_nnz(three, "image", IMAGE_K)
    assert smore.item_graphs["text"].nnz == knn_nnz(three, "text", TEXT_K)
    assert knn_nnz(three, "text", IMAGE_K) != knn_nnz(three, "text", TEXT_K)  # the check can fail

    mmgcn = build("mmgcn", three, modalities=order)
    assert mmgcn.gcns["image"].mlp.out_features == 256 and mmgcn.gcns["text"].mlp is None
    assert mmgcn.regularised == ["image"]  # the reference's L2 on the visual preference table

    assert build("lgmrec", three, modalities=order).pairs == [("image", "text")]


def test_text_audio_without_the_setting_is_a_one_line_config_error(three):
    text_audio = ["text", "audio"]
    for model, setting in (("smore", "modality_roles"), ("mmgcn", "modality_roles"), ("lgmrec", "hcl_order")):
        with pytest.raises(ConfigError, match=f"set {setting} ") as info:
            build(model, three, modalities=text_audio)
        message = str(info.value)
        assert "\n" not in message and "['text', 'audio']" in message and "--set" in message, message
    # MMGCN needs no part when its widths and preference L2 are explicit
    build("mmgcn", three, modalities=text_audio, latent_dims=[16, 0], reg_preferences="all")
    with pytest.raises(ConfigError, match="set modality_roles"):
        build("mmgcn", three, modalities=text_audio, latent_dims=[16, 0])  # "first" needs the image part
    with pytest.raises(ConfigError, match="set modality_roles"):  # more than two modalities
        build("smore", three, modalities=["image", "text", "audio"])


def test_text_audio_with_the_setting_uses_the_given_parts(three):
    smore = build("smore", three, modalities=["text", "audio"], modality_roles=["text", "image"],
                  image_knn_k=IMAGE_K, text_knn_k=TEXT_K)
    assert smore.item_graphs["audio"].nnz == knn_nnz(three, "audio", IMAGE_K)
    assert smore.item_graphs["text"].nnz == knn_nnz(three, "text", TEXT_K)
    mmgcn = build("mmgcn", three, modalities=["text", "audio"], modality_roles=["text", "image"])
    assert mmgcn.gcns["audio"].mlp.out_features == 256 and mmgcn.gcns["text"].mlp is None
    assert mmgcn.regularised == ["audio"]
    lgmrec = build("lgmrec", three, modalities=["text", "audio"], hcl_order=["audio", "text"])
    assert lgmrec.pairs == [("audio", "text")]
    three_way = build("lgmrec", three, modalities=["image", "text", "audio"], hcl_order=["audio", "image", "text"])
    assert three_way.pairs == [("audio", "image"), ("audio", "text"), ("image", "text")]


def test_explicit_settings_are_checked():
    with pytest.raises(ConfigError, match="one of image/text per modality"):
        modality_parts("smore", ["text", "audio"], ["image"])
    with pytest.raises(ConfigError, match="one of image/text per modality"):
        modality_parts("smore", ["text", "audio"], ["image", "audio"])
    with pytest.raises(ConfigError, match="must list the used modalities"):
        role_order("lgmrec", ["text", "audio"], ["text", "image"], "hcl_order")
    assert modality_parts("smore", ["audio"], None) == ["image"]  # one modality: the first slot
    assert modality_parts("smore", ["title", "visual_clip"], None) == ["text", "image"]
    assert role_order("lgmrec", ["text_bert", "v_feat"], None, "hcl_order") == ["v_feat", "text_bert"]


@pytest.mark.parametrize("model,settings", [
    ("smore", {"modalities": ["text", "image"], "image_knn_k": IMAGE_K, "text_knn_k": TEXT_K}),
    ("smore", {"modalities": ["text", "audio"], "modality_roles": ["image", "text"],
               "image_knn_k": IMAGE_K, "text_knn_k": TEXT_K}),
    ("mmgcn", {"modalities": ["text", "image"]}),
    ("mmgcn", {"modalities": ["text", "audio"], "modality_roles": ["image", "text"]}),
    ("lgmrec", {"modalities": ["text", "image"]}),
    ("lgmrec", {"modalities": ["text", "audio"], "hcl_order": ["text", "audio"]}),
])
def test_trains_one_epoch(three, model, settings):
    cfg = resolve_config(model, three.name, {**settings, "epochs": 1, "threads": 1})
    result = run_experiment(cfg, [10], None, dataset=three, progress=False)
    assert result["status"] == "ok" and result["epochs"] == 1, result
    assert 0.0 < result["valid"]["recall@20"] <= 1.0  # NaN embeddings would rank nothing
