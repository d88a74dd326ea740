"""The core-enterprise credit propagation model, as a scikit-learn style estimator.

For a non-core firm i at as-of date T:

    logit PD_i = b0 + beta * sum_c G_ic a_c + sum_k gamma_k * sum_c G_ic D_ck + theta . s_i

* ``a_c`` = logit(master-scale PD of core c's rating) - mu0, the core's credit relative
  to the portfolio average ``mu0`` (log-odds of the training default rate);
* ``D_ck`` = the core's own record as a debtor on the registry (late payment,
  unconfirmed payables, days late), standardised: a core that stops paying or
  confirming on time transmits less credit whatever its rating says;
* ``G`` = the transmission gain of :mod:`.transmission` at decay ``decay``;
* ``s_i`` = the firm's standalone registry evidence (standardised, missing values set
  to the training median with an indicator).

Estimation is maximum likelihood against realised defaults on the training snapshots:
for fixed ``decay`` the log-likelihood is that of a logistic regression (convex), so
``decay`` is chosen by profile likelihood over the grid in ``models/propagation.yaml``
and the rest is fitted exactly. Fitted parameters (``decay_``, ``transmission_``,
``core_evidence_weights_``, ``standalone_weights_``, ``intercept_``) are plain attributes.

A firm with no supply path to a core is not scored (``covered`` False, PD empty): the
model's coverage is a metric, not a crash.

Two inputs, one word each: a *chain* goes to :meth:`~CorePropagation.design` (the design
frame and coverage) and :meth:`~CorePropagation.predict_frame` (PD and log-odds per
non-core firm, empty where not covered); a *design frame* goes to the scikit-learn
methods ``decision_function``, ``predict_pd``, ``predict_proba`` (n, 2) and ``predict``
(class: 1 where the PD is above 0.5), as for the LightGBM models.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator
from sklearn.linear_model import LogisticRegression
from sklearn.utils.validation import check_is_fitted

from scf_engine import policies
from scf_engine.graph import Chain
from scf_engine.numeric import LogOddsClassifierMixin, logit, sigmoid
from scf_engine.propagation.transmission import Transmission, transmission


class CorePropagation(LogOddsClassifierMixin, BaseEstimator):
    """Core credit transmitted along the chain, blended with registry evidence."""

    _FITTED = ("decay_", "mu0_", "core_stats_", "medians_", "columns_", "coef_", "intercept_")

    def __init__(self, decay_grid=(0.2, 0.35, 0.5, 0.65, 0.8, 0.9, 0.95),
                 core_evidence=("payables_late_share", "payables_unconfirmed_share", "payables_days_late"),
                 standalone_evidence=("recv_confirmed_share", "recv_late_share", "recv_overdue_open_share",
                                      "recv_days_late", "recv_shortfall_share", "payables_late_share", "registry_months"),
                 C=1.0, master_scale=None):
        self.decay_grid = decay_grid
        self.core_evidence = core_evidence
        self.standalone_evidence = standalone_evidence
        self.C = C
        self.master_scale = master_scale

    @classmethod
    def from_policy(cls, models_dir=None) -> "CorePropagation":
        p = policies.load("propagation", models_dir)
        scale = policies.load("master_scale", models_dir)["ratings"]
        return cls(decay_grid=tuple(p["decay_grid"]), core_evidence=tuple(p["core_evidence"]),
                   standalone_evidence=tuple(p["standalone_evidence"]), C=float(p["C"]),
                   master_scale={k: float(v) for k, v in scale.items()})

    # --- design ---------------------------------------------------------------------------
    def _scale(self):
        if self.master_scale is not None:
            return self.master_scale
        return {k: float(v) for k, v in policies.load("master_scale")["ratings"].items()}

    def _core_inputs(self, chain: Chain, tr: Transmission, mu0: float):
        cores = chain.nodes.loc[tr.core_ids]
        scale = self._scale()
        a = logit(cores["core_rating"].map(scale).astype(float).to_numpy()) - mu0
        D = cores.reindex(columns=list(self.core_evidence)).astype(float).to_numpy()
        return a, D

    def _standardise_core(self, D):
        """Standardise core evidence; a core with no record counts as average (0)."""
        mean, std = self.core_stats_
        D = np.where(np.isnan(D), mean, D)
        return (D - mean) / std

    def _raw_design(self, chain: Chain, decay: float, mu0: float, tr: Transmission | None = None):
        """(transmission, transmitted, core-evidence parts (n x k), standalone frame)."""
        tr = tr or transmission(chain)
        a, D = self._core_inputs(chain, tr, mu0)
        if self.core_stats_ is not None:
            D = self._standardise_core(D)
        if len(a):  # G never formed whole: solve for the rating column and each evidence column
            Y = tr.solve(decay, np.column_stack([a, D]))
            trans, ce = Y[:, 0], Y[:, 1:]
        else:
            trans, ce = np.zeros(len(tr.other_ids)), np.zeros((len(tr.other_ids), len(self.core_evidence)))
        s = chain.nodes.reindex(tr.other_ids)[list(self.standalone_evidence)].astype(float)
        return tr, trans, ce, s

    def _design_frame(self, trans, ce, s: pd.DataFrame) -> pd.DataFrame:
        X = pd.DataFrame({"transmitted": trans}, index=s.index)
        for k, name in enumerate(self.core_evidence):
            X[f"core_{name}"] = ce[:, k]
        filled = s.fillna(self.medians_)
        if "registry_months" in filled:
            filled["registry_months"] = np.log1p(filled["registry_months"].clip(lower=0))
        if "recv_days_late" in filled:
            filled["recv_days_late"] = np.log1p(filled["recv_days_late"].clip(lower=0))
        X = X.join(filled.add_prefix("own_"))
        X["own_missing"] = s.isna().any(axis=1).astype(float)
        return X

    # --- fit --------------------------------------------------------------------------------
    def fit(self, chains: list[Chain], labels: list[pd.Series]):
        """``labels[i]``: 0/1 by firm id for the firms scorable at ``chains[i].as_of``."""
        y_all = pd.concat(labels)
        self.mu0_ = float(logit(y_all.mean()))
        trs = [transmission(c) for c in chains]
        # standardisation of core evidence across all cores of all training snapshots
        self.core_stats_ = None
        Ds = np.vstack([self._core_inputs(c, tr, self.mu0_)[1] for c, tr in zip(chains, trs)])
        if len(Ds):
            mean, std, worst = np.nanmean(Ds, axis=0), np.nanstd(Ds, axis=0), np.nanmax(Ds, axis=0)
        else:  # no core in any snapshot (a park or an association without one): nothing to
            # transmit, the firms' own registry evidence is what the model has
            k = len(self.core_evidence)
            mean, std, worst = np.zeros(k), np.ones(k), np.full(k, np.nan)
        self.core_stats_ = (np.nan_to_num(mean), np.where(np.nan_to_num(std) > 0, std, 1.0))
        self.core_worst_ = pd.Series(worst, index=list(self.core_evidence))
        stand = pd.concat([c.nodes.reindex(tr.other_ids)[list(self.standalone_evidence)] for c, tr in zip(chains, trs)])
        self.medians_ = stand.astype(float).median().fillna(0.0)

        best = None
        self.profile_ = {}
        for decay in self.decay_grid:
            X, y = self._training_matrix(chains, trs, labels, decay)
            if not len(y):  # no firm tied to a core in any training snapshot
                return self._without_chains(X.columns)
            model, ll = self._logistic(X, y)
            self.profile_[float(decay)] = ll
            if best is None or ll > best[0]:
                best = (ll, decay, model, X.columns, X.mean(), X.std().replace(0, 1.0))
        ll, self.decay_, model, self.columns_, mean, std = best
        self.x_mean_, self.x_std_ = mean, std
        self.log_likelihood_ = ll
        coef = pd.Series(model.coef_[0] / std.to_numpy(), index=self.columns_)
        self.coef_ = coef
        self.intercept_ = float(model.intercept_[0] - (coef * mean).sum())
        self.transmission_ = float(coef["transmitted"])
        self.core_evidence_weights_ = coef[[f"core_{n}" for n in self.core_evidence]]
        self.standalone_weights_ = coef[[c for c in self.columns_ if c.startswith("own_")]]
        self.n_train_ = int(len(y))
        return self

    def _without_chains(self, columns) -> "CorePropagation":
        """Fitted state for data in which no firm hangs on a core (a park or an association
        with none): nothing to learn, and nothing to score, since :meth:`predict_frame`
        answers only firms a core's chain covers; every weight 0, the intercept the
        portfolio's log-odds, ``n_train_`` 0 says so. The de-coupled and hybrid models are
        trained as always, on an empty propagation PD."""
        zero = pd.Series(0.0, index=columns)
        self.decay_, self.columns_, self.coef_ = float(self.decay_grid[0]), columns, zero
        self.x_mean_, self.x_std_ = zero, pd.Series(1.0, index=columns)
        self.log_likelihood_, self.intercept_, self.transmission_ = float("nan"), self.mu0_, 0.0
        self.core_evidence_weights_ = zero[[f"core_{n}" for n in self.core_evidence]]
        self.standalone_weights_ = zero[[c for c in columns if c.startswith("own_")]]
        self.n_train_ = 0
        return self

    def _training_matrix(self, chains, trs, labels, decay):
        Xs, ys = [], []
        for chain, tr, lab in zip(chains, trs, labels):
            _, trans, ce, s = self._raw_design(chain, decay, self.mu0_, tr)
            X = self._design_frame(trans, ce, s)
            covered = pd.Series(tr.covered, index=tr.other_ids)
            ids = lab.index[lab.index.isin(covered.index[covered])]
            Xs.append(X.loc[ids])
            ys.append(lab.loc[ids])
        return pd.concat(Xs), pd.concat(ys).astype(int)

    def _signs(self, columns) -> list[tuple[float | None, float | None]]:
        """Bounds from economics: a weaker core never makes its chain safer (transmission
        and core-evidence weights >= 0); standalone evidence follows the catalogue's
        expected direction of risk."""
        from scf_engine.catalogue import load_catalogue

        cat = load_catalogue()
        bounds = []
        for c in columns:
            if c == "transmitted" or c.startswith("core_"):
                bounds.append((0.0, None))
            elif c.startswith("own_") and c[4:] in cat:
                d = cat[c[4:]].direction
                bounds.append((0.0, None) if d == "increasing" else (None, 0.0) if d == "decreasing" else (None, None))
            else:
                bounds.append((None, None))
        return bounds

    def _logistic(self, X, y):
        """Penalised maximum likelihood with sign bounds (L-BFGS-B); returns (fit, log-lik)."""
        from scipy.optimize import minimize

        mean, std = X.mean(), X.std().replace(0, 1.0)
        Z = ((X - mean) / std).to_numpy()
        yv = y.to_numpy().astype(float)
        lam = 1.0 / (self.C * len(yv))

        def loss(w):
            z = w[0] + Z @ w[1:]
            ll = np.sum(yv * z - np.logaddexp(0, z))
            p = sigmoid(z)
            g0 = -np.sum(yv - p)
            g = -(Z.T @ (yv - p)) + 2 * lam * len(yv) * w[1:]
            return -ll + lam * len(yv) * np.sum(w[1:] ** 2), np.concatenate([[g0], g])

        w0 = np.zeros(Z.shape[1] + 1)
        w0[0] = np.log(yv.mean() / (1 - yv.mean()))
        res = minimize(loss, w0, jac=True, method="L-BFGS-B", bounds=[(None, None)] + self._signs(X.columns))
        z = res.x[0] + Z @ res.x[1:]
        ll = float(np.sum(yv * z - np.logaddexp(0, z)))
        fit = LogisticRegression()
        fit.coef_, fit.intercept_ = res.x[1:][None, :], np.array([res.x[0]])
        return fit, ll

    # --- predict -------------------------------------------------------------------------------
    def design(self, chain: Chain) -> tuple[pd.DataFrame, np.ndarray]:
        """The model's inputs for every non-core firm (transmitted credit, core evidence,
        standalone evidence) and the coverage mask."""
        check_is_fitted(self, self._FITTED)
        tr, trans, ce, s = self._raw_design(chain, self.decay_, self.mu0_)
        return self._design_frame(trans, ce, s)[self.columns_], tr.covered

    def decision_function(self, X: pd.DataFrame) -> np.ndarray:
        """Log-odds of default from a design frame (what :meth:`design` returns)."""
        check_is_fitted(self, self._FITTED)
        return self.intercept_ + X[self.columns_].to_numpy() @ self.coef_.to_numpy()

    def predict_frame(self, chain: Chain) -> pd.DataFrame:
        """Per non-core firm of the chain: ``covered``, ``propagated_log_odds`` (the chain's
        part of the log-odds), ``log_odds`` and ``pd`` (empty where not covered)."""
        return self.predict_design(*self.design(chain))

    def predict_design(self, X: pd.DataFrame, covered: np.ndarray) -> pd.DataFrame:
        """:meth:`predict_frame` from the chain's design (:meth:`design`), made once."""
        lin = self.intercept_ + X.to_numpy() @ self.coef_.to_numpy()  # X is in columns_ order
        chain_part = X["transmitted"].to_numpy() * self.transmission_ + sum(
            X[f"core_{n}"].to_numpy() * self.core_evidence_weights_[f"core_{n}"] for n in self.core_evidence)
        out = pd.DataFrame({"covered": covered, "propagated_log_odds": chain_part, "log_odds": lin,
                            "pd": sigmoid(lin)}, index=X.index)
        out.loc[~out["covered"], ["propagated_log_odds", "log_odds", "pd"]] = np.nan
        out.index.name = "firm_id"
        return out

    def core_credit(self, chain: Chain, tr: Transmission | None = None) -> pd.Series:
        """Each core's credit in the model's units (beta * a_c + gamma . D_c): what it sends down the chain."""
        check_is_fitted(self, self._FITTED)
        tr = tr or transmission(chain)
        a, D = self._core_inputs(chain, tr, self.mu0_)
        D = self._standardise_core(D)
        w = self.core_evidence_weights_.to_numpy()
        return pd.Series(self.transmission_ * a + D @ w, index=tr.core_ids)

    # --- plain state (scf_engine.learners.state) ------------------------------------------------
    def get_state(self) -> dict:
        """Parameters and fitted attributes as JSON-able values (series as index and values)."""
        check_is_fitted(self, self._FITTED)
        params = self.get_params(deep=False)
        params = {k: list(v) if isinstance(v, tuple) else v for k, v in params.items()}
        mean, std = self.core_stats_
        return {
            "params": params,
            "fitted": {
                "mu0": float(self.mu0_), "decay": float(self.decay_), "intercept": float(self.intercept_),
                "transmission": float(self.transmission_), "log_likelihood": float(self.log_likelihood_),
                "n_train": int(self.n_train_), "columns": [str(c) for c in self.columns_],
                "core_stats": {"mean": _floats(mean), "std": _floats(std)},
                "profile": [[float(d), float(ll)] for d, ll in self.profile_.items()],
                **{name: _series_state(getattr(self, f"{name}_")) for name in _SERIES},
            },
        }

    @classmethod
    def from_state(cls, state: dict) -> "CorePropagation":
        params = dict(state["params"])
        for k in ("decay_grid", "core_evidence", "standalone_evidence"):
            if isinstance(params.get(k), list):
                params[k] = tuple(params[k])
        model = cls(**params)
        f = state["fitted"]
        model.mu0_, model.decay_, model.intercept_ = float(f["mu0"]), float(f["decay"]), float(f["intercept"])
        model.transmission_, model.log_likelihood_ = float(f["transmission"]), float(f["log_likelihood"])
        model.n_train_ = int(f["n_train"])
        model.columns_ = pd.Index(f["columns"])
        model.core_stats_ = (np.asarray(f["core_stats"]["mean"], dtype=np.float64),
                             np.asarray(f["core_stats"]["std"], dtype=np.float64))
        model.profile_ = {float(d): float(ll) for d, ll in f["profile"]}
        for name in _SERIES:
            setattr(model, f"{name}_", _series_from_state(f[name]))
        return model


_SERIES = ("coef", "x_mean", "x_std", "core_worst", "medians", "core_evidence_weights", "standalone_weights")


def _floats(a) -> list[float]:
    return [float(v) for v in np.asarray(a, dtype=np.float64)]


def _series_state(s: pd.Series) -> dict:
    return {"index": [str(i) for i in s.index], "values": _floats(s.to_numpy()), "name": s.name}


def _series_from_state(d: dict) -> pd.Series:
    return pd.Series(np.asarray(d["values"], dtype=np.float64), index=pd.Index(d["index"]), name=d["name"])
