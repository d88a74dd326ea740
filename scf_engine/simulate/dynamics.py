"""Latent monthly financial health, defaults, and the true 12-month PD.

The generative story (all on a log-odds-like "health" scale, higher is healthier):

    h_i(t) = mu_i + z_i(t) + beta_i * s_g(t) + age_i(t) + c_i(t)

* ``mu_i``: the firm's persistent quality. Chain firms inherit part of their core's
  quality in proportion to their dependence on it (cores vet their suppliers), and firms
  that fabricate trade are weaker.
* ``z_i``: idiosyncratic AR(1) state. A core marked *distressed* also carries a momentum
  state ``v`` that is pushed down for six months from its onset month and decays slowly,
  so its decline unfolds over two years and is partly predictable from its recent path.
* ``s_g``: an AR(1) shock per industry; ``beta_i`` the firm's loading.
* ``age_i``: young firms are riskier (``-AGE_EFFECT * exp(-age / AGE_SCALE)``).
* ``c_i = K @ dev(t-1)``: contagion. A supplier moves with last month's health
  deviation (``h - mu - age``) of its buyers in proportion to the share of its sales
  they take; a distributor with its suppliers in proportion to the share of its
  purchases (weaker). When a buyer defaults, its suppliers take a jump down in ``z``
  (lost receivables and demand) in proportion to their exposure.

Each month a live firm defaults with probability ``sigmoid(alpha - theta * h)`` (the
story's hazard: :mod:`.stories`).

Truth: at a quarter-start as-of date T the true PD is P(default in the 12 months from T
| the whole latent state at the end of the month before T), computed by Monte Carlo over
the same :func:`step` used to simulate the history, with the Rao-Blackwell estimator
``1 - prod(1 - hazard)`` along each path (contagion only runs from buyers to suppliers and
from cores to distributors, never back, so a firm's own default never feeds its own
hazard and the estimator is exact in expectation). It is the Bayes-optimal score.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp

from scf_engine.numeric import sigmoid
from scf_engine.simulate.stories import story_of
from scf_engine.simulate.world import CORE_MU, World

PHI, SIGMA = 0.94, 0.17  # idiosyncratic AR(1)
PHI_CORE, SIGMA_CORE = 0.97, 0.08
RHO_V, PUSH, PUSH_MONTHS = 0.93, -0.06, 6  # distressed-core momentum
KAPPA_UP, KAPPA_DOWN = 0.8, 0.45  # contagion through sales / purchase shares
JUMP = 2.0  # supplier's hit when a buyer defaults, per unit of sales share
AGE_EFFECT, AGE_SCALE = 1.0, 1.5
# the monthly hazard sigmoid(alpha - theta * h) and industry shocks' PHI_S, SIGMA_S are the
# story's (scf_engine.simulate.stories): the default story's alpha = -7.3, theta = 1.8
MU_SD = 0.8
CHAIN_QUALITY = 0.8  # how much of its core's quality a fully dependent supplier inherits
FABRICATED_PENALTY = 1.0
ROLE_OFFSET = {"core": 0.0, "tier1": 0.1, "tier2": -0.1, "downstream": 0.0, "unattached": -0.2}
DISTRESS_ONSET = 0.35  # fraction of the history at which distressed cores start to decline
DETERIORATE_PUSH = -0.06  # after-lending scenario: a firm's momentum push per month, for PUSH_MONTHS
SCENARIO_ONSET = 0.6  # default start of the scenario, as a fraction of the history


class Params:
    """Static per-firm quantities the dynamics need (built once per world)."""

    def __init__(self, world: World, rng: np.random.Generator):
        f = world.firms
        n = len(f)
        self.n = n
        story = story_of(world.config.story)
        self.phi_s, self.sigma_s = story.phi_s, story.sigma_s
        self.alpha, self.theta, self.theta_dev = story.alpha, story.theta, story.theta_dev
        is_core = f["is_core"].to_numpy()
        self.is_core = is_core
        links = world.links
        dep_core = np.zeros(n)
        core_mu = np.array([CORE_MU.get(r, 4.0) for r in f["core_rating"]])
        # dependence on each firm's primary core, for chain quality
        pc = f["primary_core"].to_numpy()
        sales_to = links.groupby("supplier")["sales_share"].sum()
        buys_from = links.groupby("buyer")["purchase_share"].sum()
        dep_core = np.where(
            f["role"].isin(["tier1", "tier2"]), sales_to.reindex(range(n)).fillna(0).to_numpy(),
            np.where(f["role"] == "downstream", buys_from.reindex(range(n)).fillna(0).to_numpy(), 0.0),
        )
        chain_q = np.where(pc >= 0, CHAIN_QUALITY * (core_mu[np.maximum(pc, 0)] - 4.0) * dep_core, 0.0)
        mu = rng.normal(0.0, MU_SD, size=n) + f["role"].map(ROLE_OFFSET).to_numpy() + chain_q
        mu -= FABRICATED_PENALTY * f["fabricated"].to_numpy()
        mu = np.where(is_core, core_mu, mu)
        self.mu = mu
        self.beta = rng.uniform(0.5, 1.5, size=n)
        inds = pd.Index(sorted(f["industry"].unique()))
        self.industry = inds.get_indexer(f["industry"])
        self.n_industries = len(inds)
        self.phi = np.where(is_core, PHI_CORE, PHI)
        self.sigma = np.where(is_core, SIGMA_CORE, SIGMA)
        s, b = links["supplier"].to_numpy(), links["buyer"].to_numpy()
        up = links["sales_share"].to_numpy()
        down = links["purchase_share"].to_numpy()
        # K[i, j]: how firm i's health moves with firm j's deviation
        rows = np.concatenate([s, b])
        cols = np.concatenate([b, s])
        K = sp.csr_matrix((np.concatenate([KAPPA_UP * up, KAPPA_DOWN * down]), (rows, cols)), shape=(n, n))
        J = sp.csr_matrix((np.concatenate([JUMP * up, 0.5 * JUMP * down]), (rows, cols)), shape=(n, n))
        K.eliminate_zeros()
        J.eliminate_zeros()
        self.K, self.J = K, J
        self.founded = f["founded_on"].to_numpy().astype("datetime64[D]")
        onset = int(DISTRESS_ONSET * world.config.n_months)
        self.push = np.zeros((world.config.n_months + 24, n))
        self.push[onset:onset + PUSH_MONTHS, f["distressed_core"].to_numpy()] = PUSH
        if "deteriorates" in f:  # the after-lending scenario (WorldConfig.deteriorating_share, downgraded_cores)
            cfg = world.config
            m0 = cfg.scenario_month if cfg.scenario_month >= 0 else int(SCENARIO_ONSET * cfg.n_months)
            self.push[m0:m0 + PUSH_MONTHS, f["deteriorates"].to_numpy()] += DETERIORATE_PUSH
            self.push[m0:m0 + PUSH_MONTHS, f["downgraded_core"].to_numpy()] += PUSH
        self.months = pd.date_range(world.months[0], periods=world.config.n_months + 24, freq="MS")
        self._month_days = self.months.to_numpy().astype("datetime64[D]")

    def age_effect(self, t: int) -> np.ndarray:
        age_years = (self._month_days[t] - self.founded).astype(np.float64) / 365.25
        return np.where(age_years >= 0, -AGE_EFFECT * np.exp(-np.maximum(age_years, 0) / AGE_SCALE), 0.0)

    def born(self, t: int) -> np.ndarray:
        return self.founded < self._month_days[t]


def step(p: Params, t: int, st: dict, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Advance the state ``st`` (arrays of shape (n, paths)) through month ``t``.

    Returns (health h, hazard) for month t; updates z, v, s, dev, alive in place, with
    defaults sampled for every firm (others' defaults drive contagion jumps).
    """
    n, P = st["z"].shape
    dt = st["z"].dtype  # float64 for the history, float32 for Monte Carlo paths
    born = p.born(t)[:, None]
    st["s"] = p.phi_s * st["s"] + p.sigma_s * rng.standard_normal((p.n_industries, P), dtype=dt)
    st["v"] = RHO_V * st["v"] + p.push[t][:, None].astype(dt)
    z = p.phi[:, None].astype(dt) * st["z"] + st["v"] + p.sigma[:, None].astype(dt) * rng.standard_normal((n, P), dtype=dt)
    if st["new_defaults"].any():
        z -= (p.J @ st["new_defaults"].astype(dt)).astype(dt)
    st["z"] = z
    age = p.age_effect(t)[:, None].astype(dt)
    c = (p.K @ st["dev"]).astype(dt)
    h = (p.mu[:, None] + age).astype(dt) + st["z"] + p.beta[:, None].astype(dt) * st["s"][p.industry] + c
    live = st["alive"] & born
    hazard = np.where(live, sigmoid(_hazard_logit(p, h, age)), dt.type(0))
    new = live & (rng.random((n, P), dtype=dt) < hazard)
    st["alive"] = st["alive"] & ~new
    st["new_defaults"] = new
    st["dev"] = np.where(st["alive"] & born, h - p.mu[:, None] - age, 0.0)
    return h, hazard


def _hazard_logit(p: Params, h: np.ndarray, age: np.ndarray) -> np.ndarray:
    """``alpha - theta * h``; the ``shock`` story adds ``- theta_dev * dev``, the firm's
    deviation from its own norm (``h - mu - age``), so recent shocks weigh more than
    standing."""
    if p.theta_dev == 0:
        return p.alpha - p.theta * h
    return p.alpha - p.theta * h - p.theta_dev * (h - (p.mu[:, None] + age).astype(h.dtype))


def simulate_history(world: World) -> None:
    """Run the world's one realised history; fills ``world.state``."""
    cfg = world.config
    rng = np.random.default_rng([cfg.seed, 2])
    p = Params(world, rng)
    n, M = p.n, cfg.n_months
    st = {
        "z": rng.normal(0.0, SIGMA / np.sqrt(1 - PHI**2), size=(n, 1)) * np.where(p.is_core, 0.3, 1.0)[:, None],
        "v": np.zeros((n, 1)),
        "s": rng.normal(0.0, p.sigma_s / np.sqrt(1 - p.phi_s**2), size=(p.n_industries, 1)),
        "dev": np.zeros((n, 1)),
        "alive": np.ones((n, 1), dtype=bool),
        "new_defaults": np.zeros((n, 1), dtype=bool),
    }
    H = np.zeros((n, M))
    default_month = np.full(n, -1)
    snapshots = {}
    for t in range(M):
        if t % 3 == 0 and t > 0:
            snapshots[t] = {k: v.copy() for k, v in st.items()}
        h, _ = step(p, t, st, rng)
        H[:, t] = h[:, 0]
        newly = st["new_defaults"][:, 0]
        default_month[newly] = t
    snapshots[M] = {k: v.copy() for k, v in st.items()}
    alive_m = np.zeros((n, M), dtype=bool)
    for t in range(M):
        alive_m[:, t] = p.born(t) & ((default_month < 0) | (default_month >= t))
    world.state.update(params=p, health=H, default_month=default_month, alive=alive_m, snapshots=snapshots)


def true_pd(world: World, *, progress=None) -> pd.DataFrame:
    """``firm_id, as_of, true_pd`` at every quarter start after the first month."""
    cfg = world.config
    p: Params = world.state["params"]
    paths = cfg.mc_paths or int(np.clip(4e6 / p.n, 48, 400))
    out = []
    dm = world.state["default_month"]
    for k, (t0, st0) in enumerate(sorted(world.state["snapshots"].items())):
        rng = np.random.default_rng([cfg.seed, 3, t0])
        st = {key: np.repeat(v.astype(np.float32) if v.dtype == np.float64 else v, paths, axis=1)
              for key, v in st0.items()}
        survival = np.ones((p.n, paths), dtype=np.float64)
        for t in range(t0, t0 + 12):
            _, hazard = step(p, t, st, rng)
            survival *= 1.0 - hazard
        pd_ = 1.0 - survival.mean(axis=1)
        T = p.months[t0]
        keep = p.born(t0) & ((dm < 0) | (dm >= t0))
        out.append(pd.DataFrame({"idx": np.flatnonzero(keep), "as_of": T, "true_pd": pd_[keep]}))
        if progress:
            progress(k + 1, len(world.state["snapshots"]))
    truth = pd.concat(out, ignore_index=True)
    truth["firm_id"] = world.firms["firm_id"].to_numpy()[truth["idx"]]
    return truth[["firm_id", "as_of", "true_pd", "idx"]]
