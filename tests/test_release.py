"""release.frozen: what was alive on entry is out of the collector's sight inside, and
back in it after."""

from __future__ import annotations

import gc
import weakref

from scf_engine.release import frozen, give_back


class Node:
    pass


def cycle() -> tuple[weakref.ref, Node]:
    a, b = Node(), Node()
    a.other, b.other = b, a
    return weakref.ref(a), a


def test_frozen_keeps_entry_objects_out_of_collection_and_collects_new_garbage():
    before = gc.get_freeze_count()
    old_ref, old = cycle()
    with frozen():
        assert gc.get_freeze_count() > before
        new_ref, new = cycle()
        del old, new  # both now garbage only the collector can free (a reference cycle)
        give_back()
        assert new_ref() is None  # made inside: collected as before
        assert old_ref() is not None  # frozen on entry: the collector no longer walks it
    if before == 0:
        assert gc.get_freeze_count() == 0  # the freeze is undone on exit
        gc.collect()
        assert old_ref() is None
    else:  # someone (scf serve's state) had frozen before: their freeze is left as it was
        assert gc.get_freeze_count() >= before
