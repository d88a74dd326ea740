"""Core-enterprise credit propagation (核心企业信用传导) and the DebtRank stress test."""

from scf_engine.propagation.model import CorePropagation
from scf_engine.propagation.transmission import Transmission, transmission

__all__ = ["CorePropagation", "Transmission", "transmission"]
