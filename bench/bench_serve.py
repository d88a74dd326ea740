"""``scf serve`` under load on loopback: 50 concurrent clients asking one firm's decision.

World: a simulated dataset of ``BENCH_SERVE_FIRMS`` firms (default 1,000), trained and
promoted the way ``scf train`` / ``scf compare --promote all`` do, in a temporary store.
The service is the real command (``scf serve`` in its own process, uvicorn, the audit log
on disk); the clients are one asyncio process speaking HTTP/1.1 keep-alive on raw
sockets (the lightest client Python has, so the 2 cores go to the service as far as
they can), each sending ``POST /v1/decisions`` for one firm with a requested amount,
drawn from ``BENCH_SERVE_DISTINCT`` applicants (default 200), and waiting for the answer
before the next (closed loop: latency = time from sending to the whole answer).

Rows:

* **baseline: in-process one-firm decision** - what ``scf explain`` runs per firm
  (``requests_frame`` -> ``decide_loaded`` on the loaded snapshot and models), one call at
  a time, no HTTP, no audit; the core builds its snapshot context on every call, as a
  batch of one does;
* **in-process, shared context** - the same calls with the snapshot's
  ``DecisionContext`` built once and passed in (what ``scf serve`` did before the
  precomputed table, and still does for an unknown firm);
* **in-process, request step only** - what ``scf serve`` now runs for a request the
  cache has not seen: ``decide_rows`` on the snapshot's precomputed per-firm table
  (``precompute``, once at load), the answer's records and its JSON;
* **generator + HTTP only** - ``GET /healthz`` on the cached service (no audit record,
  no work): what the load generator and the HTTP stack cost on the same 2 cores, the
  floor under every service row's latency;
* **service, answers cached** - after one warm-up pass over the applicants (timed and
  shown), ``BENCH_SERVE_CLIENTS`` clients (default 50) for ``BENCH_SERVE_SECONDS``
  (default 60);
* **service, no cache** - ``--cache-entries 0``: every request runs the decision core's
  request step on the precomputed table, for ``BENCH_SERVE_COLD_SECONDS`` (default 15).

"x baseline" is the row's throughput / the baseline's; "thr x floor" and "p99 x floor"
compare a service row with the healthz floor measured in the same run (throughput
ratio, p99 ratio); errors are non-200 answers and broken connections; "audited" is the
requests found in the audit log (``scf audit verify`` run on it) against the requests
sent, warm-up included. Printed apart: the precompute's time at load and the Python
memory it holds (tracemalloc, the 1M-firm figure scaled linearly from this world).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tracemalloc
import urllib.request
from pathlib import Path

import numpy as np

from bench.harness import show

FIRMS = int(os.environ.get("BENCH_SERVE_FIRMS", 1000))
DISTINCT = int(os.environ.get("BENCH_SERVE_DISTINCT", 200))
CLIENTS = int(os.environ.get("BENCH_SERVE_CLIENTS", 50))
SECONDS = float(os.environ.get("BENCH_SERVE_SECONDS", 60))
COLD_SECONDS = float(os.environ.get("BENCH_SERVE_COLD_SECONDS", 15))
KEY = "bench-platform-key"
ROOT = Path(__file__).resolve().parents[1]


def prepare(home: Path) -> dict:
    """Simulate, train, compare and promote, as the commands do (in this process)."""
    from scf_engine import pipelines
    from scf_engine.simulate import WorldConfig, simulate, write_dataset

    data = write_dataset(simulate(WorldConfig(n_firms=FIRMS, seed=31, n_months=36)), home / "data")
    uri = f"sqlite:///{home / 'mlflow.db'}"
    pipelines.train(data, tracking_uri=uri, out_dir=home / "train")
    pipelines.compare(tracking_uri=uri, data_dir=data, alias="challenger", promote=["all"], out_dir=home / "compare")
    (home / "keys.csv").write_text(f"name,role,key_sha256\nbench,platform,{hashlib.sha256(KEY.encode()).hexdigest()}\n")
    return {"data": data, "uri": uri, "keys": home / "keys.csv", "consents": data / "consents.csv"}


def applicants(world: dict) -> list[tuple[str, float]]:
    import pandas as pd

    firms = pd.read_csv(world["data"] / "firms.csv", dtype=str)
    ids = firms.loc[firms["is_core"].str.lower() != "true", "firm_id"].tolist()
    rng = random.Random(7)
    return [(f, float(rng.randrange(1, 50) * 100_000)) for f in rng.sample(ids, min(DISTINCT, len(ids)))]


def baseline(world: dict, apps) -> tuple[dict, dict]:
    """One-firm decisions in process, one at a time: as ``scf explain`` runs them (the
    core builds its snapshot context per call) and with one shared context (as the
    service runs them), alternating so both see the same load."""
    import pandas as pd

    from scf_engine.credit.decide import decide_rows, records
    from scf_engine.ingest.requests import requests_frame
    from scf_engine.pipelines.score import decide_loaded, decision_context, load_for_decisions, precompute_loaded

    loaded = load_for_decisions(world["data"], consents=world["consents"], tracking_uri=world["uri"])
    context = decision_context(loaded)
    t = time.perf_counter()
    table = precompute_loaded(loaded, context)
    precompute_s = time.perf_counter() - t
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    again = precompute_loaded(loaded, context)
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    del again
    out = {"per call": {"lat": [], "errors": 0}, "shared": {"lat": [], "errors": 0}, "step": {"lat": [], "errors": 0}}
    for f, a in apps[:100]:
        req = requests_frame(pd.DataFrame({"firm_id": [f], "requested_amount": [repr(a)]}))
        for name, ctx in (("per call", None), ("shared", context)):
            t = time.perf_counter()
            decide_loaded(loaded, req, context=ctx)
            out[name]["lat"].append(time.perf_counter() - t)
    for f, a in apps * 5:
        t = time.perf_counter()
        cols, _ = decide_rows([table], [f], np.array([a]), None, loaded.pols, basis=False)  # as Service.quick
        json.dumps(records(cols), ensure_ascii=False, allow_nan=False).encode()
        out["step"]["lat"].append(time.perf_counter() - t)
    for r in out.values():
        r["n"], r["seconds"] = len(r["lat"]), sum(r["lat"])
    memory = {"firms": len(table), "precompute_s": precompute_s, "bytes": held}
    return out["per call"], out["shared"], out["step"], memory


# ------------------------------------------------------------------------- the service


def start(world: dict, home: Path, port: int, log: Path, extra=()) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "scf_engine.cli", "serve", str(world["data"]), "--keys", str(world["keys"]),
           "--port", str(port), "--consents", str(world["consents"]), "--tracking-uri", world["uri"],
           "--audit-log", str(log), "--poll-seconds", "0", *extra]
    proc = subprocess.Popen(cmd, cwd=home, stdout=subprocess.DEVNULL, stderr=open(home / f"serve-{port}.log", "w"),
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    deadline = time.monotonic() + 300
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"scf serve did not start: {(home / f'serve-{port}.log').read_text()[-2000:]}")
        time.sleep(0.3)


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)  # uvicorn shuts down; the audit queue is written
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -------------------------------------------------------------------------- the clients


def healthz_bytes(port: int) -> bytes:
    return f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()


def request_bytes(port: int, firm: str, amount: float) -> bytes:
    body = json.dumps({"firms": [{"firm_id": firm, "requested_amount": amount}]}).encode()
    return (f"POST /v1/decisions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-API-Key: {KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body


async def _exchange(reader, writer, payload: bytes) -> int:
    writer.write(payload)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:"))
    await reader.readexactly(length)
    return status


async def _client(port, payloads, until, lat, errors, rng):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.perf_counter() < until:
            t = time.perf_counter()
            try:
                status = await _exchange(reader, writer, rng.choice(payloads))
            except (OSError, asyncio.IncompleteReadError, ValueError, StopIteration):
                errors.append("connection")
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                continue
            lat.append(time.perf_counter() - t)
            if status != 200:
                errors.append(status)
    finally:
        writer.close()


async def _load(port, payloads, clients, seconds):
    lat, errors = [], []
    until = time.perf_counter() + seconds
    t0 = time.perf_counter()
    await asyncio.gather(*[_client(port, payloads, until, lat, errors, random.Random(i)) for i in range(clients)])
    return {"n": len(lat), "seconds": time.perf_counter() - t0, "lat": lat, "errors": len(errors)}


def load(port, apps, clients, seconds, payloads=None) -> dict:
    payloads = payloads or [request_bytes(port, f, a) for f, a in apps]
    return asyncio.run(_load(port, payloads, clients, seconds))


async def _warm(port, payloads):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    bad = sum([await _exchange(reader, writer, p) != 200 for p in payloads])
    writer.close()
    return bad


def audited(log: Path) -> int:
    from scf_engine import audit

    ok, problems = audit.verify(log)
    if not ok:
        raise RuntimeError(f"audit chain broken: {problems[:3]}")
    return sum(len(json.loads(line)["details"].get("requests", [])) for line in log.read_text().splitlines())


def row(name, r, base=None, sent=None, recorded=None, floor=None) -> dict:
    lat = np.asarray(r["lat"]) * 1000
    thr = r["n"] / r["seconds"]
    p99 = float(np.percentile(lat, 99))
    out = {"route": name, "clients": r.get("clients", 1), "seconds": round(r["seconds"], 1), "requests": r["n"],
           "req_per_s": round(thr, 1), "p50_ms": float(np.percentile(lat, 50)), "p99_ms": p99,
           "errors": r["errors"], "x_baseline": round(thr / base, 2) if base else 1.0,
           "thr_x_floor": "-", "p99_x_floor": "-", "audited": f"{recorded}/{sent}" if sent is not None else "-"}
    if floor is not None:
        f_lat = np.asarray(floor["lat"]) * 1000
        out["thr_x_floor"] = f"{thr / (floor['n'] / floor['seconds']):.2f}"
        out["p99_x_floor"] = f"{p99 / float(np.percentile(f_lat, 99)):.2f}"
    return out


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        home = Path(tmp)
        t = time.perf_counter()
        world = prepare(home)
        print(f"world of {FIRMS} firms trained and promoted in {time.perf_counter() - t:.0f} s")
        apps = applicants(world)
        base, shared, step, memory = baseline(world, apps)
        base_thr = base["n"] / base["seconds"]
        rows = [row("baseline: in-process one-firm decide (scf explain's route)", base),
                row("in-process one-firm decide, snapshot context shared (unknown firms' route)", shared, base_thr),
                row("in-process request step on the precomputed table + JSON (the service's route)", step, base_thr)]

        port, log = free_port(), home / "audit-warm.jsonl"
        proc = start(world, home, port, log)
        try:
            t = time.perf_counter()
            bad = asyncio.run(_warm(port, [request_bytes(port, f, a) for f, a in apps]))
            warm_s = time.perf_counter() - t
            floor = load(port, apps, CLIENTS, min(SECONDS, 20), payloads=[healthz_bytes(port)])
            r = load(port, apps, CLIENTS, SECONDS)
        finally:
            stop(proc)
        floor["clients"] = r["clients"] = CLIENTS
        rows.append(row("generator + HTTP only: GET /healthz, no audit, no work (the latency floor)", floor, base_thr,
                        floor=floor))
        r["errors"] += bad
        rows.append(row(f"service, answers cached (warm-up: {len(apps)} requests in {warm_s:.1f} s)", r, base_thr,
                        sent=r["n"] + len(apps), recorded=audited(log), floor=floor))

        port, log = free_port(), home / "audit-cold.jsonl"
        proc = start(world, home, port, log, extra=("--cache-entries", "0"))
        try:
            r = load(port, apps, CLIENTS, COLD_SECONDS)
        finally:
            stop(proc)
        r["clients"] = CLIENTS
        rows.append(row("service, no cache (every request runs the request step)", r, base_thr, sent=r["n"],
                        recorded=audited(log), floor=floor))
    show(f"scf serve on loopback, one firm a request, {os.cpu_count()} cores", rows, "serve")
    per_firm = memory["bytes"] / memory["firms"]
    print(f"precompute at load: {memory['firms']:,} firms in {memory['precompute_s']:.1f} s; "
          f"Python memory held {memory['bytes'] / 2**20:.1f} MiB ({per_firm / 1024:.2f} KiB a firm), "
          f"so about {per_firm * 1e6 / 2**30:.1f} GiB for a 1M-firm snapshot (linear)")


if __name__ == "__main__":
    main()
