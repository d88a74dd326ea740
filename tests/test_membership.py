"""``scf_engine.membership.isin`` gives pandas' ``isin`` answer, row for row."""

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scf_engine.membership import isin

IDS = ["F1", "F2", "F3", "91110000MA01", "", "=cmd", "供应商甲"]
cells = st.one_of(st.sampled_from(IDS), st.none())
asked = st.one_of(st.sampled_from(IDS + ["F9"]), st.none(), st.just(float("nan")), st.integers(0, 3), st.just(pd.NA),
                  st.just(pd.NaT))


@settings(max_examples=200, deadline=None)
@given(st.lists(cells, max_size=30), st.lists(asked, max_size=12),
       st.sampled_from(["list", "set", "index", "series", "array", "text series", "text index"]),
       st.sampled_from(["str", "string[pyarrow]"]))
def test_isin_answers_as_pandas_does_on_text_columns_with_missing_cells(column, values, form, dtype):
    col = pd.Series(column, dtype=dtype)
    if form.startswith("text"):  # values held as Arrow text themselves: text and missing values only
        text = [v if isinstance(v, str) else None for v in values if isinstance(v, str) or v is None or v is pd.NA
                or (isinstance(v, float) and np.isnan(v))]
        values = (pd.Series if form == "text series" else pd.Index)(text, dtype="str" if dtype == "string[pyarrow]" else "string[pyarrow]")
    elif form == "set":
        try:
            values = set(values)
        except TypeError:  # pd.NA is not hashable
            values = set(v for v in values if v is not pd.NA)
    elif form == "index":
        values = pd.Index(values, dtype=object)
    elif form == "series":
        values = pd.Series(values, dtype=object)
    elif form == "array":
        values = np.array(values, dtype=object)
    got = isin(col, values)
    assert got.dtype == bool and len(got) == len(col)
    np.testing.assert_array_equal(got, col.isin(values).to_numpy())
    np.testing.assert_array_equal(isin(pd.Index(col), values), pd.Index(col).isin(values))


def test_isin_leaves_other_columns_to_pandas():
    for col in (pd.Series(["F1", None, "F2"], dtype=object), pd.Series(["F1", "F2", "F1"], dtype="category"),
                pd.Series([1, 2, 3])):
        np.testing.assert_array_equal(isin(col, ["F1", 2]), col.isin(["F1", 2]).to_numpy())


def test_isin_on_a_large_column_of_ids():
    rng = np.random.default_rng(7)
    ids = np.array([f"F{i:06d}" for i in range(20_000)], dtype=object)
    col = pd.Series(rng.choice(ids, 100_000), dtype="str")
    wanted = set(rng.choice(ids, 15_000))
    got = isin(col, wanted)
    np.testing.assert_array_equal(got, col.isin(wanted).to_numpy())
    assert 0 < got.sum() < len(col)


def test_isin_refuses_a_lone_string_as_pandas_does():
    col = pd.Series(["a", "b"], dtype="str")
    with pytest.raises(TypeError):
        col.isin("ab")
    with pytest.raises(TypeError):
        isin(col, "ab")
