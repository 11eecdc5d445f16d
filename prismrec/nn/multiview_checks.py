"""Settings checks of the MGCN family (MGCN, GUME, SIGER, EGRA; :mod:`prismrec.nn.multiview`).

Each raises ``ValueError`` naming the setting, its value and the bound it breaks, or a setting the
model would never read. A model's ``check_settings`` calls its check without ``n_items``, so
:func:`~prismrec.experiment.config.resolve_config` refuses before any work; its ``check_dataset``
adds the bounds that need the data (:meth:`prismrec.recommender.Recommender.check_dataset`).
"""

from __future__ import annotations

from dataclasses import fields

from prismrec.checks import check_choices, refuse_unused, require_fraction, require_items
from prismrec.nn.multiview import GUMETermsConfig, MultiViewConfig
from prismrec.recommender import Recommender


def check_multiview_config(config: MultiViewConfig, n_items: int | None = None, **positive: float) -> None:
    """Raise ``ValueError`` naming each shared setting out of range (``n_ii_layers`` too, where the
    model's config has it; ``knn_k`` above ``n_items``, when given), and each of ``positive``
    (``name=value`` pairs, e.g. temperatures) that is not > 0."""
    broken = [f"{k} must be >= {low}, got {getattr(config, k)}"
              for k, low in (("embedding_size", 1), ("knn_k", 1), ("n_ui_layers", 0), ("n_ii_layers", 0))
              if getattr(config, k, None) is not None and getattr(config, k) < low]
    broken += [f"{k} must be > 0, got {v}" for k, v in positive.items() if v <= 0]
    if broken:
        raise ValueError("; ".join(broken))
    if n_items is not None:
        require_items(n_items, knn_k=config.knn_k)


def check_siger_config(config, n_items: int | None = None) -> None:
    """Raise ``ValueError`` naming the first SIGER setting (:class:`prismrec.models.siger.SIGERConfig`)
    out of its range."""
    check_multiview_config(config, n_items, co_k=config.co_k, tau_p=config.tau_p, tau_a=config.tau_a,
                           tau_b=config.tau_b, um_tau=config.um_tau)
    check_choices(config, "siger")
    if not 0.0 <= config.beta <= 1.0:
        raise ValueError(f"siger: beta must be in [0, 1] (G_m = (1-β)Ŝ_m + βĈ), got {config.beta}")
    if config.beta_per_modality != (config.beta_modalities is not None):
        raise ValueError("siger: set beta_modalities (one β per modality) exactly when beta_per_modality=true")
    for key in ("eps", "lambda_p", "lambda_a", "lambda_b", "reg_weight", "um_weight", "reg2_weight", "n_sem_layers"):
        if getattr(config, key) < 0:
            raise ValueError(f"siger: {key} must be >= 0, got {getattr(config, key)}")
    if config.perturb_at == "layers" and config.n_sem_layers < 1:
        raise ValueError("siger: perturb_at='layers' adds noise after G_m products; needs n_sem_layers >= 1")
    # settings the model would never read (they were ignored)
    refuse_unused(config, ("um_weight", "um_tau", "reg2_weight"), config.extended_branch, "extended_branch=true")
    refuse_unused(config, ("beta",), not config.beta_per_modality, "beta_per_modality=false")


def siger_betas(config, modalities: list[str]) -> list[float]:
    """SIGER's ``β_m`` per modality (``G_m = (1 − β_m) Ŝ_m + β_m Ĉ``), checked once the modalities
    are known (A3 needs two)."""
    k = len(modalities)
    if config.anchor_form == "A3" and k < 2:
        raise ValueError(f"siger: anchor_form='A3' contrasts modalities and needs at least 2, got {modalities}")
    betas = [float(b) for b in config.beta_modalities] if config.beta_per_modality else [config.beta] * k
    if len(betas) != k or not all(0.0 <= b <= 1.0 for b in betas):
        raise ValueError(f"siger: beta_modalities needs one β in [0, 1] per modality {modalities}, got {betas}")
    return betas


def check_egra_config(config, n_items: int | None = None) -> None:
    """Raise ``ValueError`` naming the first EGRA setting (:class:`prismrec.models.egra.EGRAConfig`)
    out of its range (``knn_k`` and ``k_pre`` against ``n_items``, when given), or one it would never
    read: a ``pretrained`` run beside ``item_links="raw"``, GUME's terms without ``backbone="gume"``."""
    if config.item_links == "raw" and config.pretrained != "auto":
        raise ValueError(
            f"item_links=raw puts GUME's raw-feature links in place of P, so pretrained={config.pretrained!r} "
            "would never be read: drop pretrained, or set item_links=pretrained to take P from that run")
    refuse_unused(config, tuple(f.name for f in fields(GUMETermsConfig)), config.backbone == "gume", "backbone=gume")
    check_multiview_config(config, n_items, tau=config.tau, tau_w=config.tau_w, um_tau=config.um_tau)
    check_choices(config, "egra")
    Recommender.require_at_least(config, k_pre=1, ramp_epochs=1, gamma=0, lambda_max=0, noise_eps=0)
    require_fraction("lambda_min_ratio", config.lambda_min_ratio, "λ_min = ratio·λ_max")
    if config.pretrain_epochs is not None:
        Recommender.require_at_least(config, pretrain_epochs=1)
    if n_items is not None and config.item_links == "pretrained" and config.k_pre > n_items - 1:  # was named 'k'
        raise ValueError(f"k_pre={config.k_pre} exceeds the other items ({n_items - 1}): B_pre links "
                         f"each item to k_pre others")
