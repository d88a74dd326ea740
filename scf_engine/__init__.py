"""scf-engine: supply-chain finance credit risk, core-enterprise propagation and de-coupled."""

__version__ = "0.1.0"
