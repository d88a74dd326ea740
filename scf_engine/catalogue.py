"""The feature catalogue (``models/features.yaml``) as objects the engine computes from.

The catalogue is the single source of feature names, definitions and labels: the flow
features are computed from its SQL expressions, the models take their columns from it,
and reasons and memos take their words from it. Like the data contract it is a shared
definition, not a stage, so it sits at the top level where features, propagation,
learners and explain can all import it. The file is read, schema-checked and hashed by
:mod:`scf_engine.policies` (``policies.load("features")``), the one reader of ``models/``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from scf_engine import policies


@dataclass(frozen=True)
class FeatureSpec:
    name: str
    family: str
    kind: str
    direction: str
    sets: tuple[str, ...]
    in_model: bool
    label_en: str
    label_zh: str
    definition: str
    expr: str | None = None
    of: str | None = None
    function: str | None = None
    window: int | None = None

    @property
    def monotone(self) -> int:
        """LightGBM monotone constraint on PD: +1 riskier as the value grows, -1 safer, 0 free."""
        return {"increasing": 1, "decreasing": -1, "none": 0}[self.direction]


class Catalogue:
    def __init__(self, policy: policies.Policy):
        self.policy = policy
        self.specs: list[FeatureSpec] = []
        for e in policy["features"]:
            for w in e.get("windows", [None]):
                def fill(text):
                    return None if text is None else text.replace("{w}", str(w))
                self.specs.append(FeatureSpec(
                    name=fill(e["name"]), family=e["family"], kind=e["kind"], direction=e["direction"],
                    sets=tuple(e["sets"]), in_model=e.get("model", True), label_en=fill(e["label_en"]),
                    label_zh=fill(e["label_zh"]), definition=fill(e["definition"]), expr=fill(e.get("expr")),
                    of=e.get("of"), function=e.get("function"), window=w,
                ))
        self.by_name = {s.name: s for s in self.specs}

    def __getitem__(self, name: str) -> FeatureSpec:
        return self.by_name[name]

    def __contains__(self, name: str) -> bool:
        return name in self.by_name

    def of_kind(self, *kinds: str, set_: str | None = None) -> list[FeatureSpec]:
        return [s for s in self.specs if s.kind in kinds and (set_ is None or set_ in s.sets)]

    def model_features(self, set_: str) -> list[str]:
        """Columns a model of this feature set uses, in catalogue order."""
        return [s.name for s in self.specs if s.in_model and set_ in s.sets]

    def label(self, name: str, lang: str = "en") -> str:
        spec = self.by_name.get(name)
        if spec is None:
            return name
        return spec.label_zh if lang == "zh" else spec.label_en

    @property
    def sha256(self) -> str:
        return self.policy.sha256


@lru_cache(maxsize=4)
def load_catalogue(models_dir: str | None = None) -> Catalogue:
    return Catalogue(policies.load("features", models_dir))
