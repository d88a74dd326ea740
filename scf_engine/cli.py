"""The ``scf`` command line: parse arguments, call a pipeline, print with rich.

typer gives typed options and ``--help`` from the signatures; rich gives tables and
progress. Every command turns any :class:`~scf_engine.errors.ScfError` (a dataset, request,
policy, model registry, tracking or audit problem a user can fix) into one line on stderr
and exit code 2, as the data contract asks; no traceback reaches a user for bad input.
"""

from __future__ import annotations

import functools
from pathlib import Path

import typer
from rich.table import Table

from scf_engine.contract import ExitCode
from scf_engine.errors import ScfError
from scf_engine.progress import console, err_console, steps

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Supply-chain finance credit risk engine.")


def handles_errors(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ScfError as exc:
            err_console.print(f"[red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(ExitCode.UNUSABLE) from None
    return wrapper


def frame_table(df, title: str | None = None, *, float_format: str = "{:.4f}") -> Table:
    t = Table(title=title, show_lines=False)
    for c in df.columns:
        t.add_column(str(c), justify="right" if df[c].dtype.kind in "iuf" else "left")
    for row in df.itertuples(index=False):
        t.add_row(*[float_format.format(v) if isinstance(v, float) else str(v) for v in row])
    return t


def print_report(report) -> None:
    console.print(frame_table(report.summary(), "Rows read, accepted and quarantined"))
    if report.n_quarantined:
        console.print(frame_table(report.top_reasons(), "Top quarantine reasons"))


def print_quarantine(report, folder: Path, name: str = "quarantine.csv") -> None:
    """After a run that succeeded with rows set aside: the counts per file and where
    its quarantine report was published (beside the run's output)."""
    if report is not None and report.n_quarantined:
        print_report(report)
        console.print(f"quarantine report: {Path(folder) / name}", highlight=False, soft_wrap=True)


@app.command()
@handles_errors
def simulate(
    out: Path = typer.Option(..., "--out", help="Folder to write the dataset to."),
    firms: int = typer.Option(10000, "--firms", help="Number of firms (the default world: 10,000)."),
    seed: int = typer.Option(42, "--seed", help="Random seed (the world is deterministic for a seed)."),
    months: int = typer.Option(48, "--months", help="Months of history."),
    fmt: str = typer.Option("csv", "--format", help="csv, parquet, or compact (flows and receivables as Parquet)."),
    faults: bool = typer.Option(False, "--faults", help="Also write OUT/with-faults/: a copy with contract violations of every kind and faults.csv."),
    story: str = typer.Option("default", "--story", help="The generative story: default, cyclical or shock (scf_engine/simulate/stories.py)."),
    closed_loop: bool = typer.Option(False, "--closed-loop", help="Contract v1.1 closed-loop scenario: financings.csv, accounts, pledges, with planted double pledges, diversions, misuse and borrowing to repay (closed_loop_truth.csv)."),
):
    """Write a synthetic dataset that follows the data contract, plus truth.csv."""
    from scf_engine.simulate import STORIES, WorldConfig, simulate as run_simulation, write_dataset

    if story not in STORIES:
        raise typer.BadParameter(f"--story must be one of {', '.join(STORIES)}")

    if fmt not in ("csv", "parquet", "compact"):
        raise typer.BadParameter("--format must be csv, parquet or compact")
    with steps("simulate") as say:
        world = run_simulation(WorldConfig(n_firms=firms, seed=seed, n_months=months, story=story,
                                           closed_loop=closed_loop), progress=say)
        write_dataset(world, out, fmt=fmt)
        if faults:
            from scf_engine.simulate.faults import write_faulty_copy
            manifest = write_faulty_copy(out, out / "with-faults", seed=seed)
            console.print(f"faulty copy: {out / 'with-faults'} ({len(manifest)} faults, listed in faults.csv)")
    rows = {k: v for k, v in world.records.items() if k == "truth"}
    console.print(f"wrote {out}: {firms} firms, seed {seed}; truth.csv has {len(rows['truth'])} rows")


ACTOR_HELP = "Who is acting, for the audit log (default: $SCF_ACTOR, else the OS user)."
AUDIT_HELP = "The hash-chained audit log every read of firm data is recorded in (default: $SCF_AUDIT_LOG, else audit/audit.jsonl)."
WHITELIST_AS_SCORE_HELP = ("whitelist.csv (firm_id, list): the programme's list (名单制), as scf score takes it; a firm off it "
                            "is answered as the batch would decide it.")
LIST_HELP = ("The programme whose rows of the whitelist count, when the file holds several (its list column: a chain's, a "
             "park's, an association's list); default: every row. Named in the reasons and the audit entry.")


def _validate(data: Path, out: Path, actor, audit_log):
    from scf_engine import access
    from scf_engine.ingest.load import load_or_report

    with steps("validate") as say:
        ds = load_or_report(data, out / "quarantine.csv", progress=say)
    path = ds.report.write(out / "quarantine.csv")
    access.record(audit_log, actor, "validate", "data-quality check of a delivered dataset", ds.firms["firm_id"],
                  inputs=ds.fingerprints, quarantined=int(ds.report.n_quarantined))
    print_report(ds.report)
    console.print(f"quarantine report: {path}")
    return ds


@app.command()
@handles_errors
def validate(
    data: Path = typer.Argument(..., help="Dataset folder."),
    out: Path = typer.Option(Path("out/validate"), "--out", help="Folder for quarantine.csv."),
    actor: str = typer.Option(None, "--actor", help=ACTOR_HELP),
    audit_log: Path = typer.Option(None, "--audit-log", help=AUDIT_HELP),
):
    """Check a dataset; write the quarantine report. Exit 0 clean, 1 rows quarantined, 2 unusable."""
    ds = _validate(data, out, actor, audit_log)
    raise typer.Exit(ExitCode.QUARANTINED if ds.report.n_quarantined else ExitCode.OK)


TRACKING_HELP = "MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)."
SPARK_MASTER_HELP = ("Spark master URL (local[*], spark://host:7077, yarn, k8s://...) or a Spark Connect sc:// URL "
                     "(default: $SCF_SPARK_MASTER, else local[*]).")


def print_overall(overall, title: str) -> None:
    cols = [c for c in ("model", "n", "defaults", "coverage", "auc", "ks", "gini", "brier", "log_loss", "bayes_fraction", "psi")
            if c in overall.columns]
    shown = overall[cols].assign(model=overall["model"].str.replace("pd_", "", regex=False))
    console.print(frame_table(shown, title, float_format="{:.3f}"))


@app.command()
@handles_errors
def train(
    data: Path = typer.Argument(..., help="Dataset folder (with defaults for the labels)."),
    tracking_uri: str = typer.Option(None, "--tracking-uri", help=TRACKING_HELP),
    out: Path = typer.Option(Path("out/train"), "--out", help="Folder for evaluation tables and the quarantine report."),
    n_test: int = typer.Option(2, "--test-snapshots", help="Latest snapshot dates held out for out-of-time evaluation."),
    consents: Path = typer.Option(None, "--consents", help="consents.csv: needed when data_use.yaml says training uses only consented history."),
    tune: bool = typer.Option(False, "--tune", help="Search the LightGBM parameters first (Optuna, budget and space in lightgbm.yaml 'tuning'; each trial an MLflow child run)."),
    actor: str = typer.Option(None, "--actor", help=ACTOR_HELP),
    audit_log: Path = typer.Option(None, "--audit-log", help=AUDIT_HELP),
):
    """Build snapshots, train propagation, de-coupled and hybrid models, log everything to MLflow."""
    from scf_engine import pipelines

    with steps("train") as say:
        result = pipelines.train(data, tracking_uri=tracking_uri, out_dir=out, n_test=n_test, audit_log=audit_log,
                                 actor=actor, consents=consents, progress=say, tune=tune)
    if result.quarantined:
        console.print(f"[yellow]{result.quarantined} rows were quarantined[/] (see {out / 'quarantine.csv'}); trained on the rest")
    print_overall(result.evaluation["overall"],
                  f"Out of time: held-out snapshots {', '.join(str(d.date()) for d in result.test_dates)}")
    versions = ", ".join(f"{k} v{v}" for k, v in result.versions.items())
    console.print(f"MLflow run {result.run_id}; registered as challenger: {versions}")


@app.command()
@handles_errors
def compare(
    tracking_uri: str = typer.Option(None, "--tracking-uri", help=TRACKING_HELP),
    alias: str = typer.Option("challenger", "--alias", help="Which registered version of each model to compare."),
    promote: list[str] = typer.Option([], "--promote", help="Move the champion alias to this kind's compared version (propagation, decoupled, hybrid, or all); repeatable."),
    data: Path = typer.Option(None, "--data", help="Dataset folder (default: the one the latest training used; must be unchanged)."),
    out: Path = typer.Option(Path("out/compare"), "--out", help="Folder for the HTML report and tables."),
    actor: str = typer.Option(None, "--actor", help=ACTOR_HELP),
    audit_log: Path = typer.Option(None, "--audit-log", help=AUDIT_HELP),
):
    """Compare the tracked models and the Jiangyin rule baseline on the same held-out snapshots."""
    from scf_engine import pipelines

    with steps("compare") as say:
        result = pipelines.compare(tracking_uri=tracking_uri, data_dir=data, alias=alias, promote=promote, out_dir=out,
                                   audit_log=audit_log, actor=actor, progress=say)
    print_quarantine(result.report, out)
    print_overall(result.overall, "Models on the same held-out snapshots")
    console.print(frame_table(result.bootstrap[["a", "b", "n", "auc_diff", "auc_lo", "auc_hi", "ks_diff", "ks_lo", "ks_hi"]],
                              "Differences, 95% bootstrap intervals (firms resampled)", float_format="{:.3f}"))
    console.print(frame_table(result.segment_winners, "Propagation against de-coupled, by segment (AUC)", float_format="{:.3f}"))
    for note in result.notes:
        console.print(note, highlight=False)
    for kind, version in result.promoted.items():
        console.print(f"champion: {kind} -> version {version}")
    console.print(f"report: {result.report_path}  (MLflow run {result.run_id})")


@app.command()
@handles_errors
def recalibrate(
    data: Path = typer.Argument(..., help="The new bank's dataset folder (with defaults for the quarter's outcomes)."),
    quarter: str = typer.Option(..., "--quarter", help="As-of date (YYYY-MM-DD) of the first labelled quarter: its 12-month outcomes set the calibration."),
    alias: str = typer.Option("champion", "--alias", help="Which registered version of each model to recalibrate."),
    tracking_uri: str = typer.Option(None, "--tracking-uri", help=TRACKING_HELP),
    out: Path = typer.Option(Path("out/recalibrate"), "--out", help="Folder for the calibration tables."),
    actor: str = typer.Option(None, "--actor", help=ACTOR_HELP),
    audit_log: Path = typer.Option(None, "--audit-log", help=AUDIT_HELP),
):
    """Refit the de-coupled and hybrid models' calibration on a new bank's first labelled quarter; register new versions."""
    from scf_engine.pipelines.recalibrate import recalibrate as run_recalibrate

    with steps("recalibrate") as say:
        result = run_recalibrate(data, quarter, tracking_uri=tracking_uri, alias=alias, out_dir=out, audit_log=audit_log,
                                 actor=actor, progress=say)
    print_quarantine(result.report, result.out_dir)
    console.print(frame_table(result.summary[["kind", "sample", "rows", "defaults", "max_gap_before_pp", "max_gap_after_pp",
                                              "noise_95_pp"]],
                              "Calibration by decile: largest gap between mean PD and observed rate (percentage points; "
                              "noise_95_pp: what a perfectly calibrated PD shows on these rows 95% of the time)",
                              float_format="{:.2f}"))
    versions = ", ".join(f"{k} v{v}" for k, v in result.versions.items())
    console.print(f"registered as challenger: {versions}; tables in {result.out_dir}")


@app.command()
@handles_errors
def score(
    data: Path = typer.Argument(..., help="Dataset folder."),
    batch: Path = typer.Option(..., "--batch", help="batch.csv: firm_id, requested_amount (optional)."),
    out: Path = typer.Option(..., "--out", help="limits.csv to write; memos go to memos/ beside it."),
    as_of: str = typer.Option(None, "--as-of", help="Snapshot date YYYY-MM-DD (default: the day after the data's last date)."),
    consents: Path = typer.Option(None, "--consents", help="consents.csv: firm_id, granted_on, expires_on."),
    group_limit: float = typer.Option(None, "--group-limit", help="One envelope (CNY) shared by the group (整园/整会/整村授信)."),
    group_by: str = typer.Option("batch", "--group-by", help="batch: the whole batch is one group; batch_group: one envelope per firms' batch_group."),
    chain_core: str = typer.Option(None, "--chain-core", help="The core whose 1+N chain this batch is (default: detected when all firms share one core)."),
    whitelist: Path = typer.Option(None, "--whitelist", help="whitelist.csv (firm_id, list): the programme's list (名单制); firms off it are declined or reviewed as limit_policy.yaml's off_whitelist says."),
    whitelist_list: str = typer.Option(None, "--list", help=LIST_HELP),
    memos: bool = typer.Option(True, "--memos/--no-memos", help="Write a credit memo per scored firm."),
    memo_formats: str = typer.Option("html,md", "--memo-formats", help="Comma-separated: html, pdf, md (PDF costs ~0.3 s a memo; the HTML prints the same)."),
    tracking_uri: str = typer.Option(None, "--tracking-uri", help=TRACKING_HELP),
    actor: str = typer.Option(None, "--actor", help=ACTOR_HELP),
    audit_log: Path = typer.Option(None, "--audit-log", help=AUDIT_HELP),
    engine: str = typer.Option("duckdb", "--engine", help="duckdb (embedded) or spark: flow features, the models and their SHAP reasons on Spark."),
    spark_master: str = typer.Option(None, "--spark-master", help=SPARK_MASTER_HELP),
):
    """Score a batch with the champion models: limits.csv, memos, an MLflow run and an audit entry."""
    from scf_engine.pipelines import score as run_score

    with steps("score") as say:
        r = run_score(data, batch, out, as_of=as_of, tracking_uri=tracking_uri, consents=consents, group_limit=group_limit,
                      group_by=group_by, chain_core=chain_core, memos=memos, memo_formats=tuple(memo_formats.split(",")),
                      audit_log=audit_log, actor=actor, whitelist=whitelist, whitelist_list=whitelist_list, engine=engine,
                      spark_master=spark_master, progress=say)
    print_quarantine(r.report, r.out_path.parent)
    lim = r.limits
    by = lim.groupby(["decision", "grade"], dropna=False).agg(firms=("firm_id", "size"), limit_cny=("limit_cny", "sum")).reset_index()
    by["grade"] = by["grade"].astype(object).where(by["grade"].notna(), "-")
    console.print(frame_table(by, f"Batch at {lim['as_of'].iloc[0]}: {len(lim)} firms", float_format="{:,.0f}"))
    show = lim[["firm_id", "pd", "score", "grade", "limit_cny", "decision"]].head(15)
    console.print(frame_table(show, "First rows of limits.csv", float_format="{:,.4f}"))
    console.print(f"limits: {r.out_path}; memos: {r.memo_dir or '-'}; MLflow run {r.run_id}; audit entry #{r.audit_entry['seq']}")


@app.command()
@handles_errors
def features(
    data: Path = typer.Argument(..., help="Dataset folder."),
    as_of: str = typer.Option(None, "--as-of", help="Snapshot date YYYY-MM-DD (default: the day after the data's last date)."),
    engine: str = typer.Option("duckdb", "--engine", help="duckdb (embedded) or spark: the same catalogue SQL, transpiled for Spark."),
    out: Path = typer.Option(Path("features.parquet"), "--out", help="Parquet file: firm_id + one column per catalogue flow feature."),
    spark_master: str = typer.Option(None, "--spark-master", help=SPARK_MASTER_HELP),
    actor: str = typer.Option(None, "--actor", help=ACTOR_HELP),
    audit_log: Path = typer.Option(None, "--audit-log", help=AUDIT_HELP),
):
    """The catalogue's flow features at an as-of date, one row per firm (an access entry goes to the audit log)."""
    from scf_engine.pipelines.features import features as run_features

    with steps("features") as say:
        r = run_features(data, out, as_of=as_of, engine=engine, spark_master=spark_master, audit_log=audit_log,
                         actor=actor, progress=say)
    from scf_engine.pipelines.features import quarantine_path

    print_quarantine(r.report, r.out_path.parent, quarantine_path(r.out_path).name)
    console.print(f"{len(r.features)} firms x {r.features.shape[1] - 1} features at {r.as_of.date()} on {r.engine} "
                  f"in {r.seconds:.1f} s: {r.out_path}; audit entry #{r.audit_entry['seq']}", highlight=False)


@app.command()
@handles_errors
def explain(
    data: Path = typer.Argument(..., help="Dataset folder."),
    firm: str = typer.Option(..., "--firm", help="The firm's unified social credit code."),
    as_of: str = typer.Option(None, "--as-of", help="Snapshot date (default: the day after the data's last date)."),
    out: Path = typer.Option(Path("out/explain"), "--out", help="Folder for the memo."),
    consents: Path = typer.Option(None, "--consents", help="consents.csv: the firm's data-use authorisation is checked as in a batch."),
    alias: str = typer.Option("champion", "--alias", help="Registered model alias to explain."),
    tracking_uri: str = typer.Option(None, "--tracking-uri", help=TRACKING_HELP),
    actor: str = typer.Option(None, "--actor", help=ACTOR_HELP),
    audit_log: Path = typer.Option(None, "--audit-log", help=AUDIT_HELP),
    whitelist: Path = typer.Option(None, "--whitelist", help=WHITELIST_AS_SCORE_HELP),
    whitelist_list: str = typer.Option(None, "--list", help=LIST_HELP),
):
    """Print the reasons behind one firm's PD and write its credit memo (an access entry
    goes to the audit log)."""
    from scf_engine.pipelines import explain as run_explain

    with steps("explain") as say:
        r = run_explain(data, firm, out, as_of=as_of, consents=consents, tracking_uri=tracking_uri, alias=alias,
                        audit_log=audit_log, actor=actor, progress=say, whitelist=whitelist, whitelist_list=whitelist_list)
    print_quarantine(r.report, out)
    row = r.row
    if row["pd"] == row["pd"]:
        console.print(f"[bold]{row['firm_id']}[/] at {row['as_of']}: PD {row['pd']:.4f}  score {row['score']}  "
                      f"grade {row['grade']}  limit CNY {row['limit_cny']:,.0f}  decision {row['decision']}", highlight=False)
        for i, reason in enumerate(str(row["reasons"]).split("; "), 1):
            console.print(f"  {i}. {reason}", highlight=False)
    else:
        console.print(f"[bold]{row['firm_id']}[/]: not scored - {row['reasons']}; decision {row['decision']}", highlight=False)
    console.print("  (scored alone: caps shared across a batch - the core's line in a 1+N batch, a group envelope - "
                  "cannot bind here; a batch's limits.csv is the lending decision)", style="dim", highlight=False)
    console.print(f"memo: {r.memo_paths.get('html', '-')}; audit entry #{r.audit_entry['seq']}")


@app.command()
@handles_errors
def monitor(
    data: Path = typer.Argument(..., help="Dataset folder."),
    out: Path = typer.Option(..., "--out", help="Folder for portfolio.csv and alerts.csv."),
    as_of: list[str] = typer.Option(..., "--as-of", help="Monitoring date YYYY-MM-DD, after the batch; repeat for several."),
    portfolio: Path = typer.Option(None, "--portfolio", help="A batch's limits.csv: its firms with a limit > 0 are the portfolio."),
    batch_run: str = typer.Option(None, "--batch-run", help="Take the portfolio from this batch's MLflow run instead."),
    consents: Path = typer.Option(None, "--consents", help="consents.csv: checked as in a batch; a lapsing consent is a signal."),
    alias: str = typer.Option("champion", "--alias", help="Registered model alias to re-score with."),
    tracking_uri: str = typer.Option(None, "--tracking-uri", help=TRACKING_HELP),
    actor: str = typer.Option(None, "--actor", help=ACTOR_HELP),
    audit_log: Path = typer.Option(None, "--audit-log", help=AUDIT_HELP),
):
    """Re-score a lent portfolio at each as-of (贷后监测): portfolio.csv, alerts.csv, an MLflow run and an audit entry."""
    from scf_engine.pipelines.monitor import monitor as run_monitor

    with steps("monitor") as say:
        r = run_monitor(data, out, as_of=as_of, portfolio=portfolio, batch_run=batch_run, consents=consents,
                        tracking_uri=tracking_uri, alias=alias, audit_log=audit_log, actor=actor, progress=say)
    print_quarantine(r.report, r.out)
    p = r.portfolio
    by = p.groupby(["as_of", "level"]).size().unstack(fill_value=0).reset_index()
    console.print(frame_table(by, f"Portfolio of {p['firm_id'].nunique()} firms by level"))
    if len(r.quarantined):
        console.print(f"{len(r.quarantined)} portfolio row(s) quarantined (unknown firms): {r.out / 'portfolio_quarantine.csv'}")
    console.print(f"portfolio: {r.out / 'portfolio.csv'}; alerts: {r.out / 'alerts.csv'} ({len(r.alerts)}); "
                  f"MLflow run {r.run_id}; audit entry #{r.audit_entry['seq']}")


@app.command()
@handles_errors
def serve(
    data: Path = typer.Argument(..., help="Dataset folder."),
    keys: Path = typer.Option(..., "--keys", help="keys.csv: name, role, key_sha256 (the keys' sha256, never the keys)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(8000, "--port", help="Port to listen on."),
    as_of: str = typer.Option(None, "--as-of", help="Snapshot date YYYY-MM-DD (default: the day after the data's last date)."),
    consents: Path = typer.Option(None, "--consents", help="consents.csv: checked as in batch scoring."),
    alias: str = typer.Option("champion", "--alias", help="Registered model alias to serve (reloaded when it moves)."),
    tracking_uri: str = typer.Option(None, "--tracking-uri", help=TRACKING_HELP),
    audit_log: Path = typer.Option(None, "--audit-log", help=AUDIT_HELP),
    actor: str = typer.Option(None, "--actor", help=ACTOR_HELP),
    poll_seconds: float = typer.Option(None, "--poll-seconds", help="How often to look whether the alias moved (default: serve.yaml; 0: only on POST /v1/reload)."),
    cache_entries: int = typer.Option(None, "--cache-entries", help="Answers kept per loaded state (default: serve.yaml; 0: off)."),
    out: Path = typer.Option(Path("out/serve"), "--out", help="Folder for quarantine.csv: the dataset's rows the service decides without."),
    whitelist: Path = typer.Option(None, "--whitelist", help=WHITELIST_AS_SCORE_HELP),
    whitelist_list: str = typer.Option(None, "--list", help=LIST_HELP),
):
    """Credit decisions over HTTP (POST /v1/decisions, key in X-API-Key; docs at /docs)."""
    from scf_engine.serve import build, run

    with steps("serve") as say:
        built = build(data, keys, as_of=as_of, consents=consents, alias=alias, tracking_uri=tracking_uri,
                      audit_log=audit_log, actor=actor, cache_entries=cache_entries,
                      progress=say, out=out, whitelist=whitelist, whitelist_list=whitelist_list)
    st = built[1].state
    print_quarantine(st.loaded.report, out)
    console.print(f"serving {alias} models {st.versions} at as-of {st.as_of} on http://{host}:{port} (docs: /docs)",
                  highlight=False)
    run(*built, host=host, port=port, poll_seconds=poll_seconds)


audit_app = typer.Typer(help="The hash-chained audit log.")
app.add_typer(audit_app, name="audit")


@audit_app.command("verify")
@handles_errors
def audit_verify(
    log: Path = typer.Argument(None, help="Audit log to check (default: $SCF_AUDIT_LOG, else audit/audit.jsonl)."),
    anchor: str = typer.Option(None, "--anchor", help="SEQ:HASH of an entry recorded elsewhere (a batch's MLflow "
                               "run keeps one): the log must still hold it, so entries cut off its end are seen."),
    out: Path = typer.Option(None, "--out", help="An output folder (a batch's, where limits.csv is, or a monitor "
                             "pass's): its files must be exactly those its audit entry recorded, reached through the links "
                             "to the published output, and that entry must be in the log."),
):
    """Check every entry's hash and the chain; exit 0 when intact, 1 when tampered. Prints
    the head (SEQ:HASH of the last entry) to keep somewhere else."""
    from scf_engine import access, audit

    log = access.log_path(log)
    if not log.is_file():
        err_console.print(f"[red]error:[/] {log}: no such audit log")
        raise typer.Exit(ExitCode.UNUSABLE)
    anchor_entry = None
    if anchor:
        seq, _, digest = anchor.partition(":")
        if not seq.strip().isdigit() or len(digest.strip()) != 64:
            err_console.print(f"[red]error:[/] --anchor {anchor!r} is not SEQ:HASH (a number, a colon, 64 hex digits)",
                              highlight=False, soft_wrap=True)
            raise typer.Exit(ExitCode.UNUSABLE)
        anchor_entry = {"seq": int(seq), "hash": digest.strip()}
    ok, problems = audit.verify(log, anchor=anchor_entry)
    if out is not None:
        from scf_engine.publish import unpublished, verify

        out_problems = verify(out, log)
        for left in unpublished(out):
            console.print(f"note: {left}: never published (being written, or left by a killed run; the next run "
                          "removes it)", highlight=False, soft_wrap=True)
        ok, problems = ok and not out_problems, problems + out_problems
    if ok:
        n = sum(1 for _ in open(log, encoding="utf-8"))
        top = audit.head(log)
        console.print(f"{log}: intact ({n} entries)" + (f"; head {top['seq']}:{top['hash']}" if top else "")
                      + (f"; {out}: matches its audit entry" if out is not None else ""), highlight=False, soft_wrap=True)
        return
    for p in problems:
        err_console.print(f"[red]tampered:[/] {p}", highlight=False, soft_wrap=True)
    raise typer.Exit(1)


@audit_app.command("show")
@handles_errors
def audit_show(
    log: Path = typer.Argument(None, help="Audit log (default: $SCF_AUDIT_LOG, else audit/audit.jsonl)."),
    firm: str = typer.Option(None, "--firm", help="Whose data: entries that read this firm's data."),
    actor: str = typer.Option(None, "--actor", help="Who: entries made by this actor, and the requests an API key "
                              "holder of that name made through scf serve (via: service, key NAME)."),
    data: Path = typer.Option(None, "--data", help="A dataset folder: whole-dataset reads (validate, train, compare) of "
                              "exactly its firms count for --firm when the firm is among them."),
):
    """Who read a firm's data, when and why; or what an actor read."""
    from scf_engine import access
    from scf_engine.errors import RequestError

    if not firm and not actor:
        raise RequestError("scf audit show needs --firm ID or --actor NAME")
    firms = None
    if data is not None:
        from scf_engine.ingest import load_dataset

        firms = load_dataset(data).firms["firm_id"]
    rows = access.show(log, firm=firm, actor=actor, dataset_firms=firms)
    title = " and ".join(x for x in (f"firm {firm}" if firm else "", f"actor {actor}" if actor else "") if x)
    console.print(frame_table(rows.fillna(""), f"{access.log_path(log)}: {len(rows)} entries for {title}"))


@app.command("import")
@handles_errors
def import_export(
    source: Path = typer.Argument(..., help="A foreign export (CSV)."),
    mapping: Path = typer.Option(..., "--mapping", help="YAML column mapping (see data/mappings/)."),
    out: Path = typer.Option(..., "--out", help="Dataset folder to write contract files to."),
    actor: str = typer.Option(None, "--actor", help=ACTOR_HELP),
    audit_log: Path = typer.Option(None, "--audit-log", help=AUDIT_HELP),
):
    """Turn someone else's export into contract files through a column mapping."""
    import pandas as pd

    from scf_engine import access
    from scf_engine.hashing import file_sha256
    from scf_engine.ingest.mapping import import_export as run_import

    try:
        paths = run_import(source, mapping, out)
    except ValueError as exc:
        err_console.print(f"[red]error:[/] {exc}", highlight=False)
        raise typer.Exit(ExitCode.UNUSABLE) from None
    firms = pd.read_csv(paths["firms"], dtype=str, usecols=["firm_id"])["firm_id"] if "firms" in paths else []
    access.record(audit_log, actor, "import", "bring a foreign export into the contract's files", firms,
                  inputs={Path(source).name: file_sha256(source), Path(mapping).name: file_sha256(mapping)},
                  outputs={Path(p).name: file_sha256(p) for p in paths.values()})
    for name, p in paths.items():
        console.print(f"{name}: {p}")


@app.command()
@handles_errors
def demo(
    data: Path = typer.Option(Path("data/sample"), "--data", help="Dataset folder."),
    out: Path = typer.Option(Path("out/demo"), "--out", help="Folder for every output."),
):
    """The main job end to end on a dataset (default: the shipped sample)."""
    import pandas as pd

    from scf_engine import access

    log = access.log_path(None)
    console.rule("1. validate")
    _validate(data, out, None, log)
    console.rule("2. train")
    consents = data / "consents.csv"
    train(data=data, tracking_uri=None, out=out / "train", n_test=2, consents=consents if consents.is_file() else None,
          tune=False, actor=None, audit_log=log)  # called as a function: every option explicit
    console.rule("3. compare")
    compare(tracking_uri=None, alias="challenger", promote=["all"], data=data, out=out / "compare", actor=None, audit_log=log)
    console.rule("4. score a batch: one core's chain (1+N)")
    batch = data / "batch.csv"
    score(data=data, batch=batch, out=out / "score" / "limits.csv", as_of=None,
          consents=consents if consents.is_file() else None, group_limit=None, group_by="batch", chain_core=None,
          whitelist=None, whitelist_list=None, memos=True, memo_formats="html,md", tracking_uri=None, actor=None, audit_log=log,
          engine="duckdb", spark_master=None)
    console.rule("5. explain one firm (memo as HTML, PDF and Markdown)")
    first = pd.read_csv(out / "score" / "limits.csv", dtype={"firm_id": str}).dropna(subset=["pd"])["firm_id"].iloc[0]
    explain(data=data, firm=first, as_of=None, out=out / "explain", consents=consents if consents.is_file() else None,
            alias="champion", tracking_uri=None, actor=None, audit_log=log, whitelist=None, whitelist_list=None)
    console.rule("6. after lending: the same chain lent six months earlier, monitored month by month")
    T = pd.Timestamp(pd.read_csv(out / "score" / "limits.csv", dtype=str)["as_of"].iloc[0])
    lent_on = (T - pd.DateOffset(months=6)).replace(day=1)
    score(data=data, batch=batch, out=out / "monitor" / "batch" / "limits.csv", as_of=str(lent_on.date()),
          consents=consents if consents.is_file() else None, group_limit=None, group_by="batch", chain_core=None,
          whitelist=None, whitelist_list=None, memos=False, memo_formats="html", tracking_uri=None, actor=None, audit_log=log,
          engine="duckdb", spark_master=None)
    months = [str((lent_on + pd.DateOffset(months=k)).date()) for k in range(1, 7)]
    monitor(data=data, out=out / "monitor", as_of=[m for m in months if pd.Timestamp(m) <= T],
            portfolio=out / "monitor" / "batch" / "limits.csv", batch_run=None,
            consents=consents if consents.is_file() else None, alias="champion", tracking_uri=None, actor=None,
            audit_log=log)
    console.rule("7. audit: every read of firm data is on the chain")
    audit_verify(log, anchor=None, out=None)
    console.print("open the runs: .venv/bin/mlflow ui --backend-store-uri sqlite:///mlflow.db  (http://127.0.0.1:5000)")


def main():  # pragma: no cover - console-script entry
    app()


if __name__ == "__main__":  # pragma: no cover
    app()
