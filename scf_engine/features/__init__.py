"""Point-in-time flow features, computed from the feature catalogue
(:mod:`scf_engine.catalogue`, ``models/features.yaml``).

* :mod:`~scf_engine.features.flows`: :func:`flow_features`, the catalogue's SQL over a
  :class:`~scf_engine.dataset.Snapshot` (flows booked before T only);
* :mod:`~scf_engine.features.authenticity`: round trips and circular money.
"""

from scf_engine.features.flows import flow_features

__all__ = ["flow_features"]
