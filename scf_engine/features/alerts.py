"""Authenticity alerts (贸易真实性预警): the policy's rules over the catalogue's features.

Each alert of ``models/authenticity.yaml`` names a rule (a DuckDB SQL condition over
feature columns), a severity and the feature whose value it shows. The memo's authenticity
section lists a firm's alerts; a monitor (not built yet) can raise the same rules on every
new snapshot.
"""

from __future__ import annotations

import pandas as pd

from scf_engine import policies
from scf_engine.duck import connect
from scf_engine.features.authenticity import load_policy

ALERT_COLUMNS = ["firm_id", "name", "severity", "label_zh", "label_en", "feature", "value"]


def raise_alerts(features: pd.DataFrame, policy=None) -> pd.DataFrame:
    """One row per firm and alert whose rule holds (``features`` indexed by firm_id); in
    the policy's order of alerts, by firm_id within each."""
    rules = policies.as_data(policy or load_policy())["alerts"]
    frame = features.rename_axis("firm_id").reset_index()
    out = []
    with connect() as con:
        con.register("_f", frame)
        for a in rules:
            hit = con.sql(f"SELECT firm_id, {a['feature']} AS value FROM _f WHERE coalesce(({a['rule']}), false) "
                          "ORDER BY firm_id").df()
            out.append(hit.assign(**{k: a[k] for k in ("name", "severity", "label_zh", "label_en", "feature")}))
    return pd.concat(out, ignore_index=True)[ALERT_COLUMNS] if out else pd.DataFrame(columns=ALERT_COLUMNS)
