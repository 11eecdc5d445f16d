import pytest
import torch

from prismrec.errors import ConfigError
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
        # was "threads must be an integer, got 'many'; threads must be one of ['auto'], got 'many'"
        ("threads", "many", r"^threads must be an integer or one of \['auto'\], got 'many'$"),
    ],
)
def test_ill_typed_values_are_errors(key, value, message):
    with pytest.raises(ConfigError, match=message):
        resolve_config("lightgcn", "baby", {key: value})


def test_true_is_not_the_choice_one():  # egra entity_sign=true trained as entity_sign=1
    with pytest.raises(ConfigError, match=r"entity_sign must be one of \[-1, 1\], got True"):
        resolve_config("egra", "baby", parse_assignments(["entity_sign=true"]))
    assert resolve_config("egra", "baby", parse_assignments(["entity_sign=1.0"])).params.entity_sign == 1


def test_a_whole_number_in_exponent_form_is_an_integer():  # YAML reads 1e3 as a string: was "must be an integer"
    cfg = resolve_config("lightgcn", "baby", parse_assignments(["epochs=1e3", "embedding_size=1E2"]))
    assert cfg.train.epochs == 1000 and cfg.params.embedding_size == 100
    for text in ("1.5e0", "nan", "inf", "1e"):
        with pytest.raises(ConfigError, match=f"epochs must be an integer, got '{text}'"):
            resolve_config("lightgcn", "baby", parse_assignments([f"epochs={text}"]))


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


def test_a_set_key_given_twice_is_an_error():  # the later value was used, silently
    with pytest.raises(ConfigError, match=r"^--set lr given twice \(lr=0\.01, lr=0\.001\): give it once$"):
        parse_assignments(["lr=0.01", "n_layers=2", "lr=0.001"])
    with pytest.raises(ConfigError, match=r"--set lr given twice \(lr=0\.01, lr =0\.01\)"):  # even with one value
        parse_assignments(["lr=0.01", "lr =0.01"])
    with pytest.raises(ConfigError, match=r"--set mgcn\.lr given twice \(mgcn\.lr=0\.01, mgcn\.lr=0\.1\)"):
        parse_assignments(["mgcn.lr=0.01", "mgcn.lr=0.1"])
    # one key per model, and a key for all models beside one model's own: each given once
    assert parse_assignments(["mgcn.lr=0.01", "lightgcn.lr=0.1", "lr=0.5"]) == {
        "mgcn.lr": 0.01, "lightgcn.lr": 0.1, "lr": 0.5}


def test_a_model_key_overrides_the_key_for_all_models_in_either_order():
    from prismrec.experiment.compare import model_overrides

    models = ["mgcn", "lightgcn"]
    for given in (["lr=0.5", "mgcn.lr=0.01"], ["mgcn.lr=0.01", "lr=0.5"]):  # the second gave mgcn 0.5
        overrides = parse_assignments(given)
        assert model_overrides(overrides, "mgcn", models) == {"lr": 0.01}, given
        assert model_overrides(overrides, "lightgcn", models) == {"lr": 0.5}, given


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


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("epochs", 0, r"setting epochs=0 is invalid: the number of epochs must be a whole number >= 1"),
        ("epochs", -3, "epochs=-3 is invalid"),
        ("batch_size", 0, "batch_size=0 is invalid"),
        ("topk", 0, r"topk=\(0,\) is invalid: cut-offs must be .* from 1 to 1,000,000,000"),
        ("topk", 10**12, r"topk=\(1000000000000,\) is invalid"),
        ("topk", "[]", "topk=\\(\\) is invalid"),
        ("topk", [20, 10, 20], r"topk=\(20, 10, 20\) is invalid: each cut-off once"),  # was computed twice
        ("lr_decay", 2, r"lr_decay=2.0 is invalid: the LR decay factor must be a number in \(0, 1\]"),  # lr grew
        ("patience", -1, "patience=-1 is invalid"),
        ("threads", -2, "threads=-2 is invalid"),
        ("threads", 10**12, r"threads=1000000000000 is invalid: .* from 0 to 1,024"),  # was torch's OverflowError
        ("lr", 0, "lr=0.0 is invalid"),
        ("lr", -1e-3, "lr=-0.001 is invalid"),
        ("lr", float("nan"), "lr=nan is invalid"),
        ("eval_batch_size", 0, "eval_batch_size=0 is invalid"),
        ("weight_decay", -1, "weight_decay=-1.0 is invalid"),
        ("lr_decay_epochs", 0, "lr_decay_epochs=0 is invalid"),
        ("seed", -1, "seed=-1 is invalid"),
        ("device", "tpu", r"device='tpu' is invalid: the device must be one of cpu, cuda, mps"),
        ("device", "cuda:x", "device='cuda:x' is invalid"),
        ("device", "cpu:5", r"device='cpu:5' is invalid: the CPU is one device: give cpu"),  # ran on the CPU
        ("valid_metric", "recall@abc", r"valid_metric='recall@abc' is invalid: must be METRIC@K"),
    ],
)
def test_out_of_range_training_settings_are_config_errors(key, value, message):
    with pytest.raises(ConfigError, match=message):
        resolve_config("lightgcn", "baby", {key: value})


@pytest.mark.parametrize(
    "model, key, value, message",
    [  # each was a "loss term became non-finite ... lower the learning rate" after training began,
       # or a run that finished on it (damrs kl_weight=nan, siger um_weight=nan, any weight < 0)
        ("lightgcn", "reg_weight", "nan", r"setting reg_weight=nan is invalid: model settings must be finite"),
        ("mgcn", "cl_tau", ".inf", r"setting cl_tau=inf is invalid"),
        ("damrs", "kl_weight", "nan", r"setting kl_weight=nan is invalid"),
        ("freedom", "mm_weights", "[0.5, .nan]", r"setting mm_weights=\[0.5, nan\] is invalid"),
        ("lightgcn", "reg_weight", "-1", r"setting reg_weight=-1.0 is invalid: a loss weight must be >= 0"),
        ("gume", "um_weight", "-0.1", r"setting um_weight=-0.1 is invalid: a loss weight must be >= 0"),
    ],
)
def test_non_finite_model_settings_and_negative_loss_weights_are_config_errors(model, key, value, message):
    with pytest.raises(ConfigError, match=message):
        resolve_config(model, "baby", parse_assignments([f"{key}={value}"]))


@pytest.mark.parametrize(
    "model, settings, switch, message",
    [  # each trained, the setting never read
        ("siger", "um_weight=0.1", "extended_branch=true",
         r"um_weight=0.1 only acts with extended_branch=true, which is not set, so it would be ignored: drop "
         r"um_weight=0.1, or set extended_branch=true"),
        ("siger", "beta=0.3 beta_per_modality=true beta_modalities=[0.1,0.2]", None,
         r"beta=0.3 only acts with beta_per_modality=false"),  # beta_modalities replaced it
        ("egra", "vt_weight=0.5 noise_mode=modulus", "backbone=gume",
         r"vt_weight=0.5, noise_mode='modulus' only act with backbone=gume"),
        ("lattice", "cf_model=mf n_ui_layers=3", None, r"n_ui_layers=3 only acts with cf_model=lightgcn"),
        ("lattice", "cf_model=mf ui_graph=sym", None, r"ui_graph='sym' only acts with cf_model=lightgcn"),
        ("lgmrec", "cf_model=mf n_ui_layers=0", None, r"n_ui_layers=0 only acts with cf_model=lightgcn"),
        ("rlmmrec", "fusion=concat gate=scalar", None, r"gate='scalar' only acts with fusion=gate"),
    ],
)
def test_a_setting_the_other_settings_leave_unread_is_refused(model, settings, switch, message):
    with pytest.raises(ConfigError, match=f"model '{model}' rejects its settings: {message}"):
        resolve_config(model, "baby", parse_assignments(settings.split()))
    if switch:  # with the setting that reads it, the same value is fine
        resolve_config(model, "baby", parse_assignments([*settings.split(), switch]))


@pytest.mark.parametrize("settings, message", [
    # each trained: the seed was replaced by the stage's, the epochs by pretrain_epochs
    (["pretrain_settings={seed: 3}"], r"pretrain_settings sets seed: 3, but stage 1 trains with the run's seed"),
    (["pretrain_cache="], r"pretrain_cache='' names no folder"),  # was the default cache, silently
    (["pretrained="], r"pretrained='' names no run: give a run directory"),  # was read as the folder '.'
    (["pretrain_settings={epochs: 0}", "pretrain_epochs=5"],
     r"pretrain_epochs=5 and pretrain_settings epochs: 0 both set stage 1's maximum epochs: give one of them"),
])
def test_stage_one_settings_that_would_be_replaced_are_refused(settings, message):
    with pytest.raises(ConfigError, match=f"model 'egra' rejects its settings: {message}"):
        resolve_config("egra", "baby", parse_assignments(settings))


def test_topk_zero_blames_topk_not_valid_metric():
    with pytest.raises(ConfigError) as info:
        resolve_config("lightgcn", "baby", {"topk": 0})
    assert str(info.value).startswith("setting topk=")


def test_a_topk_above_the_item_count_is_refused_and_the_default_is_not():
    cfg = resolve_config("lightgcn", "baby", {"topk": [10, 500], "valid_metric": "recall@10"})
    with pytest.raises(ConfigError, match=r"setting topk=\[10, 500\]: cut-off 500 is above the 200 items of toy"):
        cfg.train.check_cut_offs(200, "toy")
    cfg.train.check_cut_offs(500, "toy")  # K = the item count ranks every item: allowed
    resolve_config("lightgcn", "baby", {}).train.check_cut_offs(30, "toy")  # the default (5, 10, 20, 50)


def test_a_missing_gpu_is_a_config_error_before_training():
    cfg = resolve_config("lightgcn", "baby", {"device": "cuda"})  # well-formed: resolves anywhere
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ConfigError, match="device='cuda' but this machine has no CUDA GPU.*--set device=cpu"):
        cfg.train.check_device()
    TrainConfig(device="cpu").check_device()


def test_unknown_model_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown model 'nope'; registered: .*lightgcn"):
        resolve_config("nope", "baby")


@pytest.mark.parametrize(
    "content, message",
    [
        ("lr: [0.1,\n", r"c\.yaml, line 2, column 1: not valid YAML"),
        ("- 1\n- 2\n", "expected a mapping of settings"),
        ("train: 3\n", "section 'train' must be a mapping"),
        # were one value silently: the section's over the top level's, params' over train's
        ("lr: 0.5\ntrain:\n  lr: 0.001\n",
         r"c\.yaml sets lr twice \(at the top level: 0\.5, in section 'train': 0\.001\); keep one"),
        ("train:\n  epochs: 1\nparams:\n  epochs: 2\n", r"sets epochs twice \(in section 'train': 1, in section 'params'"),
    ],
)
def test_broken_yaml_is_a_config_error_naming_the_file(tmp_path, content, message):
    (tmp_path / "c.yaml").write_text(content)
    with pytest.raises(ConfigError, match=message):
        load_yaml_overrides(tmp_path / "c.yaml")


def test_missing_or_binary_yaml_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml does not exist"):
        load_yaml_overrides(tmp_path / "nope.yaml")
    (tmp_path / "b.yaml").write_bytes(b"lr: 0.1\n\xff\xfe")
    with pytest.raises(ConfigError, match="is not UTF-8 text"):
        load_yaml_overrides(tmp_path / "b.yaml")


def test_seeds_have_one_meaning():
    from prismrec.experiment.seeds import resolve_seeds

    assert resolve_seeds("3", None) == [3]  # a list of one seed, never a count
    assert resolve_seeds("999,1,2", None) == [999, 1, 2] and resolve_seeds("1001,", None) == [1001]
    assert resolve_seeds(None, 3) == [999, 1000, 1001]
    assert resolve_seeds(None, None, default_n=1) == [999] and resolve_seeds(None, None, default_n=3) == [999, 1000, 1001]
    for text, message in [("abc", r"--seeds 'abc': 'abc' is not a whole number"), ("", "holds no seed"),
                          (" , ", "holds no seed"), ("1,1", r"repeats seed\(s\) \[1\]"), ("-1", "out of range"),
                          ("1.5", "'1.5' is not a whole number")]:
        with pytest.raises(ConfigError, match=message):
            resolve_seeds(text, None)
    for n in (0, -1, 101):
        with pytest.raises(ConfigError, match="--n-seeds must be a whole number from 1 to 100"):
            resolve_seeds(None, n)
    with pytest.raises(ConfigError, match="not both"):
        resolve_seeds("1", 2)
