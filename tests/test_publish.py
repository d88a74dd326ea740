"""scf_engine.publish on its own (no models, so every case is fast): an output is
staged in a folder of its own and published by one flip of a link, so a kill -9 at any
of the helper's checkpoints leaves either the previous audited output or the new one,
never a mix; old outputs are kept as the policy says; a folder of the layout before
links is adopted without a byte changing; ``verify`` is right about each."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from scf_engine import audit, publish
from scf_engine.errors import OutputError
from scf_engine.publish import OUTPUTS, Publication, verify

REPO = str(Path(__file__).resolve().parents[1])

PUBLISH = """
import sys
from pathlib import Path
from scf_engine import audit
from scf_engine.publish import Publication
folder, log, tag, kind = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4]
with Publication(folder, kind, names=("limits.csv", "memos"), keep=3) as pub:
    pub.write("limits.csv", f"firm_id,limit_cny\\n91320281107684262D,{tag}\\n".encode())
    pub.path("memos").mkdir()
    for i in range(3):
        (pub.path("memos") / f"memo_{i}.md").write_text(f"memo {i} of {tag}")
    pub.add_folder("memos")
    pub.publish(log, lambda hashes: audit.append(log, "tester", kind, {"output": hashes, "tag": tag, **(
        {"leftover_outputs": pub.leftovers} if pub.leftovers else {})}))
"""


def publish_one(folder: Path, log: Path, tag: str, kind: str = "score", kill_at: str | None = None) -> int:
    env = {**os.environ, "PYTHONPATH": REPO}
    env.pop("SCF_TEST_KILL_AT", None)
    if kill_at:
        env["SCF_TEST_KILL_AT"] = kill_at
    p = subprocess.run([sys.executable, "-c", PUBLISH, str(folder), str(log), tag, kind], env=env,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode in (0, -signal.SIGKILL), p.stdout + p.stderr
    return p.returncode


def view(folder: Path) -> dict:
    """What a reader finds under the contract paths (through links; the engine's hidden
    folders left out): ``{relative path: text}``."""
    out = {}
    for root, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for f in files:
            p = Path(root) / f
            if not f.startswith(".") and p.is_file():
                out[str(p.relative_to(folder))] = p.read_text()
    return out


def tag_of(folder: Path) -> str:
    """The one output the folder shows: limits, memos and audit entry must agree."""
    limits = (folder / "limits.csv").read_text().splitlines()[1].split(",")[1]
    memos = {p.read_text().rsplit(" ", 1)[1] for p in (folder / "memos").iterdir()}
    entry = json.loads((folder / "audit_entry.json").read_text())["details"]["tag"]
    assert memos == {limits} and entry == limits, (limits, memos, entry)
    return limits


def test_a_second_output_replaces_the_first_in_one_flip(tmp_path):
    folder, log = tmp_path / "out", tmp_path / "audit.jsonl"
    publish_one(folder, log, "A")
    first = view(folder)
    publish_one(folder, log, "B")
    assert tag_of(folder) == "B" and view(folder) != first
    for name in ("limits.csv", "memos", "audit_entry.json"):
        assert os.readlink(folder / name) == f"{OUTPUTS}/score/current/{name}"  # stable: never rewritten
    assert verify(folder, log) == [] and audit.verify(log) == (True, [])
    assert len(publish._outputs(folder / OUTPUTS / "score")) == 2  # the previous one kept


@pytest.mark.parametrize("stage", ["appended", "linked", "published"])
def test_kill_9_at_each_checkpoint_of_the_publish(tmp_path, stage):
    """Killed after the entry was appended, after every link was made, or just after the
    flip: the folder shows the previous output (verify passes on it) or the new one with
    its entry, never a mix; the next publish settles what was left and notes it."""
    folder, log = tmp_path / "out", tmp_path / "audit.jsonl"
    publish_one(folder, log, "A")
    before = view(folder)
    assert publish_one(folder, log, "B", kill_at=stage) == -signal.SIGKILL
    assert audit.verify(log) == (True, [])
    assert tag_of(folder) == ("B" if stage == "published" else "A")
    assert (view(folder) == before) == (stage != "published")
    assert verify(folder, log) == []
    left = publish.unpublished(folder)
    assert len(left) == (0 if stage == "published" else 1)
    orphan = json.loads(log.read_text().splitlines()[-1])
    publish_one(folder, log, "C")
    assert tag_of(folder) == "C" and verify(folder, log) == [] and publish.unpublished(folder) == []
    notes = json.loads((folder / "audit_entry.json").read_text())["details"].get("leftover_outputs", [])
    if stage == "published":
        assert notes == []  # it was published: its owner mark goes, the output stays as an old one
    else:
        assert notes[0]["folder"] == str(left[0].relative_to(folder))
        assert notes[0]["files"]["limits.csv"] == orphan["details"]["output"]["limits.csv"]  # the entry never published


def test_old_outputs_are_pruned_to_the_policy(tmp_path):
    folder, log = tmp_path / "out", tmp_path / "audit.jsonl"
    for tag in "ABCDE":
        publish_one(folder, log, tag)
    state = folder / OUTPUTS / "score"
    kept = publish._outputs(state)
    assert len(kept) == 3 and os.readlink(state / "current") == kept[-1].name  # keep_published: 3, newest last
    assert tag_of(folder) == "E" and verify(folder, log) == []


def legacy_folder(folder: Path, log: Path) -> dict:
    """An output as the version before links wrote it: real files, an audit entry."""
    (folder / "memos").mkdir(parents=True)
    (folder / "limits.csv").write_text("firm_id,limit_cny\n91320281107684262D,OLD\n")
    memos = {}
    for i in range(2):
        (folder / "memos" / f"memo_{i}.md").write_text(f"memo {i} of OLD")
        memos[f"memo_{i}.md"] = hashlib.sha256(f"memo {i} of OLD".encode()).hexdigest()
    out = {"limits.csv": hashlib.sha256((folder / "limits.csv").read_bytes()).hexdigest(), "memos": memos}
    entry = audit.append(log, "tester", "score", {"output": out, "tag": "OLD"})
    (folder / "audit_entry.json").write_text(json.dumps(entry))
    (folder / "quarantine.csv").write_text("not ours\n")
    return view(folder)


def test_a_folder_of_the_layout_before_links_is_adopted_byte_for_byte(tmp_path):
    folder, log = tmp_path / "out", tmp_path / "audit.jsonl"
    before = legacy_folder(folder, log)
    assert verify(folder, log) == []
    publish.adopt(folder, "score", {"limits.csv", "memos", "audit_entry.json"}, "audit_entry.json", lambda *a: None)
    assert view(folder) == before and (folder / "limits.csv").is_symlink() and (folder / "memos").is_symlink()
    assert not (folder / "quarantine.csv").is_symlink()  # not one of the command's names: left alone
    assert verify(folder, log) == []
    publish_one(folder, log, "NEW")
    assert tag_of(folder) == "NEW" and verify(folder, log) == []


def test_a_copy_that_followed_the_links_verifies_and_takes_the_next_output(tmp_path):
    folder, log = tmp_path / "out", tmp_path / "audit.jsonl"
    publish_one(folder, log, "A")
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)  # symlinks=False: every link became a file or a folder
    assert not (copy / "limits.csv").is_symlink() and verify(copy, log) == []
    publish_one(copy, log, "B")
    assert tag_of(copy) == "B" and verify(copy, log) == [] and tag_of(folder) == "A"


def test_two_commands_keep_their_own_outputs_in_one_folder(tmp_path):
    folder, log = tmp_path / "out", tmp_path / "audit.jsonl"
    publish_one(folder, log, "A", kind="score")
    (folder / "limits.csv").rename(folder / "kept.csv")  # monitor would publish the same names: keep them apart
    with pytest.raises(OutputError, match="not scf monitor's link"):
        with Publication(folder, "monitor", names=("portfolio.csv",), keep=2, entry_link="monitor_audit_entry.json") as pub:
            pub.write("memos", b"a file where score's memos link is")
            pub.publish(log, lambda h: audit.append(log, "t", "monitor", {"output": h}))
    assert audit.verify(log) == (True, []) and json.loads(log.read_text().splitlines()[-1])["action"] == "score"
    with Publication(folder, "monitor", names=("portfolio.csv",), keep=2, entry_link="monitor_audit_entry.json") as pub:
        pub.write("portfolio.csv", b"firm_id\n1\n")
        pub.publish(log, lambda h: audit.append(log, "t", "monitor", {"output": h}))
    assert (folder / "portfolio.csv").read_bytes() == b"firm_id\n1\n"
    assert json.loads((folder / "monitor_audit_entry.json").read_text())["action"] == "monitor"
    problems = verify(folder, log)
    assert problems and all("limits.csv" in p for p in problems)  # only the renamed link is wrong


def test_a_failure_before_the_flip_leaves_nothing_and_takes_the_entry_back(tmp_path):
    folder, log = tmp_path / "out", tmp_path / "audit.jsonl"
    folder.mkdir()
    audit.append(log, "t", "train", {})
    before = log.read_bytes()

    def refuse(entry, path):
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError), Publication(folder, "score", names=("limits.csv",), keep=2) as pub:
        pub.write("limits.csv", b"x\n")
        pub.publish(log, lambda h: audit.append(log, "t", "score", {"output": h}), refuse)
    assert list(folder.iterdir()) == [] and log.read_bytes() == before


def test_the_keep_policy_is_checked():
    from scf_engine import policies
    from scf_engine.errors import PolicyError

    assert policies.load("output")["keep_published"] >= 1
    with pytest.raises(PolicyError, match="keep_published"):
        policies.validate("output", {"version": 1, "keep_published": 0})
