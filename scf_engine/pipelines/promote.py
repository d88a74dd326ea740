"""Promotion: the one place the ``champion`` alias moves.

What moves is exactly the versions that were compared (read once, before the comparison,
never re-read from an alias that may have moved meanwhile), and a model never becomes
champion without the models it needs: the hybrid takes the propagation model's PD as a
feature, so the two were trained together and are promoted together.
"""

from __future__ import annotations

from scf_engine import tracking
from scf_engine.errors import RequestError

#: a kind -> the kinds it cannot be champion without (trained in the same run)
NEEDS = {"hybrid": ("propagation",), "propagation": ("hybrid",)}


def promotion_plan(requested) -> tuple[list[str], list[str]]:
    """The kinds to promote for ``--promote`` values (kinds or ``all``), checked before any
    work: ``(kinds, notes)``, the notes saying which kinds were added and why."""
    requested = [r.strip() for r in (requested or []) if r and r.strip()]
    allowed = list(tracking.MODEL_KINDS)
    bad = [r for r in requested if r not in allowed + ["all"]]
    if bad:
        raise RequestError(f"--promote {bad[0]!r}: takes one of {', '.join(allowed)} or all")
    kinds = allowed if "all" in requested else [k for k in allowed if k in requested]
    notes = []
    for kind in list(kinds):
        for need in NEEDS.get(kind, ()):
            if need not in kinds:
                kinds.append(need)
                notes.append(f"promoting {need} with {kind}: the hybrid reads the propagation model's PD, "
                             "so the two are champions together")
    return [k for k in allowed if k in kinds], notes


def promote(store: tracking.Store, versions: dict, kinds, alias: str = "champion") -> dict:
    """Move ``alias`` to the compared version of each kind; returns ``{kind: version}``."""
    moved = {}
    for kind in kinds:
        store.set_alias(kind, alias, versions[kind]["version"])
        moved[kind] = versions[kind]["version"]
    return moved


__all__ = ["NEEDS", "promotion_plan", "promote"]
