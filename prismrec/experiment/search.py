"""Hyper-parameter search on validation (Optuna), then the selected point with several seeds.

Every trial trains one seed on a copy of the dataset **without a test split** (and with
``evaluate_test=False``): selection cannot see test, by construction. The selected point is then
trained with the final seeds on the full dataset, and test is evaluated once per seed.

A search space is a list of ``key=SPEC`` strings (CLI ``--space``, one per setting):

- ``key=LOW..HIGH``: uniform; whole numbers for a setting that takes them (``n_layers=1..4``),
  whose bounds are then whole numbers, any number for the others (``reg_weight=0.0..0.5``);
- ``key=LOW..HIGH:log``: log-uniform (``lr=1e-4..1e-2:log``);
- ``key=A|B|C``: one of the values, as ``--set`` would take them (``mm_weights=[0.5,0.5]|[0.1,0.9]``);
- ``grid``: the model's declared grid (:func:`~prismrec.experiment.config.declared_grid`: the
  paper's or reference's values, the learning rate where they search it), one ``key=A|B|C`` per
  setting; an entry of its own for a key replaces the grid's.

The study lives in ``<out>/study.db`` (SQLite) or any Optuna storage (``--storage``: a database
URL, or ``journal:PATH``): rerunning with the same ``--out`` resumes it up to ``trials`` finished
(or diverged, or pruned, or refused) trials, and several processes running the same search share it
(:mod:`prismrec.experiment.workers`). A trial left running by a killed process is marked
interrupted and run again once, with its parameters, from its run directory's last training
checkpoint; the final runs resume the same way and are trained by one worker. A different model,
dataset, space or settings there is an error. A point the model refuses on this dataset (a
``knn_k`` above its item count: only the data tells) ends as a ``refused`` trial with the model's
reason, and the search goes on; when no trial finishes, the refusals are the error.
Trial runs are in ``<out>/trial-<n>/``, the final runs in ``<out>/best/``; ``tuning.json`` and
``tuning.md`` summarise.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import time
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import optuna
import yaml

from prismrec.data import Dataset, load_dataset
from prismrec.experiment.config import (declared_grid, field_types, model_class, parse_assignments,
                                        resolve_config, valid_keys)
from prismrec.errors import ConfigError, ModelRefused, RunError
from prismrec.experiment.compare import seeds_aside
from prismrec.experiment.rundir import RunDir, run_digest, write_atomic
from prismrec.experiment.runs import run_experiment
from prismrec.experiment.workers import (
    GRACE_S, HEARTBEAT_S, Claim, Heartbeat, fail_stale_trials, open_storage, retried_number, wait_for,
)
from prismrec.train.config import TrainConfig
from prismrec.train.trainer import TrainingDiverged

TrialState = optuna.trial.TrialState
_ENDED_BADLY = {"diverged", "refused"}
"""A failed trial's user attributes that end it for good (its reason): counted, never retried."""


class _Refused(Exception):
    """A trial whose point the model refused on this dataset (its settings' one-line reason)."""

_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_RANGE = re.compile(rf"^({_NUMBER})\.\.({_NUMBER})(:log)?$")


@dataclass(frozen=True)
class Dimension:
    """One searched setting: a numeric range or a list of choices."""

    key: str
    low: float | None = None
    high: float | None = None
    integer: bool = False
    log: bool = False
    choices: tuple[str, ...] = ()

    def suggest(self, trial: optuna.Trial) -> Any:
        if self.choices:  # kept as text in the study (Optuna's choices are scalars)
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.integer:
            return trial.suggest_int(self.key, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, log=self.log)

    def setting(self, value: Any) -> Any:
        """The value as a setting: a choice is read as ``--set`` reads it (YAML)."""
        return parse_assignments([f"{self.key}={value}"])[self.key] if self.choices else value


def _settings(dims: list[Dimension], params: dict[str, Any]) -> dict[str, Any]:
    return {d.key: d.setting(params[d.key]) for d in dims}


def selected_settings(dims: list[Dimension], params: dict[str, Any]) -> dict[str, Any]:
    """A trial's Optuna ``params`` as the settings it trained with (a choice read as ``--set``
    reads it, a number as a number: ``lr=1e-3|5e-4`` stores the text ``'1e-3'``)."""
    settings = _settings(dims, params)
    return {k: float(v) if isinstance(v, str) and _is_number(v) else v for k, v in settings.items()}


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def grid_space(model: str) -> list[str]:
    """``model``'s declared grid as ``key=A|B|C`` entries, each value written as ``--set`` reads it back."""
    def text(value) -> str:  # YAML flow style (1e-05 as 1.0e-05: YAML 1.1 reads 1e-05 as a string)
        return yaml.safe_dump([value], default_flow_style=True, width=10**6).strip()[1:-1]

    return [f"{key}=" + "|".join(text(v) for v in values) for key, values in declared_grid(model).items()]


NOT_SEARCHED = {
    "seed": "the seed is not a setting to search (the study would pick a lucky seed, and the selected point is "
            "trained with the --seeds anyway); give the final seeds with --seeds",
    "valid_metric": "valid_metric is what the study maximises, the same for every trial; choose it with "
                    "--set valid_metric=... and search other settings",
    **{key: f"{key} changes where or how fast a trial runs, not what it trains (it is no part of a run's identity), "
            f"so the study would select among equal points; fix it with --set {key}=..."
       for key in ("threads", "device", "checkpoint_every_s")},
}
"""Settings that are not points of a search: why, and what to do instead."""


def _number_type(annotation) -> type | None:
    """``int`` or ``float`` for a setting that takes that kind of number (``threads``: ``int``), else None."""
    union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    args = typing.get_args(annotation) if union else (annotation,)
    return int if int in args else float if float in args else None


def parse_space(specs: list[str], model: str) -> list[Dimension]:
    """Parse ``key=SPEC`` strings (module docstring); unknown keys and bad ranges are ConfigErrors."""
    if "grid" in (s.strip() for s in specs):
        own = [s for s in specs if s.strip() != "grid"]
        mine = {s.partition("=")[0].strip() for s in own}
        specs = [s for s in grid_space(model) if s.partition("=")[0] not in mine] + own
        if not specs:
            raise ConfigError(f"{model} declares no search grid: give --space key=SPEC entries")
    if not specs:
        raise ConfigError("the search space is empty: give at least one --space key=SPEC")
    known = set(valid_keys(model))
    kinds = {key: _number_type(annotation) for key, annotation in
             {**field_types(TrainConfig), **field_types(model_class(model).Config)}.items()}
    dims: list[Dimension] = []
    for spec in specs:
        key, sep, value = (part.strip() for part in spec.partition("="))
        if not sep or not key or not value:
            raise ConfigError(f"search space entry {spec!r} is not key=SPEC (e.g. lr=1e-4..1e-2:log)")
        if key not in known:
            raise ConfigError(f"unknown setting {key!r} for {model}; valid keys: {', '.join(sorted(known))}")
        if key in (d.key for d in dims):
            raise ConfigError(f"setting {key!r} appears twice in the search space")
        if key in NOT_SEARCHED:  # was searched, reported as 'selected', and without effect on the result
            raise ConfigError(f"--space {spec}: {NOT_SEARCHED[key]}")
        match = _RANGE.match(value)
        if match:
            low_text, high_text, log = match.groups()
            low, high = float(low_text), float(high_text)
            if not low < high:
                raise ConfigError(f"{spec!r}: the range needs LOW < HIGH")
            if log and low <= 0:
                raise ConfigError(f"{spec!r}: a log range needs LOW > 0")
            integer = all(re.fullmatch(r"[-+]?\d+", t) for t in (low_text, high_text))
            kind = kinds.get(key)
            if kind is int:  # 1.0..3.0 and 10..1e3 are whole numbers too (a study drew n_layers=2.097...)
                fraction = next((t for t, b in ((low_text, low), (high_text, high)) if not b.is_integer()), None)
                if fraction is not None:
                    raise ConfigError(f"--space {spec}: {key} takes whole numbers, and {fraction} is not one")
                integer = True
            if kind is float and integer:  # was drawn from the whole numbers between them only
                raise ConfigError(f"--space {spec}: whole-number bounds draw whole numbers only, and {key} takes "
                                  f"any number: write a bound with a decimal point ({key}={low_text}.0..{high_text}"
                                  f"{log or ''}), or list the values to try as {key}=A|B|C")
            dims.append(Dimension(key, low, high, integer, bool(log)))
        elif ".." in value:
            raise ConfigError(f"{spec!r}: a range is LOW..HIGH or LOW..HIGH:log with numeric bounds")
        else:
            choices = tuple(c.strip() for c in value.split("|"))
            if any(not c for c in choices):
                raise ConfigError(f"{spec!r}: empty choice in A|B|C")
            if len(set(choices)) < len(choices):  # a repeated choice would be sampled twice as often
                raise ConfigError(f"{spec!r}: a choice is listed twice in A|B|C; list each once")
            dims.append(Dimension(key, choices=choices))
    return dims


def tune(
    model: str,
    dataset_name: str,
    space: list[str],
    trials: int,
    out_dir: str | Path,
    overrides: dict[str, Any] | None = None,
    data_dir: str | Path | None = None,
    dataset: Dataset | None = None,
    search_seed: int = 999,
    final_seeds: list[int] | tuple[int, ...] = (999, 1000, 1001),
    sampler_seed: int = 0,
    prune: bool = False,
    prune_after: tuple[int, int] = (5, 20),
    log: Callable[[str], None] = print,
    on_trial: Callable[[dict], None] | None = None,
    prior_trials: list[dict] = (),
    storage: str | None = None,
    study_name: str = "prismrec",
    heartbeat_s: float = HEARTBEAT_S,
    grace_s: float = GRACE_S,
) -> dict:
    """Search ``space`` for ``trials`` trials on validation, train the best point with
    ``final_seeds``; return (and write to ``out_dir``) the summary.

    ``prune``: stop a trial whose best validation score so far is below the median of earlier
    trials at the same epoch (Optuna's MedianPruner), once ``prune_after`` = (trials, epochs) have
    passed. ``final_seeds=()``: select only (the summary's ``final`` is None).
    ``on_trial``: called with each trial's record (the summary's ``trials`` entries, plus the
    trial's ``valid`` metrics in ``valid_all``) when it ends. ``prior_trials``: such records of
    trials run elsewhere (another machine) for this same search: a new study starts from them, so
    the sampler continues where that search stopped and no recorded trial is run again; an
    existing study in ``out_dir`` ignores them.

    ``storage``: where the study lives (None: ``<out>/study.db``; any Optuna storage URL, or
    ``journal:PATH``), ``study_name`` its name there. Several processes (on one machine, or on
    several with a database server and a shared ``out_dir``) may run this same call at once:
    they share the trials, a trial whose worker died is failed and retried once from its
    checkpoint, and one of them trains the final seeds (:mod:`prismrec.experiment.workers`;
    ``heartbeat_s`` / ``grace_s`` set how quickly a dead worker on another host is noticed).
    ``dataset``: the data itself (the final seeds then train in this process, one after another);
    without it the data is loaded from ``dataset_name`` and ``data_dir``, and on a CPU the final seeds
    train side by side, each in its own process (:func:`~prismrec.experiment.compare.seeds_aside`)."""
    if trials < 1:
        raise ConfigError(f"trials must be at least 1, got {trials}")
    overrides = dict(overrides or {})
    dims = parse_space(space, model)
    clash = sorted(set(overrides) & {d.key for d in dims})
    if clash:
        raise ConfigError(f"{', '.join(clash)} both searched and fixed with --set: choose one")
    # Bad fixed settings, and values of the space that do not fit their setting, fail before any work.
    fixed = resolve_config(model, dataset_name, overrides).train
    metric = fixed.valid_metric
    for d in dims:
        for value in d.choices or (d.low, d.high):
            resolve_config(model, dataset_name, {**overrides, d.key: d.setting(value)})
    # The final seeds may train in other processes, which load the dataset by name: only one
    # loaded here from that name, not one given (possibly changed in memory).
    side_by_side = dataset is None
    dataset = dataset or load_dataset(dataset_name, data_dir)
    fixed.check_cut_offs(dataset.n_items, dataset.name)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    spec = {"model": model, "dataset": dataset_name, "space": list(space), "overrides": overrides,
            "metric": metric, "search_seed": search_seed}
    _check_resume(out / "search.json", spec)

    blind = dataclasses.replace(dataset, test=None)  # what every trial sees

    def objective(trial: optuna.Trial) -> float:
        params = {d.key: d.suggest(trial) for d in dims}
        cfg = resolve_config(model, dataset_name, {**overrides, **_settings(dims, params)})
        folder = out / f"trial-{trial.number}"
        original = retried_number(trial)
        best_so_far, reported = -math.inf, set()
        if original is not None:  # a retry takes over the interrupted trial's run (and curve)
            source = out / f"trial-{original}"
            if source.is_dir() and not folder.exists():
                source.rename(folder)
            log(f"trial {trial.number} retries interrupted trial {original} with its parameters")
            curve = study._storage.get_trial(trial._trial_id).intermediate_values
            best_so_far, reported = max(curve.values(), default=-math.inf), set(curve)

        def report(row: dict) -> None:  # the best-so-far curve: what early stopping selects from
            nonlocal best_so_far
            best_so_far = max(best_so_far, row[f"valid_{metric}"])
            if row["epoch"] not in reported:  # a retry redoes epochs its original had reported
                trial.report(best_so_far, row["epoch"])
            if trial.should_prune():
                raise optuna.TrialPruned(f"below the median of earlier trials at epoch {row['epoch']}")

        try:
            metrics = run_experiment(cfg, [search_seed], folder, dataset=blind, progress=False,
                                     evaluate_test=False, on_epoch_end=report, log=log)
        except TrainingDiverged as exc:
            trial.set_user_attr("diverged", str(exc))
            raise
        except ModelRefused as exc:  # this point on this data (knn_k above the items)
            trial.set_user_attr("refused", str(exc))
            raise _Refused(str(exc)) from None
        except optuna.TrialPruned as exc:
            if (folder / "RUNNING").is_file():  # a pruned trial is over: no checkpoint to keep
                RunDir(folder).fail(f"pruned: {exc}", status="pruned")
            raise
        trial.set_user_attr("valid", metrics["valid"])
        return metrics["valid"][metric]

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    store = open_storage(storage, out)
    exists = study_name in optuna.get_all_study_names(store)
    if prior_trials and not exists:
        _restore(store, study_name, dims, prior_trials)
    pruner = optuna.pruners.MedianPruner(*prune_after) if prune else optuna.pruners.NopPruner()
    study = optuna.create_study(study_name=study_name, storage=store, load_if_exists=True,
                                direction="maximize", pruner=pruner)

    def done(trial: optuna.trial.FrozenTrial) -> None:
        value = _state(trial)
        if value == "complete":
            value = f"valid {metric} {trial.value:.4f}"
        elif value == "refused":
            value += f": {trial.user_attrs['refused']}"
        log(f"trial {trial.number}: {trial.params} -> {value}")
        if on_trial is not None:
            on_trial({**_record(trial), "valid_all": trial.user_attrs.get("valid")})

    def counted_and_running() -> tuple[int, int]:
        ended = running = 0
        for t in study.get_trials(deepcopy=False):
            if t.state in (TrialState.COMPLETE, TrialState.PRUNED) or _ENDED_BADLY & set(t.user_attrs):
                ended += 1
            elif t.state == TrialState.RUNNING:
                running += 1
        return ended, running

    def check_stale() -> None:
        for number in fail_stale_trials(study, grace_s):
            log(f"trial {number} was interrupted (its worker stopped); it is queued again with its "
                "parameters and resumes from its last checkpoint")

    waiting_said = False
    while True:  # one trial at a time until `trials` have ended; then wait for the other workers'
        check_stale()
        ended, running = counted_and_running()
        if ended + running >= trials:
            if not running:
                break
            if not waiting_said:
                log(f"waiting for the {running} trial(s) other workers are running")
                waiting_said = True
            time.sleep(min(2.0, heartbeat_s))
            continue
        trial = study.ask()  # a queued retry first; the storage never hands a trial out twice
        # Each trial's draws are seeded by its number less the interrupted trials before it (each
        # was retried under a later number): reproducible, the points a killed search draws after
        # its retry are those an uninterrupted one draws, and two workers asking at the same time
        # do not draw the same point.
        interrupted = sum(t.number < trial.number and _state(t) == "interrupted"
                          for t in study.get_trials(deepcopy=False))
        study.sampler = optuna.samplers.TPESampler(seed=sampler_seed + trial.number - interrupted)
        try:
            with Heartbeat(study, trial, heartbeat_s):
                value = objective(trial)
        except optuna.TrialPruned:
            frozen = study.tell(trial, state=TrialState.PRUNED)
        except (TrainingDiverged, _Refused):
            frozen = study.tell(trial, state=TrialState.FAIL)
        except Exception:
            study.tell(trial, state=TrialState.FAIL)
            raise
        else:
            frozen = study.tell(trial, value)
        done(frozen)
    finished = [t for t in study.trials if t.state == TrialState.COMPLETE]
    if not finished:
        refusals = [t.user_attrs["refused"] for t in study.trials if "refused" in t.user_attrs]
        if refusals:
            raise ConfigError(f"no trial of {out} finished: the model refused {len(refusals)} (trial 0: "
                              f"{refusals[0]}); fix the settings or the search space, with a new --out")
        raise RunError(f"no trial of {out} finished (all diverged?): see its trial-<n>/metrics.json; "
                       "narrow the search space (e.g. lower learning rates) and rerun")
    # Ties on the metric go to valid NDCG@20, then to the earlier trial (ALGORITHMS.md 1.5).
    best = max(finished, key=lambda t: (t.value, t.user_attrs.get("valid", {}).get("ndcg@20", 0.0), -t.number))
    final = _finished_final(out, best.number, list(final_seeds)) if final_seeds else None
    claim = Claim(out / "best.claim", heartbeat_s, grace_s)
    while final is None and final_seeds:  # one worker trains the final seeds; the others wait
        if claim.acquire():
            try:
                final = _finished_final(out, best.number, list(final_seeds)) or _train_final(
                    model, dataset_name, overrides, dims, best, list(final_seeds), out, dataset, log,
                    data_dir, side_by_side)
                _write_summary(out, spec, study, best, final, list(final_seeds))
            finally:
                claim.release()
        else:
            wait_for(lambda: claim.holder() is None or claim._abandoned(),
                     f"the final runs (claimed by {claim.holder()})", log)
            final = _finished_final(out, best.number, list(final_seeds))
    return _write_summary(out, spec, study, best, final, list(final_seeds))


def _train_final(model, dataset_name, overrides, dims, best, final_seeds, out, dataset, log,
                 data_dir: str | Path | None = None, side_by_side: bool = False) -> dict:
    """Train the selected point with the final seeds into ``<out>/best`` (an earlier, different
    selection there is replaced; an interrupted one resumes). ``side_by_side``: on a CPU the seeds
    train side by side, each in a ``prismrec train`` process that loads ``dataset_name`` from
    ``data_dir`` (:func:`~prismrec.experiment.compare.seeds_aside`)."""
    log(f"selected trial {best.number} ({best.params}); training seeds {final_seeds}")
    settings = {**overrides, **_settings(dims, best.params)}
    cfg = resolve_config(model, dataset_name, settings)
    state = RunDir(out / "best").state()
    recorded = state.identity or {}
    other = state.kind == "legacy" or (bool(recorded) and (
        recorded.get("config_digest") != run_digest(cfg)
        or recorded.get("seeds", [recorded.get("seed")]) != final_seeds))
    aside = seeds_aside(model, dataset_name, cfg, settings, dataset, "auto", str(data_dir) if data_dir else None,
                        log) if side_by_side else None
    return run_experiment(cfg, final_seeds, out / "best", dataset=dataset, progress=False,
                          overwrite=other, log=log, train_aside=aside)


def _write_summary(out: Path, spec: dict, study: optuna.Study, best, final: dict | None,
                   final_seeds: list[int]) -> dict:
    """Write ``tuning.json`` and ``tuning.md`` (atomically: other workers may read them)."""
    summary = {
        **spec,
        "trials": [_record(t) for t in study.trials],
        "selected": {"number": best.number, "params": best.params, "valid": best.value},
        "final": final and {"seeds": final_seeds,
                            "mean": final.get("mean") or {"valid": final["valid"], "test": final["test"]},
                            "std": final.get("std")},
    }
    write_atomic(out / "tuning.json", json.dumps(summary, indent=2, default=str))
    write_atomic(out / "tuning.md", render_markdown(summary))
    return summary


def _record(trial: optuna.trial.FrozenTrial) -> dict:
    record = {"number": trial.number, "state": _state(trial), "params": trial.params,
              "valid": trial.value if trial.state == optuna.trial.TrialState.COMPLETE else None}
    if record["state"] == "refused":
        record["reason"] = trial.user_attrs["refused"]
    return record


def _restore(storage, study_name: str, dims: list[Dimension], records: list[dict]) -> None:
    """A new study holding the ended trials ``records`` (``_record`` entries with ``valid_all``)."""
    study = optuna.create_study(study_name=study_name, storage=storage, direction="maximize")
    states = {"complete": optuna.trial.TrialState.COMPLETE, "pruned": optuna.trial.TrialState.PRUNED,
              "diverged": optuna.trial.TrialState.FAIL, "refused": optuna.trial.TrialState.FAIL}
    for record in sorted(records, key=lambda r: r["number"]):
        if record["state"] not in states:  # interrupted: run again
            continue
        distributions = {}
        for d in dims:
            if d.choices:
                distributions[d.key] = optuna.distributions.CategoricalDistribution(list(d.choices))
            elif d.integer:
                distributions[d.key] = optuna.distributions.IntDistribution(int(d.low), int(d.high), log=d.log)
            else:
                distributions[d.key] = optuna.distributions.FloatDistribution(d.low, d.high, log=d.log)
        attrs = {"valid": record["valid_all"]} if record.get("valid_all") else {}
        if record["state"] in _ENDED_BADLY:
            attrs[record["state"]] = record.get("reason") or f"recorded as {record['state']}"
        study.add_trial(optuna.trial.create_trial(
            params=record["params"], distributions=distributions, state=states[record["state"]],
            value=record["valid"] if record["state"] == "complete" else None, user_attrs=attrs))


def _state(trial: optuna.trial.FrozenTrial) -> str:
    if trial.state == optuna.trial.TrialState.FAIL:
        return next((s for s in ("diverged", "refused") if s in trial.user_attrs), "interrupted")
    return trial.state.name.lower()


def _finished_final(out: Path, selected: int, seeds: list[int]) -> dict | None:
    """The final runs' metrics when an earlier call trained the same selection with the same seeds."""
    try:
        previous = json.loads((out / "tuning.json").read_text())
    except (OSError, ValueError):
        return None
    best = RunDir(out / "best")
    if not best.is_finished():
        return None
    metrics = best.read_metrics()
    same = previous["selected"]["number"] == selected and (previous["final"] or {}).get("seeds") == seeds
    return metrics if same and metrics.get("status") == "ok" else None


RUN_ONLY = ("threads", "device")
"""Fixed settings that say where and how fast a search runs, not what it finds (a config's digest
leaves them out too): a search resumed with other values (e.g. ``--workers 2`` and its threads) is
the same search."""


def _check_resume(path: Path, spec: dict) -> None:
    """Record the search's identity; a different one in the same folder is an error (the fixed
    settings of :data:`RUN_ONLY` are not part of it)."""
    def identity(record: dict) -> dict:
        overrides = {k: v for k, v in (record.get("overrides") or {}).items() if k not in RUN_ONLY}
        return {**record, "overrides": overrides}

    if path.exists():
        recorded = json.loads(path.read_text())
        if identity(recorded) != identity(json.loads(json.dumps(spec, default=str))):
            raise RunError(
                f"{path.parent} holds another search ({recorded}); resume it with the same "
                "model, dataset, space and settings, or choose a new --out"
            )
    else:  # atomic: another worker may be reading it
        write_atomic(path, json.dumps(spec, indent=2, default=str))


def render_markdown(summary: dict) -> str:
    metric = summary["metric"]
    lines = [f"# {summary['model']} on {summary['dataset']}: search on valid {metric}", "",
             f"Space: {', '.join(summary['space'])}; fixed: {summary['overrides'] or 'none'}; "
             f"every trial seed {summary['search_seed']}, test never read.", "",
             f"| trial | valid {metric} | settings |", "|---|---|---|"]
    ranked = sorted(summary["trials"], key=lambda t: (t["valid"] is None, -(t["valid"] or 0), t["number"]))
    for t in ranked:
        value = f"{t['valid']:.4f}" if t["valid"] is not None else t["state"]
        if t.get("reason"):
            value += f": {t['reason']}"
        mark = " **(selected)**" if t["number"] == summary["selected"]["number"] else ""
        lines.append(f"| {t['number']}{mark} | {value} | {t['params']} |")
    final = summary["final"]
    if final is None:
        return "\n".join(lines) + "\n"
    mean, std = final["mean"], final["std"] or {"test": {}, "valid": {}}
    lines += ["", f"Selected point, seeds {final['seeds']} (mean ± sample std):", "",
              "| split | R@10 | R@20 | N@10 | N@20 |", "|---|---|---|---|---|"]
    for split in ("valid", "test"):
        cells = [f"{mean[split][k]:.4f} ± {std[split].get(k, 0.0):.4f}" if k in mean[split] else "-"
                 for k in ("recall@10", "recall@20", "ndcg@10", "ndcg@20")]
        lines.append(f"| {split} | {' | '.join(cells)} |")
    return "\n".join(lines) + "\n"
