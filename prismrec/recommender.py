"""The Recommender contract that training and evaluation rely on (DESIGN.md §3)."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import nn

from prismrec.checks import require_items

CANONICAL_MODALITIES = ("image", "text", "audio")
"""Default modality order: models that give modalities roles (MGCN's v/t, FREEDOM's weights)
take the first present modality as the "visual" one and the second as the "textual" one."""

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
"""``(u, i, j)``: user ids, positive item ids, negative item ids (LongTensors of length B)."""


@dataclass
class Output:
    """What ``forward()`` returns: final user/item representations plus named auxiliaries.

    ``aux`` holds intermediate views a model's loss needs (``behavior``, ``modality``, ...);
    the evaluator ignores it.
    """

    user: torch.Tensor
    item: torch.Tensor
    aux: dict[str, torch.Tensor] = field(default_factory=dict)

    @classmethod
    def of_nodes(cls, z: torch.Tensor, n_users: int, aux: dict[str, torch.Tensor] | None = None) -> Output:
        """From one ``N x d`` node table, users first: ``user = z[:n_users]``, ``item = z[n_users:]``
        (views of ``z``, no copy)."""
        return cls(z[:n_users], z[n_users:], {} if aux is None else aux)

    def bpr_rows(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(user[u], item[i], item[j])`` of a batch ``(u, i, j)``.

        ``index_select`` rather than ``x[u]``: on CPU it is ~4x faster, and so is its backward
        (a scatter-add instead of an accumulating index_put)."""
        u, i, j = batch
        return self.user.index_select(0, u), self.item.index_select(0, i), self.item.index_select(0, j)


def add_grad(param: torch.Tensor, grad: torch.Tensor) -> None:
    """Add ``grad`` to ``param.grad`` as autograd's accumulation does: taken as it is where there is
    none yet, added in place otherwise."""
    if param.grad is None:
        param.grad = grad
    else:
        param.grad.add_(grad)


@dataclass
class PretrainedItems:
    """An earlier stage's item representations (EGRA's ``P``) and where they came from.

    The experiment layer computes them (``prismrec.experiment.stages``) for a model whose
    :meth:`Recommender.required_inputs` names ``"pretrained_items"``."""

    vectors: np.ndarray
    """``n_items x d`` float32 matrix, row ``i`` = item ``i``."""
    run: str | None = None
    """The run (or export) directory that produced them."""
    file: str | None = None
    """The file they were read from."""


@dataclass
class PretrainedStageConfig:
    """Settings of the stage that computes :class:`PretrainedItems` (ALGORITHMS.md 6.1), read by
    the experiment layer; a model that requires ``pretrained_items`` inherits them (flat keys)."""

    pretrained: str = "auto"
    """A run dir of ``prismrec train`` or its export dir, or ``"auto"`` (nested, cached run)."""
    pre_model: str = "mgcn"
    """Pretraining model of ``"auto"`` (a registered name; e.g. freedom, gume)."""
    pre_rep: Literal["final", "behavior", "modality"] = "final"
    """``P`` = ``Z_I`` (item.npy), ``C_I`` (item.behavior.npy) or ``M_I`` (item.modality.npy)."""
    pretrain_per_seed: bool = True
    """Stage 1 uses the run's seed (also picks a multi-seed run's seed dir); False: seed 999."""
    pretrain_epochs: int | None = None
    """``"auto"``: maximum stage-1 epochs; ``None`` = the training defaults (1000, patience 20)."""
    pretrain_settings: dict[str, Any] = field(default_factory=dict)
    """``"auto"``: other stage-1 settings, e.g. ``{cl_weight: 0.1, device: cuda}`` (not seed)."""
    pretrain_cache: str | None = None
    """``"auto"`` cache root; None: ``$PRISMREC_CACHE/pretrained`` (``PRISMREC_CACHE`` defaults to
    ``~/.cache/prismrec``)."""

    AUTO_ONLY: ClassVar[tuple[str, ...]] = ("pre_model", "pretrain_epochs", "pretrain_settings", "pretrain_search",
                                            "pretrain_cache")
    """Settings of ``pretrained="auto"``'s stage 1 (unused with a run dir; a subclass may lack some)."""

    def __post_init__(self) -> None:
        """Refuse stage-1 settings that ``pretrained=PATH`` would ignore, a seed or a second epoch
        count in ``pretrain_settings`` (both were ignored), and a ``pre_model`` that needs a stage 0 itself."""
        if isinstance(self.pretrained, str) and not self.pretrained.strip():  # was read as the folder '.'
            raise ValueError(f"pretrained={self.pretrained!r} names no run: give a run directory of prismrec train "
                             "(or its export), or pretrained=auto")
        if self.pretrained != "auto":
            defaults = {f.name: f.default if f.default_factory is MISSING else f.default_factory()
                        for f in fields(self)}
            ignored = [f"{k}={getattr(self, k)!r}" for k in self.AUTO_ONLY
                       if k in defaults and getattr(self, k) != defaults[k]]
            if ignored:
                raise ValueError(
                    f"{', '.join(ignored)} only {'acts' if len(ignored) == 1 else 'act'} in the stage-1 training of "
                    f"pretrained=auto, but pretrained="
                    f"{self.pretrained!r} takes P from that run as it is: drop {' and '.join(ignored)}, or set "
                    "pretrained=auto")
        if isinstance(self.pretrain_cache, str) and not self.pretrain_cache.strip():  # was the default cache
            raise ValueError(f"pretrain_cache={self.pretrain_cache!r} names no folder: give a folder path, or leave "
                             "pretrain_cache out for $PRISMREC_CACHE/pretrained")
        stage = self.pretrain_settings if isinstance(self.pretrain_settings, dict) else {}
        seed = next((k for k in ("seed", "seeds") if k in stage), None)
        if seed is not None:  # was replaced by the stage's seed, silently
            raise ValueError(
                f"pretrain_settings sets {seed}: {stage[seed]!r}, but stage 1 trains with the run's seed "
                "(pretrain_per_seed=true) or 999 (false): remove it from pretrain_settings")
        if "epochs" in stage and self.pretrain_epochs is not None:  # pretrain_epochs won, silently
            raise ValueError(
                f"pretrain_epochs={self.pretrain_epochs} and pretrain_settings epochs: {stage['epochs']!r} both set "
                "stage 1's maximum epochs: give one of them")
        from prismrec.models import get_model

        try:
            pre = get_model(self.pre_model)
        except (KeyError, ValueError):  # an unknown or empty name: the stage names the registered ones
            return
        if issubclass(pre.Config, PretrainedStageConfig):
            raise ValueError(
                f"pre_model={self.pre_model!r} needs pretrained representations itself, so stage 1 would run "
                f"a nested pretraining (its whole grid, each point with its own stage 1): choose a model that "
                f"learns from the data alone, e.g. pre_model=mgcn (the default), freedom, gume or lgmrec")


class Recommender(nn.Module):
    """Base class of every model.

    Subclasses set ``Config`` (a dataclass whose defaults are the paper's values) and may set
    ``train_defaults`` (training settings the reference uses for this model, e.g. an LR decay),
    then implement ``forward`` and ``loss``. ``score`` defaults to the dot product; the trainer
    calls ``batch_loss``, which a model may specialise (see there). A model that needs an
    earlier stage's output declares it in :meth:`required_inputs` and takes it as a keyword
    argument of its constructor; models never compute earlier stages themselves.
    """

    name: ClassVar[str] = ""
    Config: ClassVar[type]
    train_defaults: ClassVar[dict] = {}
    train_grid: ClassVar[dict[str, list]] = {}
    """Training settings the paper's or reference's search varies for this model (e.g. ``lr``),
    searched with its Config's ``grid`` fields by a study (``benchmarks.headline``)."""
    uses_negatives: ClassVar[bool] = True
    """False when ``loss`` never reads a batch's negatives ``j`` (BM3); the sampler still draws them."""
    min_modalities: ClassVar[int] = 1
    """The fewest modalities the model runs on (:meth:`used_modalities`): GUME's 2, BM3's 0 (its
    ID-only bootstrap); read where the model's config has ``modalities``."""
    item_sizes: ClassVar[tuple[str, ...]] = ("knn_k",)
    """Settings that count items (neighbours per item of a top-``k`` graph), each refused above the
    dataset's items by :meth:`check_dataset` where the config has it (SIGER adds ``co_k``)."""

    @classmethod
    def required_inputs(cls, config) -> tuple[str, ...]:
        """Names of the earlier stages' outputs this model needs with ``config``, each passed to
        the constructor as a keyword argument of that name (e.g. ``"pretrained_items"``, a
        :class:`PretrainedItems`); none by default."""
        return ()

    def __init__(self, dataset, config) -> None:
        super().__init__()
        self.config = config
        self.n_users = dataset.n_users
        self.n_items = dataset.n_items

    @classmethod
    def check_settings(cls, config) -> None:
        """Raise ``ValueError`` naming each setting of ``config`` out of a range that needs no data
        (``n_layers=-1``, a temperature of 0); none by default. :func:`~prismrec.experiment.config.resolve_config`
        runs it, so a search or a comparison refuses such a setting before any work; a model's
        constructor runs it first, within :meth:`check_dataset`."""

    @classmethod
    def check_dataset(cls, config, dataset) -> None:
        """Raise ``ValueError`` where ``config`` does not fit ``dataset``: :meth:`check_settings`, then
        each of :attr:`item_sizes` above its items (``knn_k``), a modality it lacks or fewer than
        :attr:`min_modalities` (:meth:`used_modalities`); a model extends it with its own checks against
        the data. A model's constructor runs it first; the experiment layer before the earlier stages
        (``stages.build_model``: EGRA's stage 1 trains for hours), and ``compare`` for every cell before
        the first one trains. It reads the dataset's counts and the names of its modalities (the keys
        of ``features``), never their values: ``compare`` passes the interactions alone."""
        cls.check_settings(config)
        require_items(dataset.n_items, **{k: getattr(config, k) for k in cls.item_sizes if hasattr(config, k)})
        if hasattr(config, "modalities"):
            cls.used_modalities(config, dataset)

    @classmethod
    def used_modalities(cls, config, dataset) -> list[str]:
        """The modalities the model runs on: ``config.modalities`` (``None``: all the dataset has), at
        least :attr:`min_modalities` (:meth:`select_modalities`); a model whose settings keep fewer
        overrides it (RLMultimodalRec's ``*_only`` fusions)."""
        return cls.select_modalities(dataset, config.modalities, cls.min_modalities, cls.name)

    @staticmethod
    def require_at_least(config, **minimums: float) -> None:
        """Raise ``ValueError`` naming every config field below its minimum (``n_layers=0``)."""
        low = [f"{k} must be >= {v}, got {getattr(config, k)}" for k, v in minimums.items() if getattr(config, k) < v]
        if low:
            raise ValueError("; ".join(low))

    @staticmethod
    def select_modalities(dataset, wanted: list[str] | None, minimum: int = 1, model: str = "") -> list[str]:
        """The modality names a model uses: ``wanted`` (checked) or all present, canonical order.

        Raises ``ValueError`` naming what is missing and what the dataset has.
        """
        present = list(dataset.features)
        if wanted is None:
            rank = {m: i for i, m in enumerate(CANONICAL_MODALITIES)}
            wanted = sorted(present, key=lambda m: (rank.get(m, len(rank)), m))
        repeated = sorted({m for m in wanted if list(wanted).count(m) > 1})
        if repeated:  # was used twice, as if it were two modalities (gume's "at least 2" passed)
            raise ValueError(
                f"modalities={list(wanted)} names {', '.join(repeated)} more than once: list each modality "
                f"once, e.g. --set modalities=[{','.join(dict.fromkeys(wanted))}]"
            )
        missing = [m for m in wanted if m not in present]
        if missing:
            raise ValueError(
                f"{model or 'model'} needs modality feature(s) {', '.join(missing)} but dataset "
                f"{dataset.name!r} has {', '.join(present) or 'none'}: add <modality>_feat.npy "
                "files or choose others with --set modalities=[...]"
            )
        if len(wanted) < minimum:
            raise ValueError(
                f"{model or 'model'} needs at least {minimum} {'modality' if minimum == 1 else 'modalities'}; "
                f"dataset {dataset.name!r} offers {', '.join(present) or 'none'}"
                + (f" and {', '.join(wanted) or 'none'} {'was' if len(wanted) < 2 else 'were'} selected" if present else "")
            )
        return list(wanted)

    def reset_parameters(self) -> None:
        """Draw every parameter afresh: each submodule's ``reset_parameters()`` in registration
        order (a container without one, e.g. ``nn.ModuleList``, is searched inside). Every model
        calls it once at the end of its constructor, so one seed fixes the initial values;
        override it where a model's reference initialises otherwise."""

        def reset(module: nn.Module) -> None:
            for child in module.children():
                if hasattr(child, "reset_parameters"):
                    child.reset_parameters()
                else:
                    reset(child)

        reset(self)

    def forward(self) -> Output:  # pragma: no cover - abstract
        """Full propagation: final user and item representations."""
        raise NotImplementedError

    def loss(self, batch: Batch, out: Output) -> dict[str, torch.Tensor]:  # pragma: no cover
        """Named loss terms for one batch; the trainer sums and logs each."""
        raise NotImplementedError

    def batch_loss(self, batch: Batch) -> dict[str, torch.Tensor]:
        """What the trainer calls for each batch: ``loss(batch, forward())``.

        A model whose loss reads only the batch's rows may override it to propagate less (see
        LightGCN); the override must give the same terms and gradients as this default. On a
        GPU the trainer calls the default (full products are cheap there; host-side row slicing
        is not).
        """
        return self.loss(batch, self())

    def batch_gradients(self, batch: Batch) -> dict[str, torch.Tensor] | None:
        """A closed-form alternative to :meth:`batch_loss` that the trainer tries first on a CPU in
        one process: the batch's loss terms (no autograd graph), every parameter's gradient of their
        sum already added to its ``.grad`` (see :func:`add_grad`). ``None`` (the default): the
        trainer differentiates :meth:`batch_loss`. An override must give the same terms and
        gradients (BPR-MF: bit for bit); it saves the autograd graph's bookkeeping, which on a
        model of a few tiny kernels costs as much as the arithmetic."""
        return None

    def on_epoch_start(self, epoch: int) -> None:
        """Hook called before each training epoch (0-based): schedules, edge dropout."""

    def epoch_log(self) -> dict:
        """Extra values for the current epoch's history row, e.g. a schedule's weight.

        The trainer merges them into each epoch's row after training (before validation); keys
        must not clash with the trainer's own columns (``epoch``, ``lr``, ``loss_*``, ``valid_*``).
        """
        return {}

    def score(self, users: torch.Tensor, out: Output) -> torch.Tensor:
        """Scores of ``users`` against every item, ``len(users) x n_items``."""
        return out.user[users] @ out.item.T

    content_id_rows: ClassVar[str | None] = None
    """What the model's content path does with the cold items' ID rows by default (``"zero"``:
    removed; ``"impute"``: the mean of their warm neighbours' rows on a feature graph; ``None``:
    no ID rows involved or no content path), see :mod:`prismrec.nn.content`."""

    def content_item_embeddings(
        self, items: torch.Tensor, out: Output, id_rows: str | None = None
    ) -> torch.Tensor | None:
        """Inductive scoring hook: representations of ``items`` (ids) from their content alone.

        A cold item (no training interaction, :mod:`prismrec.data.derive`) has an ID embedding
        that never learned anything, so its row of ``out.item`` is meaningless. A model whose
        paper says how to represent an item from its modality features (its modality branch or
        purifier output, a learned feature-to-ID map, ...) overrides this to return a
        ``len(items) x d`` tensor in the space of ``out.item`` (so ``score`` can use it in place
        of those rows); ``out`` is the eval-mode forward output. ``None`` (the default) means the
        model has no content-only path: :func:`prismrec.coldstart.cold_item_embeddings` then uses
        a model-agnostic strategy (``map``: ridge regression from features to the final item
        embeddings of warm items; ``knn``: mean over the nearest warm items by content).

        Contract of an override: it never reads the ID rows of ``items`` and never uses one of
        ``items`` as a neighbour (every other item is taken as trained); ``id_rows`` (``"zero"``
        or ``"impute"``, :mod:`prismrec.nn.content`) overrides the model's
        :attr:`content_id_rows` where the path has ID rows to replace, and is ignored otherwise.
        """
        return None

    def generator_states(self) -> dict[str, torch.Tensor]:
        """The state of every ``torch.Generator`` held by a module of this model (noise views,
        dropout masks), keyed ``"<module path>:<attribute>"``. Training checkpoints save it, so
        a resumed run draws the same noise as an uninterrupted one."""
        return {
            f"{path}:{attr}": value.get_state()
            for path, module in self.named_modules()
            for attr, value in vars(module).items()
            if isinstance(value, torch.Generator)
        }

    def load_generator_states(self, states: dict[str, torch.Tensor]) -> None:
        """Restore :meth:`generator_states` (a generator not created yet is created on the model's
        device)."""
        modules = dict(self.named_modules())
        for key, state in states.items():
            path, _, attr = key.rpartition(":")
            module = modules[path]
            generator = getattr(module, attr, None)
            if not isinstance(generator, torch.Generator):
                generator = torch.Generator(device=self.device)
                setattr(module, attr, generator)
            generator.set_state(state)

    @property
    def device(self) -> torch.device:
        """Device of the model's parameters (CPU when it has none)."""
        p = next(self.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    def extra_repr(self) -> str:
        return f"users={self.n_users}, items={self.n_items}, config={self.config}"


@contextmanager
def eval_mode(model: nn.Module):
    """``model`` in evaluation mode for the block, then back in the mode it was in."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)
