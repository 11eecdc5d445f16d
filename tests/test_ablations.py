"""The seed models' ablations are data (``ABLATIONS`` of benchmarks/{siger,egra,rlmmrec}.py) that
the headline study imports: each variant is a valid change of the model's settings on both
benchmark datasets, and the variants the specification requires are present."""

import pytest

from prismrec.experiment.config import parse_assignments, resolve_config


def ablations(model: str) -> dict[str, list[str]]:
    import importlib

    return importlib.import_module(f"benchmarks.{model}").ABLATIONS


@pytest.mark.parametrize("model", ["siger", "egra", "rlmmrec"])
def test_every_variant_resolves_and_the_full_model_is_listed(model):
    variants = ablations(model)
    assert sum(changed == [] for changed in variants.values()) == 1  # the full model, once
    assert all(isinstance(s, str) and "=" in s for changed in variants.values() for s in changed)
    seen = set()
    for label, changed in variants.items():
        for dataset in ("tiktok", "lfm2k"):
            settings = parse_assignments([s.replace("{dataset}", dataset) for s in changed])
            params = resolve_config(model, dataset, settings).params
            assert all(getattr(params, k) == v for k, v in settings.items()), label
        assert tuple(changed) not in seen, f"{label}: the same change twice"
        seen.add(tuple(changed))


def test_required_variants():
    siger = {tuple(c) for c in ablations("siger").values()}
    assert ("gamma=0",) in siger and ("perturb_mode=fixed",) in siger  # uniform relative noise, fixed noise
    assert {("beta=0",), ("lambda_p=0",), ("lambda_a=0",), ("lambda_b=0",)} <= siger
    egra = {tuple(sorted(c)) for c in ablations("egra").values()}
    assert ("entity_sign=1",) in egra
    assert ("entity_weighting=none", "schedule=constant") in egra  # w/o both levels (6.6)
    assert {("gamma=0",), ("item_links=raw",), ("entity_weighting=none",), ("schedule=constant",)} <= egra
    rlmmrec = {tuple(c) for c in ablations("rlmmrec").values()}
    assert {("fusion=concat",), ("fusion=mean",), ("gate=scalar",), ("item_input=content_only",)} <= rlmmrec
