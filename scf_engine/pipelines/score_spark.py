"""The champion LightGBM models and their SHAP contributions on Spark, per partition.

``scf score --engine spark`` computes the flow features on Spark (the catalogue's SQL,
transpiled: :mod:`scf_engine.spark`); the chain, the registry features and the
propagation solve stay on the driver (one graph, see the README's single-node limits).
The assembled rows then go back to Spark, where each partition runs the models' own
``predict_pd`` and ``contributions`` (LightGBM ``pred_contrib``) through ``mapInPandas``:
the expensive part of a large batch is TreeSHAP (~1 ms a row on two cores), and it is
row-independent, so it spreads over executors. The per-firm PDs and contributions come
back as :class:`~scf_engine.credit.decide.ModelOutputs` and the decision core does the
rest exactly as for an embedded batch (limits, memos, MLflow, audit).

A row's prediction does not depend on which other rows share its partition, so the PDs
and contributions are those the embedded path computes, bit for bit.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from scf_engine.credit.decide import ModelOutputs
from scf_engine.learners.predict import has_flows

KINDS = ("decoupled", "hybrid")
SEP = "__"


def _columns(models: dict) -> list[str]:
    need = {"history_months"}
    for kind in KINDS:
        need |= set(models[kind].features_)
    return sorted(need)


def _partition(models: dict, columns: list[str]):
    """The function each partition runs: PDs and contributions for its rows, the
    de-coupled model only where the firm has flow history (as :func:`predict_all`)."""

    def run(batches):
        for pdf in batches:
            X = pdf.set_index("firm_id")[columns].astype("float64")
            flows = has_flows(X).to_numpy()
            out = {"firm_id": X.index.to_numpy(dtype=object), "pd_decoupled": np.full(len(X), np.nan)}
            if flows.any():
                out["pd_decoupled"][flows] = models["decoupled"].predict_pd(X[flows])
            out["pd_hybrid"] = models["hybrid"].predict_pd(X) if len(X) else np.empty(0)
            for kind, rows in (("decoupled", flows), ("hybrid", np.ones(len(X), bool))):
                c = pd.DataFrame(np.nan, index=X.index, columns=list(models[kind].features_) + ["expected_value"])
                if rows.any():
                    c.loc[rows] = models[kind].contributions(X[rows]).to_numpy()
                for col in c.columns:
                    out[f"{kind}{SEP}{col}"] = c[col].to_numpy()
            yield pd.DataFrame(out)

    return run


def spark_model_outputs(spark, models: dict, table: pd.DataFrame, firm_ids, *, partitions: int | None = None) -> ModelOutputs:
    """PDs and contributions of the LightGBM models for the ``firm_ids`` rows of the
    assembled ``table`` (index firm_id), computed on Spark partitions."""
    from pyspark.sql import types as T

    columns = _columns(models)
    ids = pd.Index(pd.unique(pd.Series(list(firm_ids), dtype=object)))
    rows = table.loc[table.index.intersection(ids), columns].astype("float64").rename_axis("firm_id").reset_index()
    rows["firm_id"] = rows["firm_id"].astype(object)
    fields = [T.StructField("firm_id", T.StringType()), T.StructField("pd_decoupled", T.DoubleType()),
              T.StructField("pd_hybrid", T.DoubleType())]
    for kind in KINDS:
        fields += [T.StructField(f"{kind}{SEP}{c}", T.DoubleType()) for c in list(models[kind].features_) + ["expected_value"]]
    sdf = spark.createDataFrame(rows)
    if partitions:
        sdf = sdf.repartition(partitions)
    got = sdf.mapInPandas(_partition(models, columns), T.StructType(fields)).toPandas().set_index("firm_id")
    contributions = {}
    for kind in KINDS:
        cols = list(models[kind].features_) + ["expected_value"]
        contributions[kind] = got[[f"{kind}{SEP}{c}" for c in cols]].set_axis(cols, axis=1)
    return ModelOutputs(got[["pd_decoupled", "pd_hybrid"]], contributions)


__all__ = ["spark_model_outputs"]
