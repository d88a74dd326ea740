"""The Jiangyin enterprise credit grading guide, rule by rule, as models/jiangyin.yaml
states it; the indicators file it reads; and its place in a batch's limits.csv."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from scf_engine import policies
from scf_engine.learners.jiangyin import JiangyinGrading, grade_from_indicators, indicator_grades, policy_rule

RULE = policy_rule()


def firm(**over) -> dict:
    """A firm that earns A on all seven flow indicators."""
    row = {"tax_yoy_rank_industry": 0.9, "utilities_yoy_rank_industry": 0.9, "social_insurance_missed_12m": 0,
           "housing_fund_months_12m": 12, "housing_fund_open_gap": 0, "history_months": 24, "firm_age_years": 8.0,
           "loan_service_missed_12m": 0, "loan_service_open_gap": 0, "trade_in_rank_industry": 0.9}
    row.update(over)
    return row


def grade(**over) -> pd.Series:
    X = pd.DataFrame([firm(**over)])
    return JiangyinGrading(rule=RULE).grade(X).iloc[0]


def ext(grades: str) -> dict:
    names = ["ind_premises", "ind_legal_rep_credit", "ind_environment", "ind_public_credit", "ind_industrial_policy",
             "ind_other_rating"]
    return dict(zip(names, grades))


def test_an_indicator_not_graded_is_not_an_a():
    g = grade()  # seven A from the flows, six external indicators not graded
    assert (g["n_a"], g["n_c"], g["n_graded"]) == (7, 0, 7)
    assert g["grade"] == "grade_1"  # 6+ A and no C; premium would need 9 of the guide's 13


def test_nine_a_and_no_c_is_premium():
    assert grade(**ext("AAB")).pipe(lambda g: (g["grade"], g["n_a"])) == ("premium", 9)
    assert grade(**ext("AB")).pipe(lambda g: (g["grade"], g["n_a"])) == ("grade_1", 8)


def test_any_c_keeps_a_firm_alternate_however_many_a():
    g = grade(**ext("AAAAAC"))
    assert g["n_a"] == 12 and g["n_c"] == 1 and g["grade"] == "alternate"


def test_six_a_is_grade_1_and_five_is_alternate():
    assert grade(tax_yoy_rank_industry=0.6)["grade"] == "grade_1"  # 6 A, one B
    assert grade(tax_yoy_rank_industry=0.6, utilities_yoy_rank_industry=0.6)["grade"] == "alternate"  # 5 A


@pytest.mark.parametrize("rank,expected", [(0.85, "A"), (0.8, "A"), (0.6, "B"), (0.5, "B"), (0.3, "C"), (np.nan, None)])
def test_industry_rank_bands(rank, expected):
    g = indicator_grades(pd.DataFrame([firm(tax_yoy_rank_industry=rank)]), RULE)
    v = g.loc[0, "tax_growth"]
    assert (pd.isna(v) and expected is None) or v == expected


def test_social_insurance_housing_fund_and_years():
    g = indicator_grades(pd.DataFrame([firm(social_insurance_missed_12m=1, housing_fund_months_12m=11, firm_age_years=3.0)]), RULE)
    assert g.loc[0, "social_insurance"] == "B"
    assert pd.isna(g.loc[0, "housing_fund"])  # not paid every month: not graded (never a B or C)
    assert g.loc[0, "years_in_business"] == "B"  # "more than 3" years


@pytest.mark.parametrize("missed,gap,expected", [
    (np.nan, np.nan, "B"),  # no loans: B
    (0, 0, "A"),  # serviced every month
    (2, 0, "B"),  # 1-2 missed months without arrears
    (3, 0, "C"),  # 3 or more missed
    (0, 2, "C"),  # in arrears now: the last service two months back, whatever the count says
    (1, 3, "C"),
    (1, 1, "B"),  # one month's gap is a payment date after the as-of date, not arrears
])
def test_loan_record_including_current_arrears(missed, gap, expected):
    g = indicator_grades(pd.DataFrame([firm(loan_service_missed_12m=missed, loan_service_open_gap=gap)]), RULE)
    assert g.loc[0, "loan_record"] == expected


def test_bonus_points_at_the_bar_raise_the_grade_one_step():
    X = pd.DataFrame([firm(tax_yoy_rank_industry=0.3), firm(), firm(**ext("AA"))])  # alternate, grade_1, premium
    ind = indicator_grades(X, RULE)
    bar = RULE["bonus_step_up_points"]
    before = grade_from_indicators(ind, RULE)["grade"].tolist()
    after = grade_from_indicators(ind, RULE, bonus=pd.Series([bar, bar, bar]))["grade"].tolist()
    below = grade_from_indicators(ind, RULE, bonus=pd.Series([bar - 1] * 3))["grade"].tolist()
    assert before == ["alternate", "grade_1", "premium"] == below
    assert after == ["grade_1", "premium", "premium"]


def test_a_serious_dishonesty_record_is_not_graded():
    X = pd.DataFrame([firm(**ext("AAAAAA"), ind_dishonest=1.0), firm(ind_dishonest=0.0)])
    g = JiangyinGrading(rule=RULE).grade(X)
    assert g["grade"].tolist() == ["", "grade_1"] and g["excluded"].tolist() == [True, False]


def test_counts_and_bands_come_from_the_policy(tmp_path, monkeypatch):
    import shutil

    models = tmp_path / "models"
    shutil.copytree(policies.MODELS_DIR, models)
    text = (models / "jiangyin.yaml").read_text().replace("grade_1: {min_a: 6, max_c: 0}", "grade_1: {min_a: 7, max_c: 0}")
    (models / "jiangyin.yaml").write_text(text)
    monkeypatch.setenv("SCF_MODELS_DIR", str(models))
    X = pd.DataFrame([firm(tax_yoy_rank_industry=0.6)])  # 6 A
    assert JiangyinGrading.from_policy().grade(X)["grade"].iloc[0] == "alternate"
    (models / "jiangyin.yaml").write_text(text + "premium_min_a: 9\n")
    with pytest.raises(policies.PolicyError, match="unknown key 'premium_min_a'"):
        policies.load("jiangyin")


# --- the indicators file -------------------------------------------------------------------------


def test_indicators_file_rules_quarantine_what_they_cannot_trust(small_world_dir, tmp_path):
    import shutil

    from scf_engine.ingest import load_dataset

    data = tmp_path / "d"
    shutil.copytree(small_world_dir, data)
    firms = pd.read_csv(data / "firms.csv", dtype=str)
    f = firms.loc[firms["is_core"] == "false", "firm_id"].iloc[0]
    bad = pd.DataFrame([
        (f, "2023-03-01", "premises", "D"),  # not A/B/C
        (f, "2023-03-01", "bonus", "many"),  # not points
        (f, "2023-03-01", "dishonest", "maybe"),  # not true/false
        (f, "2023-03-01", "size", "A"),  # not an indicator
        ("91110000000000000X", "2023-03-01", "premises", "A"),  # unknown firm
        (f, "2023-13-01", "premises", "A"),  # not a date
        (f, "2023-03-01", "premises", "A"),  # fine
    ], columns=["firm_id", "as_of", "indicator", "grade"])
    bad.to_csv(data / "indicators.csv", index=False)
    ds = load_dataset(data)
    q = ds.report.rows[ds.report.rows["file"] == "indicators.csv"]
    assert len(q) == 6 and len(ds.indicators) == 1
    assert {"grade must be A, B or C for a graded indicator", "grade must be a number of points >= 0 for bonus",
            "grade must be true or false for dishonest"} <= set(q["reason"])
    s = ds.report.summary().set_index("file").loc["indicators.csv"]
    assert s["read"] == s["accepted"] + s["quarantined"] == 7


def test_the_latest_grade_before_the_as_of_date_counts(small_world_dir, tmp_path):
    import shutil

    from scf_engine.assemble import indicator_columns
    from scf_engine.ingest import load_dataset

    data = tmp_path / "d"
    shutil.copytree(small_world_dir, data)
    firms = pd.read_csv(data / "firms.csv", dtype=str)
    f = firms.loc[firms["is_core"] == "false", "firm_id"].iloc[0]
    pd.DataFrame([(f, "2023-01-10", "premises", "B"), (f, "2023-06-10", "premises", "A"),
                  (f, "2023-06-10", "dishonest", "true")],
                 columns=["firm_id", "as_of", "indicator", "grade"]).to_csv(data / "indicators.csv", index=False)
    ds = load_dataset(data)
    early = indicator_columns(ds.as_of("2023-06-10")).loc[f]  # the June grading is not known on its own day
    late = indicator_columns(ds.as_of("2023-06-11")).loc[f]
    assert (early["ind_premises"], np.isnan(early["ind_dishonest"])) == ("B", True)
    assert (late["ind_premises"], late["ind_dishonest"]) == ("A", 1.0)


def test_conflicting_grades_of_one_day_are_quarantined_not_left_to_the_row_order(small_world_dir, tmp_path):
    """Two grades of the same firm, indicator and as_of that disagree: the snapshot keeps
    one grade per indicator, the later row in the file, so the same export sorted another
    way graded the firm differently, silently. Every row of such a day is quarantined
    with the line it conflicts with (the previous grading then counts); identical repeats
    agree and are kept, as are rows that only disagree with a row already set aside."""
    import shutil

    from scf_engine.assemble import indicator_columns
    from scf_engine.ingest import load_dataset

    data = tmp_path / "d"
    shutil.copytree(small_world_dir, data)
    firms = pd.read_csv(data / "firms.csv", dtype=str)
    f, g = firms.loc[firms["is_core"] == "false", "firm_id"].iloc[:2]
    rows = [(f, "2023-01-10", "premises", "B"),
            (f, "2023-06-10", "premises", "A"), (f, "2023-06-10 00:00:00", "premises", "C"),  # conflict
            (f, "2023-06-10", "dishonest", "false"), (f, "2023-06-10", "dishonest", "0"),  # the same answer
            (g, "2023-06-10", "premises", "A"), (g, "2023-06-10", "premises", "A"),  # identical repeat
            (g, "2023-06-10", "environment", "A"), (g, "2023-06-10", "environment", "D")]  # D breaks a rule
    for order in (rows, rows[::-1]):
        pd.DataFrame(order, columns=["firm_id", "as_of", "indicator", "grade"]).to_csv(data / "indicators.csv", index=False)
        ds = load_dataset(data)
        q = ds.report.rows[ds.report.rows["file"] == "indicators.csv"]
        conflict = q[q["reason"].str.startswith("grade conflicts")]
        assert sorted(conflict["value"]) == ["A", "C"] and len(q) == 3
        lines = dict(zip(conflict["value"], conflict["line"].astype(int)))
        assert conflict.set_index("value").loc["A", "reason"].endswith(f"(on line {lines['C']})")
        s = ds.report.summary().set_index("file").loc["indicators.csv"]
        assert s["read"] == s["accepted"] + s["quarantined"] == 9
        ind = indicator_columns(ds.as_of("2023-07-01"))
        assert ind.loc[f, "ind_premises"] == "B" and ind.loc[f, "ind_dishonest"] == 0.0
        assert ind.loc[g, "ind_premises"] == "A" and ind.loc[g, "ind_environment"] == "A"
