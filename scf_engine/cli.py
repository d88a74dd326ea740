"""The ``scf`` command line: parse arguments, call a pipeline, print with rich.

typer gives typed options and ``--help`` from the signatures; rich gives tables and
progress. Every command turns a :class:`DatasetError` into one line on stderr and exit
code 2, as the data contract asks; no traceback reaches a user for bad input.
"""

from __future__ import annotations

import functools
from pathlib import Path

import typer
from rich.table import Table

from scf_engine.contract import ExitCode
from scf_engine.ingest.reading import DatasetError
from scf_engine.progress import console, err_console, steps

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Supply-chain finance credit risk engine.")


def handles_errors(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except DatasetError as exc:
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


@app.command()
@handles_errors
def simulate(
    out: Path = typer.Option(..., "--out", help="Folder to write the dataset to."),
    firms: int = typer.Option(2000, "--firms", help="Number of firms."),
    seed: int = typer.Option(42, "--seed", help="Random seed (the world is deterministic for a seed)."),
    months: int = typer.Option(48, "--months", help="Months of history."),
    fmt: str = typer.Option("csv", "--format", help="csv, parquet, or compact (flows and receivables as Parquet)."),
    faults: bool = typer.Option(False, "--faults", help="Also write OUT/with-faults/: a copy with contract violations of every kind and faults.csv."),
):
    """Write a synthetic dataset that follows the data contract, plus truth.csv."""
    from scf_engine.simulate import WorldConfig, simulate as run_simulation, write_dataset

    if fmt not in ("csv", "parquet", "compact"):
        raise typer.BadParameter("--format must be csv, parquet or compact")
    with steps("simulate") as say:
        world = run_simulation(WorldConfig(n_firms=firms, seed=seed, n_months=months), progress=say)
        write_dataset(world, out, fmt=fmt)
        if faults:
            from scf_engine.simulate.faults import write_faulty_copy
            manifest = write_faulty_copy(out, out / "with-faults", seed=seed)
            console.print(f"faulty copy: {out / 'with-faults'} ({len(manifest)} faults, listed in faults.csv)")
    rows = {k: v for k, v in world.records.items() if k == "truth"}
    console.print(f"wrote {out}: {firms} firms, seed {seed}; truth.csv has {len(rows['truth'])} rows")


@app.command()
@handles_errors
def validate(
    data: Path = typer.Argument(..., help="Dataset folder."),
    out: Path = typer.Option(Path("out/validate"), "--out", help="Folder for quarantine.csv."),
):
    """Check a dataset; write the quarantine report. Exit 0 clean, 1 rows quarantined, 2 unusable."""
    from scf_engine.ingest import load_dataset

    with steps("validate") as say:
        ds = load_dataset(data, progress=say)
    path = ds.report.write(out / "quarantine.csv")
    print_report(ds.report)
    console.print(f"quarantine report: {path}")
    raise typer.Exit(ExitCode.QUARANTINED if ds.report.n_quarantined else ExitCode.OK)


@app.command()
@handles_errors
def demo(
    data: Path = typer.Option(Path("data/sample"), "--data", help="Dataset folder."),
    out: Path = typer.Option(Path("out/demo"), "--out", help="Folder for every output."),
):
    """The main job end to end on a dataset (default: the shipped sample)."""
    from scf_engine.ingest import load_dataset

    console.rule("1. validate")
    with steps("validate") as say:
        ds = load_dataset(data, progress=say)
    ds.report.write(out / "quarantine.csv")
    print_report(ds.report)


def main():  # pragma: no cover - console-script entry
    app()


if __name__ == "__main__":  # pragma: no cover
    app()
