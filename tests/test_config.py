import pytest

from prismrec.experiment.config import (
    TrainConfig,
    field_types,
    load_yaml_overrides,
    parse_assignments,
    resolve_config,
    valid_keys,
)
from prismrec.models import MODELS, get_model


def test_defaults_and_overrides():
    cfg = resolve_config("lightgcn", "baby", parse_assignments(["n_layers=2", "lr=5e-4", "topk=10,20"]))
    assert cfg.params.n_layers == 2 and cfg.train.lr == 5e-4 and cfg.train.topk == (10, 20)
    assert resolve_config("lightgcn", "baby").train == TrainConfig()


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ValueError, match=r"unknown setting\(s\) n_layer .*Valid keys: .*n_layers"):
        resolve_config("lightgcn", "baby", {"n_layer": 2})


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("n_layers", "two", "n_layers must be an integer"),
        ("n_layers", True, "n_layers must be an integer"),
        ("lr", "fast", "lr must be a number"),
        ("reg_form", "l1", r"reg_form must be one of \['emb_norm', 'half_sq'\]"),
        ("negative_pool", "popular", "negative_pool must be one of"),
        ("mask_valid_at_test", "maybe", "mask_valid_at_test must be true or false"),
        ("valid_metric", "auc@20", "valid_metric"),
        ("valid_metric", "recall@7", "valid_metric"),
    ],
)
def test_ill_typed_values_are_errors(key, value, message):
    with pytest.raises(ValueError, match=message):
        resolve_config("lightgcn", "baby", {key: value})


def test_list_values_from_strings():
    for text in ("0.9,0.1", "[0.9, 0.1]", "[0.9,0.1]"):
        assert resolve_config("freedom", "baby", {"mm_weights": text}).params.mm_weights == [0.9, 0.1]
    assert resolve_config("freedom", "baby", {"modalities": "text"}).params.modalities == ["text"]
    with pytest.raises(ValueError, match=r"mm_weights must be a list written a,b or \[a, b\], got '\[0.9'"):
        resolve_config("freedom", "baby", {"mm_weights": "[0.9"})


def test_set_syntax_errors():
    with pytest.raises(ValueError, match="key=value"):
        parse_assignments(["lr"])
    with pytest.raises(ValueError, match=r"--set mm_weights: '\[0.9' is not a valid value"):
        parse_assignments(["mm_weights=[0.9"])
    assert parse_assignments(["mm_weights=[0.5, 0.5]", "lr=0.001", "name=x"]) == {"mm_weights": [0.5, 0.5], "lr": 0.001, "name": "x"}


def test_model_configs_never_reuse_training_keys():
    train_keys = set(field_types(TrainConfig))
    for name, cls in MODELS.items():
        assert not train_keys & set(field_types(cls.Config)), name
        assert cls.name == name and get_model(name.upper()) is cls


def test_unknown_model():
    with pytest.raises(KeyError, match="unknown model 'nope'; registered: .*lightgcn"):
        get_model("nope")


def test_run_config_round_trips(tmp_path):
    import yaml

    cfg = resolve_config("bpr", "baby", {"reg_weight": 0.01, "epochs": 5})
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    again = resolve_config("bpr", "baby", load_yaml_overrides(path))
    assert again == cfg and again.digest() == cfg.digest()
    assert "reg_weight" in valid_keys("bpr")


def test_compare_seed_counts_and_lists():
    from prismrec.experiment.compare import parse_seeds

    assert parse_seeds("3") == [999, 1000, 1001]
    assert parse_seeds("999,1,2") == [999, 1, 2] and parse_seeds("1001,") == [1001]
    for bad in ("0", "999"):  # "999" would silently mean 999 seeds
        with pytest.raises(ValueError, match="count of seeds"):
            parse_seeds(bad)
