"""`scf serve` against a real uvicorn on 127.0.0.1: the same decisions as `scf score`,
keys and roles, bad input, the audit chain under concurrent requests, and a reload after
a promotion. One small world, trained and promoted once (a second training for the
reload test)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pandas as pd
import pytest
import uvicorn
from typer.testing import CliRunner

from scf_engine import audit
from scf_engine.cli import app as cli
from scf_engine.contract import LIMITS_COLUMNS
from scf_engine.serve import build
from scf_engine.simulate import WorldConfig, simulate, write_dataset
from tests.conftest import with_bad_flows

runner = CliRunner()
KEYS = {"plat": ("platform", "k-platform-0001"), "ana": ("analyst", "k-analyst-0002"), "op": ("operator", "k-operator-0003")}


def invoke(*args):
    return runner.invoke(cli, [str(a) for a in args])


def write_keys(path, rows):
    path.write_text("name,role,key_sha256\n" + "".join(f"{n},{r},{h}\n" for n, r, h in rows))
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    home = tmp_path_factory.mktemp("serve")
    data = write_dataset(simulate(WorldConfig(n_firms=400, seed=5, n_months=36)), home / "data")
    uri = f"sqlite:///{home / 'mlflow.db'}"
    for args in (("train", data, "--tracking-uri", uri, "--out", home / "train"),
                 ("compare", "--tracking-uri", uri, "--promote", "all", "--out", home / "compare")):
        r = invoke(*args)
        assert r.exit_code == 0, r.output
    keys = write_keys(home / "keys.csv", [(n, role, hashlib.sha256(k.encode()).hexdigest()) for n, (role, k) in KEYS.items()])
    return {"home": home, "data": data, "uri": uri, "keys": keys}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running(built):
    """A real uvicorn serving ``build``'s app on a free loopback port in a thread: yields
    its URL; stopped (and the audit queue written) at the end, within a bounded time."""
    app, service, writer = built
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        thread.join(15)
        service.close()
        writer.close()
    assert not thread.is_alive()


@pytest.fixture(scope="module")
def server(world):
    """The world's champions served with its consents, the alias watched."""
    home = world["home"]
    built = build(world["data"], world["keys"], consents=world["data"] / "consents.csv",
                  tracking_uri=world["uri"], audit_log=home / "audit.jsonl", actor="test-service")
    built[1].watch(0.5)
    with running(built) as url:
        yield {"url": url, "service": built[1], "log": home / "audit.jsonl", **world}


def call(srv, method, path, body=None, key=None, raw: bytes | None = None):
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(srv["url"] + path, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    if key:
        req.add_header("X-API-Key", KEYS[key][1] if key in KEYS else key)
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


def scf_score(srv, batch: pd.DataFrame, tmp_path) -> pd.DataFrame:
    batch.to_csv(tmp_path / "batch.csv", index=False)
    r = invoke("score", srv["data"], "--batch", tmp_path / "batch.csv", "--consents", srv["data"] / "consents.csv",
               "--out", tmp_path / "limits.csv", "--tracking-uri", srv["uri"], "--no-memos",
               "--audit-log", tmp_path / "score-audit.jsonl")
    assert r.exit_code == 0, r.output
    return pd.read_csv(tmp_path / "limits.csv", dtype={"firm_id": str}, keep_default_na=False,
                       na_values=[""])



def assert_same_answers(decisions: list[dict], limits: pd.DataFrame):
    assert len(decisions) == len(limits)
    columns = list(decisions[0])
    assert columns[: len(LIMITS_COLUMNS)] == list(LIMITS_COLUMNS) and columns == list(limits.columns)
    for c in limits.columns:
        want = limits[c].tolist()
        have = [d[c] for d in decisions]
        for w, h in zip(want, have):
            if isinstance(w, float) and w != w:
                assert h is None or h == "", (c, w, h)  # limits.csv writes both as an empty cell
            elif isinstance(w, (float, int)) and not isinstance(w, bool):
                assert float(h) == w, (c, w, h)  # bit for bit, no tolerance
            else:
                assert str(h if h is not None else "") == str(w), (c, w, h)


# ------------------------------------------------------------------------------ answers


def test_a_batch_over_http_equals_scf_score_on_the_same_batch(server, tmp_path):
    batch = pd.read_csv(server["data"] / "batch.csv", dtype=str, keep_default_na=False)
    batch = pd.concat([batch, pd.DataFrame({"firm_id": ["91000000000000000X"], "requested_amount": ["5000"]})])
    body = {"firms": [{"firm_id": f, "requested_amount": float(a) if a else None}
                      for f, a in zip(batch["firm_id"], batch["requested_amount"])]}
    status, _, raw = call(server, "POST", "/v1/decisions", body, key="plat")
    assert status == 200, raw
    got = json.loads(raw)
    limits = scf_score(server, batch, tmp_path)
    assert got["as_of"] == limits["as_of"].iloc[0]
    assert_same_answers(got["decisions"], limits)
    unknown = got["decisions"][-1]
    assert unknown["decision"] == "decline" and unknown["pd"] is None and "unknown firm" in unknown["reasons"]
    scored = [d for d in got["decisions"] if d["pd"] is not None]
    assert len(scored) > len(got["decisions"]) // 2


def test_one_firm_equals_scf_score_of_a_batch_of_one_and_repeats_identically(server, tmp_path):
    firm = pd.read_csv(server["data"] / "batch.csv", dtype=str)["firm_id"].iloc[3]
    body = {"firms": [{"firm_id": firm, "requested_amount": 1500000}]}
    first = call(server, "POST", "/v1/decisions", body, key="ana")
    again = call(server, "POST", "/v1/decisions", body, key="plat")  # from the answer cache
    assert first[0] == again[0] == 200 and first[2] == again[2]
    limits = scf_score(server, pd.DataFrame({"firm_id": [firm], "requested_amount": ["1500000"]}), tmp_path)
    assert_same_answers(json.loads(first[2])["decisions"], limits)


def test_never_seen_requests_answer_as_the_whole_core_on_a_batch_of_one(server):
    """Requests the cache has never seen (new firms, new amounts: below, at and above the
    firm's limit, none, zero), unknown firms, cores and firms without consent, over HTTP:
    each answer equals the whole decision core run on the same request as a batch, with
    no precomputed table and no shared context (what `scf score` runs on a batch.csv of
    those rows)."""
    import random

    from scf_engine.ingest.requests import requests_frame
    from scf_engine.pipelines.score import decide_loaded
    from scf_engine.serve.state import plain_records

    loaded = server["service"].state.loaded
    table = pd.read_csv(server["data"] / "firms.csv", dtype=str)
    firms = table["firm_id"].tolist()
    consented = set(pd.read_csv(server["data"] / "consents.csv", dtype=str)["firm_id"])
    defaulted = set(pd.read_csv(server["data"] / "defaults.csv", dtype=str)["firm_id"])
    plain = table[(table["is_core"].str.lower() != "true") & (pd.to_datetime(table["founded_on"]) < loaded.data.as_of)]
    no_consent = [f for f in plain["firm_id"] if f not in consented and f not in defaulted][:2]
    rng = random.Random(8)
    asks = []
    for f in rng.sample(firms, 40) + no_consent + ["91000000000000000X"]:
        status, _, raw = call(server, "POST", "/v1/decisions", {"firms": [{"firm_id": f}]}, key="plat")
        assert status == 200, raw
        limit = json.loads(raw)["decisions"][0]["limit_cny"]
        asks += [[(f, amount)] for amount in {0.0, round(limit * 0.5, 2), limit, limit * 2 + 1, rng.randrange(1, 90) * 1e5}]
    asks += [[(f, rng.choice([None, 3e5, 5e6])) for f in rng.sample(firms, 4)] for _ in range(5)]
    seen = set()
    for firms_asked in asks:
        body = {"firms": [{"firm_id": f, "requested_amount": a} for f, a in firms_asked]}
        status, _, raw = call(server, "POST", "/v1/decisions", body, key="plat")
        assert status == 200, raw
        req = requests_frame(pd.DataFrame({"firm_id": [f for f, _ in firms_asked],
                                           "requested_amount": ["" if a is None else repr(a) for _, a in firms_asked]}))
        whole = decide_loaded(loaded, req)
        assert json.loads(raw)["decisions"] == plain_records(whole.limits)
        lim = whole.limits
        seen |= set(lim["decision"]) | {c for caps in lim["binding_caps"] for c in caps.split(";") if c}
        seen |= {w for w in ("unknown firm", "authorisation", "core enterprise") if lim["reasons"].str.contains(w).any()}
    assert {"approve", "review", "decline", "requested", "unknown firm", "authorisation"} <= seen, seen


def test_reasons_and_memo_by_role(server):
    lim = pd.read_csv(server["data"] / "batch.csv", dtype=str)
    firm = lim["firm_id"].iloc[0]
    status, _, raw = call(server, "GET", f"/v1/firms/{firm}/reasons", key="plat")
    view = json.loads(raw)
    assert status == 200 and view["firm_id"] == firm
    if view["scored"]:
        assert len(view["reasons"]) >= 3 and {"label_en", "direction", "text"} <= set(view["reasons"][0])
    assert call(server, "GET", f"/v1/firms/{firm}/memo", key="plat")[0] == 403
    status, headers, raw = call(server, "GET", f"/v1/firms/{firm}/memo", key="ana")
    if view["scored"]:
        assert status == 200 and headers["content-type"].startswith("text/html") and firm in raw.decode()
    status, _, raw = call(server, "GET", "/v1/firms/91000000000000000X/memo", key="ana")
    assert status == 404 and "unknown firm" in json.loads(raw)["detail"]


# ------------------------------------------------------------------------------- access


@pytest.mark.parametrize("key", [None, "not-a-key", hashlib.sha256(b"k-platform-0001").hexdigest()])
def test_no_valid_key_is_401(server, key):
    status, headers, raw = call(server, "POST", "/v1/decisions", {"firms": [{"firm_id": "x"}]}, key=key)
    assert status == 401 and "X-API-Key" in json.loads(raw)["detail"]


def test_a_role_without_the_permission_is_403(server):
    assert call(server, "POST", "/v1/reload", key="plat")[0] == 403
    assert call(server, "POST", "/v1/reload", key="ana")[0] == 403


# ---------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("body, field", [
    ({"firms": [{"requested_amount": 10}]}, ["body", "firms", 0, "firm_id"]),
    ({"firms": [{"firm_id": "x", "requested_amount": -5}]}, ["body", "firms", 0, "requested_amount"]),
    ({"firms": [{"firm_id": "x", "requested_amount": "lots"}]}, ["body", "firms", 0, "requested_amount"]),
    ({"firms": [{"firm_id": 12345}]}, ["body", "firms", 0, "firm_id"]),
    ({"firms": [{"firm_id": "x", "amount": 1}]}, ["body", "firms", 0, "amount"]),
    ({"firms": []}, ["body", "firms"]),
    ({"companies": []}, ["body", "firms"]),
    ({"firms": [{"firm_id": f"F{i}"} for i in range(501)]}, ["body", "firms"]),
])
def test_bad_bodies_are_422_naming_the_field(server, body, field):
    status, _, raw = call(server, "POST", "/v1/decisions", body, key="plat")
    assert status == 422, raw
    assert field in [d["loc"] for d in json.loads(raw)["detail"]]


def test_not_json_and_too_large_bodies_are_refused_and_the_service_lives_on(server):
    assert call(server, "POST", "/v1/decisions", raw=b"{not json", key="plat")[0] == 422
    big = json.dumps({"firms": [{"firm_id": "9" * 60}] * 5000}).encode()
    assert len(big) > 262144
    status, _, raw = call(server, "POST", "/v1/decisions", raw=big, key="plat")
    assert status == 413 and "over" in json.loads(raw)["detail"]
    assert call(server, "GET", "/healthz")[0] == 200
    status, _, raw = call(server, "GET", "/readyz")
    assert status == 200 and json.loads(raw)["ready"] is True
    assert call(server, "GET", "/openapi.json")[0] == 200


# -------------------------------------------------------------------------------- audit


def recorded(log) -> list[dict]:
    return [r for line in log.read_text().splitlines() for r in json.loads(line)["details"].get("requests", [])]


def test_every_request_is_in_a_valid_chain_under_concurrency(server):
    ids = pd.read_csv(server["data"] / "batch.csv", dtype=str)["firm_id"].tolist()[:20]
    before = len(recorded(server["log"]))
    jobs = [(f, key) for f in ids for key in ("plat", "ana", "nobody")] * 2

    def one(job):
        firm, key = job
        return call(server, "POST", "/v1/decisions", {"firms": [{"firm_id": firm, "requested_amount": 250000}]}, key=key)[0]

    with ThreadPoolExecutor(12) as pool:
        statuses = list(pool.map(one, jobs))
    assert statuses.count(200) == 80 and statuses.count(401) == 40
    records = recorded(server["log"])
    assert len(records) - before == len(jobs)  # answered means recorded: nothing lost
    new = records[before:]
    assert sorted(r["status"] for r in new) == sorted(statuses)
    assert {r["key"] for r in new} == {"plat", "ana", None}
    assert all(r["firms"] and r["model_versions"] for r in new if r["status"] == 200)
    ok, problems = audit.verify(server["log"])
    assert ok, problems
    assert invoke("audit", "verify", server["log"]).exit_code == 0


@pytest.mark.parametrize("content, message", [
    ("name,role\nbank,platform\n", "missing column(s) key_sha256"),
    ("name,role,key_sha256\nbank,admin,{h}\n", "line 2: role 'admin'"),
    ("name,role,key_sha256\nbank,platform,k-platform-0001\n", "line 2: key_sha256 is not 64 hex digits"),
    ("name,role,key_sha256\nbank,platform,{h}\nbank,analyst,{h2}\n", "line 3: name 'bank' repeated"),
    ("name,role,key_sha256\n", "no keys"),
])
def test_a_bad_keys_file_is_one_line_and_no_service(world, tmp_path, content, message):
    h, h2 = hashlib.sha256(b"a").hexdigest(), hashlib.sha256(b"b").hexdigest()
    (tmp_path / "keys.csv").write_text(content.format(h=h, h2=h2))
    r = invoke("serve", world["data"], "--keys", tmp_path / "keys.csv", "--port", free_port(), "--tracking-uri", world["uri"])
    assert r.exit_code == 2 and message in r.output and "Traceback" not in r.output


# ------------------------------------------------------------------------------- reload


def test_a_promotion_is_picked_up_and_answers_follow_the_new_champion(server, tmp_path):
    home, uri = server["home"], server["uri"]
    r = invoke("train", server["data"], "--tracking-uri", uri, "--out", home / "train2")
    assert r.exit_code == 0, r.output
    firm = pd.read_csv(server["data"] / "batch.csv", dtype=str)["firm_id"].iloc[5]
    body = {"firms": [{"firm_id": firm}]}
    assert call(server, "POST", "/v1/decisions", body, key="plat")[0] == 200  # cached under version 1
    r = invoke("compare", "--tracking-uri", uri, "--promote", "all", "--out", home / "compare2")
    assert r.exit_code == 0, r.output
    deadline = time.monotonic() + 60
    while json.loads(call(server, "GET", "/readyz")[2])["model_versions"] != {"propagation": 2, "decoupled": 2, "hybrid": 2}:
        assert time.monotonic() < deadline, "the service did not pick up the promotion"
        time.sleep(0.2)
    status, _, raw = call(server, "POST", "/v1/reload", key="op")
    assert status == 200 and json.loads(raw)["model_versions"]["hybrid"] == 2
    got = json.loads(call(server, "POST", "/v1/decisions", body, key="plat")[2])
    assert_same_answers(got["decisions"], scf_score(server, pd.DataFrame({"firm_id": [firm]}), tmp_path))
    assert recorded(server["log"])[-1]["model_versions"] == {"propagation": 2, "decoupled": 2, "hybrid": 2}


def test_the_service_writes_the_rows_it_decides_without_to_its_quarantine_report(world, tmp_path):
    """The contract asks every run for a quarantine file and the read/accepted/quarantined
    counts; ``scf serve`` set bad rows aside and wrote them nowhere (it has no output
    file), so a service answered from a dataset with rows missing and nobody could see
    which. It now writes quarantine.csv to its --out folder at startup (removed when a
    later start on clean data has nothing to report)."""
    from scf_engine.serve import build

    dirty = tmp_path / "dirty"
    n = with_bad_flows(world["data"], dirty, duplicate=False)
    out = tmp_path / "serve"
    for data, expect in ((dirty, [("flows.csv", n + 2, "amount")]), (world["data"], None)):
        app, service, writer = build(data, world["keys"], consents=world["data"] / "consents.csv",
                                     tracking_uri=world["uri"], audit_log=tmp_path / "audit.jsonl", out=out)
        try:
            if expect is None:
                assert not (out / "quarantine.csv").exists()
            else:
                q = pd.read_csv(out / "quarantine.csv", dtype=str)
                assert list(zip(q["file"], q["line"].astype(int), q["column"])) == expect
                assert service.state.loaded.dataset.report.n_quarantined == 1
        finally:
            service.close()
            writer.close()


def test_a_whitelist_makes_the_service_answer_as_the_whitelisted_batch_would(world, tmp_path):
    """scf score --whitelist declines (by policy) a firm off the programme's list, but the
    service took no list, so over HTTP it approved a firm the batch declined. With
    ``whitelist`` every route answers as the batch: the precomputed fast path, the whole
    core and the one-firm view; a firm on the list gets the answer it got without one."""
    from scf_engine.serve import build

    def answers(service, firms, route):
        if route == "quick":
            return json.loads(service.quick([(f, None) for f in firms])[1])
        if route == "core":
            return json.loads(service.decisions([(f, None) for f in firms])[1])
        return [service.firm(f)[1].limits.iloc[0].to_dict() for f in firms]

    built = []
    try:
        plain = build(world["data"], world["keys"], consents=world["data"] / "consents.csv", tracking_uri=world["uri"],
                      audit_log=tmp_path / "audit.jsonl")
        built.append(plain)
        ids = list(plain[1].state.precomputed.index)
        lent = [a["firm_id"] for a in answers(plain[1], ids, "quick") if a["decision"] != "decline"]
        on, off = lent[0], lent[1]
        pd.DataFrame({"firm_id": [on], "list": ["园区白名单"]}).to_csv(tmp_path / "whitelist.csv", index=False)
        listed = build(world["data"], world["keys"], consents=world["data"] / "consents.csv", tracking_uri=world["uri"],
                       audit_log=tmp_path / "audit.jsonl", whitelist=tmp_path / "whitelist.csv")
        built.append(listed)
        for route in ("quick", "core", "firm"):
            got = {a["firm_id"]: a for a in answers(listed[1], [on, off], route)}
            was = {a["firm_id"]: a for a in answers(plain[1], [on], route)}
            assert got[off]["decision"] == "decline" and "whitelist" in str(got[off]["reasons"]), route
            assert got[on]["decision"] == was[on]["decision"] and got[on]["limit_cny"] == was[on]["limit_cny"], route
    finally:
        for _, service, writer in built:
            service.close()
            writer.close()


def test_the_service_records_which_whitelist_and_list_answered_each_request(world, tmp_path):
    """scf score and scf explain record the whitelist's sha256 in their audit entries,
    the service did not: compliance could not tell which list (re-read at every reload)
    answered a request. Each request's record now carries the whitelist's sha256 and the
    programme picked with ``--list``, and the off-list reason names it; a list the file
    lacks is one line before anything is loaded; the list's bad rows go to the service's
    quarantine report."""
    from scf_engine.errors import RequestError

    ids = list(pd.read_csv(world["data"] / "batch.csv", dtype=str)["firm_id"].head(3))
    rows = [(ids[0], "chain-A"), (ids[1], "park-B"), ("", "chain-A")]
    pd.DataFrame(rows, columns=["firm_id", "list"]).to_csv(tmp_path / "whitelist.csv", index=False)
    sha = hashlib.sha256((tmp_path / "whitelist.csv").read_bytes()).hexdigest()
    log, common = tmp_path / "audit.jsonl", dict(consents=world["data"] / "consents.csv", tracking_uri=world["uri"])
    with pytest.raises(RequestError, match="its lists: chain-A, park-B"):
        build(world["data"], world["keys"], **common, audit_log=log, whitelist=tmp_path / "whitelist.csv",
              whitelist_list="nope")
    built = build(world["data"], world["keys"], **common, audit_log=log, actor="svc", out=tmp_path / "out",
                  whitelist=tmp_path / "whitelist.csv", whitelist_list="chain-A")
    with running(built) as url:
        srv = {"url": url}
        status, _, raw = call(srv, "POST", "/v1/decisions", {"firms": [{"firm_id": ids[1]}]}, key="plat")
        assert status == 200, raw
        answer = json.loads(raw)["decisions"][0]
        assert answer["decision"] == "decline" and answer["reasons"].endswith("whitelist (名单制): list 'chain-A'")
        assert call(srv, "GET", f"/v1/firms/{ids[0]}/reasons", key="ana")[0] == 200
    served = [r for e in map(json.loads, log.read_text().splitlines()) if e["action"] == "serve"
              for r in e["details"]["requests"]]
    assert [r["key"] for r in served] == ["plat", "ana"]
    assert all(r["whitelist"] == {"sha256": sha, "list": "chain-A"} for r in served)
    q = pd.read_csv(tmp_path / "out" / "quarantine.csv", dtype=str, keep_default_na=False)
    assert list(q.loc[q["file"] == "whitelist.csv", "reason"]) == ["firm_id is empty"]
