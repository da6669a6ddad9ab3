"""
Prune2Drive's view-adaptive keep rates, found by Optuna's TPE sampler on a validation split.

Search space: one keep rate per camera, ``r_i`` uniform in [0.1, 1.0] (Prune2Drive's released
search). A trial runs the validation QA through the pipeline with view i keeping
``r_i * N_i`` of its ``N_i`` tokens and returns ``0.5 * language + 0.5 * accuracy -
penalty * sum(r_i)`` (search/objective.py), maximised.

Absolute rates through the pipeline: the pipeline takes a total keep ratio and relative view
weights (pruning/budgets.py: ``k_v ~ w_v * N_v``, scaled to ``round(keep * sum N_v)``). With
``w_v = r_v`` and ``keep = sum r_v N_v / sum N_v`` the water-filling scale is 1, so every view
keeps ``r_v * N_v`` (rounded). All our models give every camera the same token count, so that
keep ratio is the mean rate; the YAML records it (``keep_ratio``) for the node.

Scale-out: every trial lives in Optuna's RDB storage. ``sqlite:///study.db`` serves the
processes of one machine; a PostgreSQL or MySQL URL (``postgresql://user:pw@host/db``) serves
many machines. Processes given the same ``--storage``/``--study`` join one study
(``load_if_exists``) and stop when it holds ``--trials`` finished trials, so a killed search
resumes where it stopped (its unfinished trial stays RUNNING and is not counted; with a
heartbeat it is marked FAIL after ``HEARTBEAT_GRACE_S``). Up to workers - 1 extra trials can
finish when several processes end a trial at the same time. The study records what it searches
(model, data, pruner, penalty...); a process with other settings is refused.

Seeding: the TPE sampler's seed is derived from ``--seed``, ``--worker`` and the number of
trials the study already holds when the process starts, so a fresh single search repeats
exactly, and cooperating or resumed processes do not draw the same start-up points again.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
import math
from pathlib import Path
import time

from .objective import objective, ObjectiveTerms, score_answers
from .qa_sets import batch_order, Pair
from ..cameras import NUSCENES_CAMERAS
from ..eval.runner import predict, PredictOptions
from ..pipeline.pipeline import Pipeline, RuntimeSettings

RATE_LOW, RATE_HIGH = 0.1, 1.0
PARAM_PREFIX = 'rate_'
HEARTBEAT_S, HEARTBEAT_GRACE_S = 10, 60
SQLITE_TIMEOUT_S = 60  # a second process waits this long for the database lock
CONFIG_ATTR = 'search_config'
STORAGE_RETRIES = 5


def param_name(camera: str) -> str:
    return f'{PARAM_PREFIX}{camera}'


def rates_of(params: Mapping[str, float], cameras: Sequence[str] = NUSCENES_CAMERAS
             ) -> dict[str, float]:
    """Per-camera rates from a trial's params (``rate_CAM_FRONT`` -> ``CAM_FRONT``)."""
    return {c: float(params[param_name(c)]) for c in cameras}


def keep_ratio_of(rates: Mapping[str, float]) -> float:
    """Return the keep ratio that makes the pipeline keep ``r_v N_v`` per view (module doc)."""
    return float(sum(rates.values()) / len(rates))


def rate_settings(rates: Mapping[str, float], base: RuntimeSettings) -> RuntimeSettings:
    """Return ``base`` with view i keeping ``rates[i]`` of its tokens (module doc)."""
    bad = {c: r for c, r in rates.items() if not 0 < r <= 1}
    if bad:
        raise ValueError(f'keep rates must lie in (0, 1], got {bad}')
    return replace(base, keep_ratio=keep_ratio_of(rates), view_weights=dict(rates))


@dataclass(frozen=True)
class SearchSpec:
    """How to search: trials in the study, where it lives, the objective's penalty, seeding."""

    trials: int
    storage: str
    study: str = 'view-rates'
    penalty: float = 0.03
    seed: int = 0
    worker: int = 0
    startup_trials: int = 10
    low: float = RATE_LOW
    high: float = RATE_HIGH

    def check(self) -> None:
        if self.trials < 1:
            raise ValueError(f'--trials {self.trials}: run at least 1 trial')
        if not 0 < self.low < self.high <= 1:
            raise ValueError(f'rate range [{self.low}, {self.high}] must lie in (0, 1]')
        if self.penalty < 0:
            raise ValueError(f'--penalty {self.penalty} must be >= 0')
        if self.startup_trials < 1:
            raise ValueError(f'--startup-trials {self.startup_trials} must be >= 1')


@dataclass
class TrialEval:
    """What one trial evaluates: the pipeline, the QA, the fixed settings and the scorer."""

    pipeline: Pipeline
    pairs: Sequence[Pair]
    base: RuntimeSettings
    batch_size: int = 8
    tokenizer: str = 'simple'
    cameras: Sequence[str] = NUSCENES_CAMERAS

    def __call__(self, rates: Mapping[str, float], penalty: float) -> ObjectiveTerms:
        settings = rate_settings(rates, self.base)
        order = batch_order(self.pairs)
        run = predict(self.pipeline, order, settings,
                      PredictOptions(batch_size=self.batch_size, progress=False))
        answers = run.answers()
        failed = [i for i in run.items if i.error]
        if failed:  # a failing QA is a bug or bad data, not a low score: stop the search
            raise RuntimeError(f'{len(failed)} QA failed in a trial, e.g. {failed[0].id}: '
                               f'{failed[0].error}')
        return objective(score_answers(self.pairs, answers, self.tokenizer),
                         [rates[c] for c in self.cameras], penalty)


def storage_of(url: str):
    """Return an RDBStorage for ``url``: a heartbeat and, for sqlite, a patient lock timeout."""
    import optuna
    from sqlalchemy.exc import IntegrityError, OperationalError

    engine = {'connect_args': {'timeout': SQLITE_TIMEOUT_S}} if url.startswith('sqlite') else {}
    for attempt in range(STORAGE_RETRIES):
        try:
            return optuna.storages.RDBStorage(
                url, engine_kwargs=engine, heartbeat_interval=HEARTBEAT_S,
                grace_period=HEARTBEAT_GRACE_S)
        except (OperationalError, IntegrityError):
            # Processes that start together on a new database race to create its tables;
            # the loser finds them made a moment later.
            if attempt == STORAGE_RETRIES - 1:
                raise
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError('unreachable')


def sqlite_url(path: str | Path) -> str:
    """``sqlite:///ABSOLUTE/PATH`` for a database file."""
    return f'sqlite:///{Path(path).resolve()}'


def finished(study) -> int:
    """Trials of ``study`` that completed (the ones counted toward --trials)."""
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))


def open_study(spec: SearchSpec, config: Mapping[str, object]):
    """Create or join the study (module doc); refuse one made with other settings."""
    import optuna

    storage = storage_of(spec.storage)
    probe = optuna.create_study(storage=storage, study_name=spec.study, direction='maximize',
                                load_if_exists=True)
    known = probe.user_attrs.get(CONFIG_ATTR)
    config = dict(config)
    if known is None:
        probe.set_user_attr(CONFIG_ATTR, config)
    elif known != config:
        diff = sorted(k for k in set(known) | set(config) if known.get(k) != config.get(k))
        k = diff[0]
        raise ValueError(f'study {spec.study!r} in {spec.storage} searches {k}={known.get(k)!r}, '
                         f'this run has {k}={config.get(k)!r}: use the same options, or another '
                         '--study')
    already = len(probe.get_trials(deepcopy=False))
    seed = spec.seed + 1_000_003 * spec.worker + already
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=spec.startup_trials)
    return optuna.load_study(study_name=spec.study, storage=storage, sampler=sampler), seed


@dataclass
class SearchResult:
    """The study after this process's trials, and what it found."""

    study: object
    ran: int
    seconds: float
    sampler_seed: int
    best_rates: dict[str, float] | None = None
    best_terms: dict | None = None
    best_number: int | None = None
    importances: dict[str, float] | None = None
    importance_note: str = ''
    notes: list[str] = field(default_factory=list)


def search(evaluate: Callable[[Mapping[str, float], float], ObjectiveTerms], spec: SearchSpec,
           config: Mapping[str, object], cameras: Sequence[str] = NUSCENES_CAMERAS,
           log: Callable[[str], None] = print) -> SearchResult:
    """Run trials until the study holds ``spec.trials`` finished ones; return what it found."""
    from optuna.study import MaxTrialsCallback

    spec.check()
    study, seed = open_study(spec, config)
    done_before = finished(study)
    start = time.perf_counter()
    ran = 0

    def trial_fn(trial) -> float:
        nonlocal ran
        rates = {c: trial.suggest_float(param_name(c), spec.low, spec.high) for c in cameras}
        t0 = time.perf_counter()
        terms = evaluate(rates, spec.penalty)
        for key, value in terms.as_json().items():
            trial.set_user_attr(key, value)
        trial.set_user_attr('seconds', time.perf_counter() - t0)
        trial.set_user_attr('worker', spec.worker)
        ran += 1
        log(f'trial {trial.number}: objective {terms.value:.4f} (accuracy '
            f'{_fmt(terms.answers.accuracy)}, language {_fmt(terms.answers.language)}, '
            f'sum of rates {terms.rate_sum:.2f}) in {time.perf_counter() - t0:.1f} s; rates '
            + ', '.join(f'{c} {r:.2f}' for c, r in rates.items()))
        return terms.value

    if done_before >= spec.trials:
        log(f'study {spec.study!r} already holds {done_before} finished trials (>= --trials '
            f'{spec.trials}): nothing to run')
    else:
        log(f'study {spec.study!r}: {done_before} finished trials already, running until '
            f'{spec.trials} (TPE seed {seed})')
        study.optimize(trial_fn, callbacks=[MaxTrialsCallback(spec.trials)],
                       gc_after_trial=False, show_progress_bar=False)
    result = SearchResult(study, ran, time.perf_counter() - start, seed)
    if finished(study):
        best = study.best_trial
        result.best_number = best.number
        result.best_rates = rates_of(best.params, cameras)
        result.best_terms = dict(best.user_attrs)
    result.importances, result.importance_note = importances(study)
    return result


def importances(study) -> tuple[dict[str, float] | None, str]:
    """Return Optuna's fANOVA parameter importances, or None and why there are none."""
    import optuna

    n = finished(study)
    if n < 2:
        return None, (f'parameter importances need at least 2 finished trials; the study has '
                      f'{n}')
    values = {t.value for t in study.get_trials(deepcopy=False) if t.value is not None}
    if len(values) < 2:
        return None, 'parameter importances need trials with different objective values'
    try:
        found = optuna.importance.get_param_importances(study)
    except (RuntimeError, ValueError, ZeroDivisionError) as err:
        return None, f'parameter importances failed: {type(err).__name__}: {err}'
    if not found:
        return None, f'Optuna found no importances from {n} trials (too few to fit)'
    note = ''
    if n < 20:
        note = f'from only {n} trials: a rough guide'
    return {k: float(v) for k, v in found.items()}, note


def _fmt(value: float | None) -> str:
    return '—' if value is None else f'{value:.3f}'


YAML_HEADER = """\
# Per-camera keep rates found by `drive-vlm search view-rates` (Prune2Drive's view-adaptive
# rates: Optuna TPE over six rates in [{low}, {high}], objective 0.5 * language + 0.5 * accuracy
# - {penalty} * sum of rates, on the {split} split). Load it in the node with the parameter
# view_keep_weights_file; the node reads only view_keep_weights (relative rates). To keep
# exactly these rates, set the node's keep_ratio to `keep_ratio` below (their mean); any other
# keep_ratio keeps the same proportions between cameras.
"""


def write_rates_yaml(path: str | Path, rates: Mapping[str, float], info: Mapping[str, object],
                     header: Mapping[str, object]) -> Path:
    """Write ``rates`` in the node's view-weights format (pruning/view_weights.py), plus info."""
    import yaml

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {'view_keep_weights': {c: round(float(r), 4) for c, r in rates.items()},
            'keep_ratio': round(keep_ratio_of(rates), 4),
            'search': dict(info)}
    text = YAML_HEADER.format(**header) + yaml.safe_dump(body, sort_keys=False)
    tmp = path.with_name(path.name + '.tmp')
    tmp.write_text(text)
    tmp.replace(path)
    return path


def read_search_keep_ratio(path: str | Path) -> float | None:
    """Return the ``keep_ratio`` a search wrote beside its rates, or None (hand-written)."""
    import yaml

    data = yaml.safe_load(Path(path).read_text())
    value = data.get('keep_ratio') if isinstance(data, dict) else None
    if isinstance(value, (int, float)) and 0 < value <= 1 and math.isfinite(value):
        return float(value)
    return None
