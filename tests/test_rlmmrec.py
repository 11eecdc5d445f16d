import numpy as np
import pytest
import torch

from prismrec.errors import ConfigError
from prismrec.experiment.config import resolve_config
from prismrec.models import get_model
from prismrec.nn.fusion import GatedFusion
from prismrec.train import fit, seed_everything
from tests.test_train import random_recall_at_20


def build(dataset, **settings):
    seed_everything(0)
    cfg = resolve_config("rlmmrec", dataset.name, settings)
    return get_model("rlmmrec")(dataset, cfg.params), cfg


@pytest.mark.parametrize("m, scalar", [(2, False), (2, True), (3, False), (3, True)])
def test_gate_weights_are_convex(m, scalar):
    torch.manual_seed(0)
    gate = GatedFusion(m, 8, scalar=scalar)
    xs = [torch.randn(50, 8) * 3 for _ in range(m)]
    fused, w = gate(xs)
    assert w.shape == (50, m, 1 if scalar else 8)
    assert (w >= 0).all() and (w <= 1).all()
    torch.testing.assert_close(w.sum(1), torch.ones(50, w.shape[2]))
    want = sum(w[:, k] * xs[k] for k in range(m))
    torch.testing.assert_close(fused, want)


def test_two_modality_gate_is_sigmoid_of_a_linear_map():
    torch.manual_seed(1)
    gate = GatedFusion(2, 4)
    v, t = torch.randn(5, 4), torch.randn(5, 4)
    g = torch.sigmoid(torch.cat([v, t], 1) @ gate.linear.weight.T + gate.linear.bias)
    fused, w = gate([v, t])
    torch.testing.assert_close(fused, g * v + (1 - g) * t)
    torch.testing.assert_close(w[:, 0], g)


@pytest.mark.parametrize("forced, single", [(1.0, "visual_only"), (0.0, "text_only")])
def test_forced_gate_equals_single_modality_variant(planted, forced, single):
    gated, _ = build(planted)
    alone, _ = build(planted, fusion=single)
    alone.load_state_dict(gated.state_dict(), strict=False)  # same ID tables and projectors
    with torch.no_grad():
        gated.fuser.linear.weight.zero_()
        gated.fuser.linear.bias.fill_(60.0 if forced else -60.0)  # σ = exactly 1 or 0 in float32
    gated.eval(), alone.eval()
    a, b = gated(), alone()
    assert alone.modalities == [gated.modalities[0 if forced else 1]]
    torch.testing.assert_close(a.user, b.user)
    torch.testing.assert_close(a.item, b.item)


@pytest.mark.parametrize(
    "settings",
    [{}, {"gate": "scalar"}, {"fusion": "concat"}, {"fusion": "mean"}, {"item_input": "content_only"},
     {"item_input": "concat_linear"}, {"n_layers": 1}, {"modalities": ["text"]}],
)
def test_smoke_and_switches(planted, settings):
    model, cfg = build(planted, epochs=6, lr=0.01, **settings)
    result = fit(model, planted, cfg.train, progress=False)
    losses = [row["loss"] for row in result.history]
    assert np.isfinite(losses).all() and losses[-1] < losses[0]
    assert result.best_valid["recall@20"] > 2.5 * random_recall_at_20(planted)


def test_content_only_has_no_item_id_table_in_the_graph_input(planted):
    model, _ = build(planted, item_input="content_only")
    out = model()
    m, _ = model.content()
    torch.testing.assert_close(out.aux["items0"], m)


def test_missing_modalities_are_clear_errors(planted):
    with pytest.raises(ValueError, match="needs modality feature"):
        build(planted, modalities=["audio"])
    single = type(planted)(**{**planted.__dict__, "features": {"image": planted.features["image"]}})
    with pytest.raises(ValueError, match="at least 2 modalities"):
        build(single, fusion="second_only")
    with pytest.raises(ConfigError, match=r"fusion=text_only keeps the text-like modality, but \['image'\] have 0"):
        build(single, fusion="text_only")


@pytest.mark.parametrize("key, value", [("n_layers", -1), ("embedding_size", 0)])
def test_out_of_range_sizes_are_clear_errors(planted, key, value):
    with pytest.raises(ValueError, match=f"{key} must be >= "):  # n_layers=-1 was a ZeroDivisionError
        build(planted, **{key: value})


def test_single_modality_variants_go_by_name_or_by_listed_position(planted):
    listed = ["text", "image"]
    assert build(planted, modalities=listed, fusion="visual_only")[0].modalities == ["image"]
    assert build(planted, modalities=listed, fusion="text_only")[0].modalities == ["text"]
    assert build(planted, modalities=listed, fusion="first_only")[0].modalities == ["text"]
    assert build(planted, modalities=listed, fusion="second_only")[0].modalities == ["image"]


def test_gate_analysis_writes_weights_summary_and_plot(planted, planted_dir, tmp_path):
    import json

    from typer.testing import CliRunner

    from prismrec.cli import app
    from prismrec.experiment.config import resolve_config
    from prismrec.eval import popularity_buckets
    from prismrec.experiment.runs import run_experiment

    run = tmp_path / "run"
    run_experiment(resolve_config("rlmmrec", "planted", {"epochs": 2}), [3], run, dataset=planted, progress=False)
    result = CliRunner().invoke(app, ["gates", "--run", str(run), "--data-dir", str(planted_dir.parent)])
    assert result.exit_code == 0, result.output
    weights = np.load(run / "gates" / "gates.npy")
    assert weights.shape == (planted.n_items, 2, 64)
    np.testing.assert_allclose(weights.sum(1), 1.0, atol=1e-6)
    summary = json.loads((run / "gates" / "gates.json").read_text())
    shares = [summary["overall"][m]["mean"] for m in ("image", "text")]
    assert sum(shares) == pytest.approx(1.0) and shares[0] == pytest.approx(weights[:, 0].mean(), abs=1e-6)
    assert (run / "gates" / "gates.png").stat().st_size > 10_000
    bucket, labels = popularity_buckets(np.array([5, 1, 3, 1, 9, 0]), 3)
    assert bucket.tolist() == [2, 0, 1, 1, 2, 0] and labels[0] == "0-1 interactions"


def test_gate_analysis_rejects_a_model_without_gate(planted, planted_dir, tmp_path):
    from prismrec.experiment.config import resolve_config
    from prismrec.errors import RunError
    from prismrec.experiment.gates import gate_analysis
    from prismrec.experiment.runs import run_experiment

    run = tmp_path / "run"
    run_experiment(resolve_config("rlmmrec", "planted", {"epochs": 1, "fusion": "mean"}), [3], run, dataset=planted, progress=False)
    with pytest.raises(RunError, match="no learned gate"):
        gate_analysis(run, data_dir=planted_dir.parent)
