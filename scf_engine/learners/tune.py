"""A budgeted hyper-parameter search for the LightGBM PD models (``scf train --tune``).

Why Optuna: its TPE sampler spends a small budget (tens of trials) better than a grid,
it stops on a wall-clock timeout as well as a trial count, and a seeded sampler makes the
search repeatable. The search space, budget and folds are in ``models/lightgbm.yaml``
(``tuning``), reviewed with the model's other settings.

Folds are time-ordered and firm-disjoint, as the model's own validation fold is: fold k
validates on the k-th latest training snapshot, on one of ``folds`` disjoint groups of
firms, and trains on the earlier snapshots of the other firms. A firm's later snapshot
carries the same outcome as its earlier ones, so a firm seen in training would reward
memorising firms; a future snapshot in training would let the model see the period it
is judged on. Each trial's mean validation AUC is what the sampler maximises.

Opt-in: the default ``scf train`` keeps the reviewed parameters and stays fast.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from scf_engine.learners.lgbm import train_early_stopped


@dataclass
class TuneResult:
    best_params: dict  # the full LightGBM parameter mapping to train with
    best_value: float
    trials: list[dict] = field(default_factory=list)  # number, params, value, fold AUCs, best iterations, seconds


def time_folds(as_of, groups, n_folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(train, valid)`` masks: fold k validates on the k-th latest date and the k-th
    group of firms, and trains on earlier dates of the other firms."""
    as_of = pd.to_datetime(pd.Series(np.asarray(as_of)))
    firms = pd.Series(np.asarray(groups))
    uniq = np.sort(firms.unique())
    group_of = pd.Series(np.random.default_rng(seed).permutation(len(uniq)) % n_folds, index=uniq)
    g = firms.map(group_of).to_numpy()
    dates = sorted(as_of.unique())
    folds = []
    for k in range(min(n_folds, len(dates) - 1)):
        d = dates[-1 - k]
        valid = (as_of == d).to_numpy() & (g == k)
        train = (as_of < d).to_numpy() & (g != k)
        folds.append((train, valid))
    return folds


def suggest(trial, space: dict) -> dict:
    """One point of the search space: ``name: [low, high]`` (float), ``[low, high, log]``
    or ``[low, high, int]``."""
    out = {}
    for name, spec in space.items():
        low, high, *how = spec
        if how and how[0] == "int":
            out[name] = trial.suggest_int(name, int(low), int(high))
        else:
            out[name] = trial.suggest_float(name, float(low), float(high), log=bool(how and how[0] == "log"))
    return out


def _fold_auc(params, X, y, train, valid, rounds, early) -> tuple[float, int]:
    booster, best = train_early_stopped(params, X, y, train, valid, rounds, early)
    return float(roc_auc_score(y[valid], booster.predict(X[valid], num_iteration=best))), best


def search(X: pd.DataFrame, y, as_of, groups, base_params: dict, tuning: dict, *, num_boost_round: int,
           early_stopping_rounds: int, progress=None) -> TuneResult:
    """Optuna TPE over ``tuning['space']`` within ``tuning['n_trials']`` trials and
    ``tuning['timeout_s']`` seconds; ``base_params`` (with monotone constraints already
    set) supplies everything not searched."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    say = progress or (lambda *a, **k: None)
    Xf = X.astype(float).to_numpy()
    y = np.asarray(y, dtype=float)
    folds = [(tr, va) for tr, va in time_folds(as_of, groups, int(tuning["folds"]), int(tuning["seed"]))
             if tr.any() and va.any() and len(np.unique(y[va])) == 2]
    if not folds:
        raise ValueError("no usable tuning fold: too few snapshots or no defaults in the validation rows")
    trials = []

    def objective(trial):
        t0 = time.perf_counter()
        point = suggest(trial, tuning["space"])
        params = {**base_params, **point}
        res = [_fold_auc(params, Xf, y, tr, va, num_boost_round, early_stopping_rounds) for tr, va in folds]
        value = float(np.mean([a for a, _ in res]))
        trials.append({"number": trial.number, "params": point, "value": value,
                       "fold_auc": [a for a, _ in res], "best_iterations": [b for _, b in res],
                       "seconds": time.perf_counter() - t0})
        say(f"tuning trial {trial.number + 1}: mean fold AUC {value:.4f}")
        return value

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=int(tuning["seed"])))
    study.optimize(objective, n_trials=int(tuning["n_trials"]), timeout=float(tuning["timeout_s"]))
    return TuneResult({**base_params, **study.best_params}, float(study.best_value), trials)


__all__ = ["TuneResult", "time_folds", "search", "suggest"]
