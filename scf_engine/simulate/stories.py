"""World stories: the same firms and chains under a different generative mechanism.

A model that scores a new bank's firms meets data whose story it never saw: another
region with strong seasons, another platform where firms join late or drop months,
another economy where defaults follow shocks more than standing. One seed of one story
cannot show how much of a model's skill transfers, so the simulator offers a few
stories that differ in *mechanism*, selected by ``WorldConfig.story``:

``default``
    The story described in :mod:`.dynamics` and :mod:`.emit` (every existing world).
``cyclical``
    Strong, industry-specific seasonality and persistent industry cycles; health shows
    less in statutory payments and more in sales and margin; a share of healthy firms
    are habitual late payers (they miss payroll, tax and utilities dates and always pay
    the next month) whose habit says nothing about their risk.
``shock``
    A different default hazard: a firm's recent deviation from its own norm weighs more
    than its standing (``hazard = sigmoid(alpha - theta * h - theta_dev * dev)``); firms
    join the flow-sharing platform late far more often, and some have months missing
    from the platform (an account not reported that month).

Every story-specific draw comes from its own random stream (``(seed, 10)``), so the
default story's worlds stay byte for byte what they were. The truth PD follows the
story's dynamics (the Monte Carlo runs the same ``step``), so the Bayes-optimal Gini is
the story's own.

The ``shock`` story's truth knows no future shock: like every story's, it is P(default in
the 12 months from T | the latent state at the end of the month before T), the month the
features' last flows are booked in, with every later industry and firm shock drawn by
Monte Carlo (:func:`.dynamics.true_pd`). What makes the story hard is where its
information lies: a firm's standing (``mu``) ranks its defaults at a Gini of 0.36-0.44
against 0.55-0.60 in the default story, while its health in the month before T ranks
them at 0.63-0.66 (Bayes 0.67-0.71; 2,000 firms, seed 2026, four as-of dates), so a
model must read the latest months' deviation from the firm's own flows, through the
gaps and late joining this story adds. The knobs are simulator constants (what the world is), not credit
policy, so they live here and not in ``models/``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Story:
    name: str
    # dynamics (used by the truth's Monte Carlo too)
    phi_s: float = 0.85  # industry shock persistence
    sigma_s: float = 0.12  # industry shock size
    alpha: float = -7.3  # monthly hazard sigmoid(alpha - theta * h - theta_dev * dev)
    theta: float = 1.8
    theta_dev: float = 0.0
    # emission
    season_amplitude: float = 1.0  # scales the seasonal profile's deviation from 1
    season_by_industry: bool = False  # each industry's calendar shifted by its own months
    sales_signal: float = 0.3  # sales respond to health deviation as exp(sales_signal * r)
    obligation_signal: float = 1.0  # 1: missed payments respond to health as in the default story
    habitual_late_share: float = 0.0  # healthy firms missing payment dates by habit
    habitual_miss: float = 0.35  # their monthly chance of paying an obligation a month late
    late_sharing_add: float = 0.0  # added to each role's chance of joining the platform late
    gap_share: float = 0.0  # firms with months missing from the platform
    gap_months: float = 0.2  # share of months missing for those firms


STORIES = {
    "default": Story("default"),
    "cyclical": Story("cyclical", phi_s=0.95, sigma_s=0.16, season_amplitude=3.0, season_by_industry=True,
                      sales_signal=0.5, obligation_signal=0.5, habitual_late_share=0.15),
    "shock": Story("shock", alpha=-7.4, theta=1.6, theta_dev=1.6, late_sharing_add=0.25, gap_share=0.25),
}


def story_of(name: str) -> Story:
    """The named story; an unknown name is a one-line error (a typo must not silently
    simulate the default story)."""
    if name not in STORIES:
        raise ValueError(f"unknown world story {name!r}: one of {', '.join(STORIES)}")
    return STORIES[name]


__all__ = ["Story", "STORIES", "story_of"]
