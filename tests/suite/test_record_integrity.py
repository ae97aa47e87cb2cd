"""Run records that cannot lie: every finished run is sealed (``record.sha256``, train/seal.py); a damaged or edited
record is named in one line, left out of the means and claims, listed under the table, retrained only when asked
(``--retrain-damaged`` / ``RETRAIN_DAMAGED=1``), and never crashes the render; ``verify`` checks a results folder.

The records are the golden fixture's (tests/suite/test_report.py, written through ``RunDir``, as the engines write
them) and, for the seal of a real run and for retraining, tiny synthetic runs trained here."""
import hashlib
import io
import json
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from comhe.suite import cli, experiments, figures, runner, verify
from comhe.train import cli as train_cli
from comhe.train import config, engine, seal
from comhe.train.records import RunDir
from run_helpers import REPO, small_cfg
from test_report import FIXTURE, write_records

DAMAGED_CELL = ("MHE", "A", 1)   # final test errors 28.0, 28.2, 28.4 over seeds 0, 1, 2: seed 1 is damaged below


def _flip_bit(data: bytes, at: int, bit: int = 0) -> bytes:
    return data[:at] + bytes([data[at] ^ (1 << bit)]) + data[at + 1:]


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert text.count(old) == 1, (old, text)
    path.write_text(text.replace(old, new))


def _first_digit_of(path: Path, key: str) -> int:
    data = path.read_bytes()
    return data.index(f'"{key}": '.encode()) + len(key) + 4


# name -> (how the run folder is damaged, the file the damage line must name)
DAMAGES = {
    "edited 28.2 -> 38.2": (lambda d: _edit(d / "final.json", '"final_test_error": 28.2', '"final_test_error": 38.2'),
                            "final.json"),
    "one bit flipped": (lambda d: (d / "final.json").write_bytes(_flip_bit((d / "final.json").read_bytes(),
                                                                           _first_digit_of(d / "final.json",
                                                                                           "final_test_error"))),
                        "final.json"),
    "truncated": (lambda d: (d / "final.json").write_bytes((d / "final.json").read_bytes()[:40]), "final.json"),
    "zeroed": (lambda d: (d / "final.json").write_bytes(b"\0" * len((d / "final.json").read_bytes())), "final.json"),
    "emptied": (lambda d: (d / "final.json").write_bytes(b""), "final.json"),
    "not UTF-8": (lambda d: (d / "final.json").write_bytes((d / "final.json").read_bytes().replace(b"finished",
                                                                                                    b"fin\xffshed")),
                  "final.json"),
    "not JSON": (lambda d: (d / "final.json").write_text("final_test_error = 28.2\n"), "final.json"),
    "a list, not an object": (lambda d: (d / "final.json").write_text("[28.2]"), "final.json"),
    "metrics edited": (lambda d: _edit(d / "metrics.csv", "\n10,28.200000000000003,", "\n10,18.2,"), "metrics.csv"),
    "metrics deleted": (lambda d: (d / "metrics.csv").unlink(), "metrics.csv"),
    "config edited": (lambda d: _edit(d / "config.yaml", "seed: 1\n", "seed: 7\n"), "config.yaml"),
    "meta edited": (lambda d: _edit(d / "meta.json", "abc1234", "abc1235"), "meta.json"),
    "manifest deleted": (lambda d: (d / seal.MANIFEST).unlink(), seal.MANIFEST),
    "manifest bit flipped": (lambda d: (d / seal.MANIFEST).write_bytes(_flip_bit((d / seal.MANIFEST).read_bytes(), 3,
                                                                                  6)), seal.MANIFEST),
    "a checksum in the manifest replaced": (lambda d: (d / seal.MANIFEST).write_text(re.sub(
        r"^[0-9a-f]{64}(?=  final.json)", "0" * 64, (d / seal.MANIFEST).read_text(), flags=re.M)), "final.json"),
}


@pytest.fixture(scope="module")
def sealed_fixture(tmp_path_factory):
    """The golden fixture's records, sealed as the engines seal them; copied by each test."""
    root = tmp_path_factory.mktemp("sealed") / "results"
    exp, cells = write_records(root / "runs")
    return root, {(c.row, c.column, c.seed): c.name for c in cells}


def _copy(sealed_fixture, tmp_path, name="results"):
    root, names = sealed_fixture
    shutil.copytree(root, tmp_path / name)
    return tmp_path / name, names


def _render(results: Path, capsys, *extra) -> tuple:
    """``python -m comhe.run <fixture> --collect-only`` on ``results``: (exit code, stdout, the table's Markdown)."""
    code = cli.main([str(FIXTURE), "--collect-only", "--results", str(results), *(extra or ["--no-figures"])])
    out = capsys.readouterr().out
    return code, out, (results / "fixture.md").read_text()


def _without_record_lines(md: str) -> str:
    """The table minus its 'Runs:' footer, the damaged-records section (what differs between a damaged run and a
    run that was never there) and the regenerate command (it names the --results folder)."""
    md = re.sub(r"\n\nDamaged run records[^\n]*\n(- [^\n]*\n)*", "\n", md)
    return "\n".join(line for line in md.splitlines() if not line.startswith(("Runs: ", "Generated from")))


def test_a_finished_run_is_sealed_over_every_record_it_is_read_from(tmp_path, capsys):
    """A real (tiny) training run: record.sha256 lists config, metrics, meta and final with their SHA-256, in
    sha256sum's format; it is checked intact."""
    run = RunDir(tmp_path / "run")
    engine.train(small_cfg(tmp_path), run.path)
    lines = (run.path / seal.MANIFEST).read_text().splitlines()
    listed = dict(reversed(line.split("  ")) for line in lines)
    assert sorted(listed) == sorted(seal.SEALED)
    for name, digest in listed.items():
        assert hashlib.sha256((run.path / name).read_bytes()).hexdigest() == digest, name
    assert run.verify() == seal.Verdict("sealed")
    if shutil.which("sha256sum"):
        assert subprocess.run(["sha256sum", "--quiet", "-c", seal.MANIFEST], cwd=run.path).returncode == 0

    # python -m comhe.train on it: finished and intact, then damaged: one error line, not "already finished"
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(config.dump(small_cfg(tmp_path)))
    assert train_cli.main([str(cfg_path), "--run-dir", str(run.path)]) == 0
    _edit(run.final_path, '"status": "finished"', '"status": "finished" ')
    assert train_cli.main([str(cfg_path), "--run-dir", str(run.path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: damaged record: {run.path}/final.json: checksum differs")


def test_a_kill_between_the_seal_and_final_json_leaves_an_unfinished_run(tmp_path, monkeypatch):
    """The manifest is written first: without final.json the run is unfinished (resumed), never 'finished and
    unverified'."""
    from comhe.train import records
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    run.write_config({"seed": 0})
    real = records.atomic_write

    def killed_at_final(path, data):
        if Path(path).name == "final.json":
            raise KeyboardInterrupt
        real(path, data)

    monkeypatch.setattr(records, "atomic_write", killed_at_final)
    with pytest.raises(KeyboardInterrupt):
        run.write_final({"status": "finished", "final_test_error": 10.0})
    assert (run.path / seal.MANIFEST).exists() and run.status() == "partial" and run.verify().state == "unfinished"


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_damaged_record_is_named_left_out_and_the_table_still_written(sealed_fixture, tmp_path, capsys, damage):
    results, names = _copy(sealed_fixture, tmp_path)
    run_dir = results / "runs" / names[DAMAGED_CELL]
    how, file = DAMAGES[damage]
    how(run_dir)
    code, out, md = _render(results, capsys)
    assert code == 1                                                  # written, but not complete: say so
    lines = [line for line in out.splitlines() if line.startswith("damaged record:")]
    assert len(lines) == 1 and lines[0].startswith(f"damaged record: {run_dir}/{file}: "), out
    assert f"- `{names[DAMAGED_CELL]}` (MHE / A, seed 1): {file}: " in md
    assert "Runs: 11 done, 4 diverged, 1 damaged, 1 partial, 1 todo." in md
    for ext in ("csv", "tex"):
        assert (results / f"fixture.{ext}").stat().st_size > 0
    assert "1 run(s) left out: damaged run records" in (results / "fixture.tex").read_text()
    table = pd.read_csv(results / "fixture.csv")
    row = table[table["run"] == names[DAMAGED_CELL]].iloc[0]
    assert row["status"] == "damaged" and row["record_problem"].startswith(f"{file}: ") and pd.isna(
        row["final_test_error"])

    # The same table as with the run never there: no mean, std, Δ or claim moved by the damaged record.
    dropped, _ = _copy(sealed_fixture, tmp_path, "dropped")
    shutil.rmtree(dropped / "runs" / names[DAMAGED_CELL])
    assert _render(dropped, capsys)[0] == 0
    reference = (dropped / "fixture.md").read_text()
    assert "| 28.20 ± 0.28 (2) |" in reference                       # seeds 0 and 2: mean 28.2, n 2
    assert _without_record_lines(md) == _without_record_lines(reference)

    code = verify.main(["--results", str(results)])
    out = capsys.readouterr().out
    assert code == 1 and f"damaged: {run_dir}/{file}: " in out and "1 damaged" in out and "15 sealed and intact" in out


def test_damaged_curves_are_left_out_of_the_figures(sealed_fixture, tmp_path, capsys):
    results, names = _copy(sealed_fixture, tmp_path)
    DAMAGES["metrics edited"][0](results / "runs" / names[DAMAGED_CELL])
    code, out, _ = _render(results, capsys, "--figures", str(tmp_path / "figures"))
    assert code == 1 and (tmp_path / "figures" / "fixture.png").stat().st_size > 5000
    exp = experiments.load(FIXTURE)
    curves = figures._curves(experiments.plan(exp), results / "runs", "A")
    assert set(curves[curves["method"] == "MHE"]["seed"]) == {0, 2}


def test_an_intact_folder_verifies_and_renders_as_before(sealed_fixture, tmp_path, capsys):
    results, _ = _copy(sealed_fixture, tmp_path)
    assert verify.main(["--results", str(results)]) == 0
    out = capsys.readouterr().out
    assert "17 runs: 16 sealed and intact, 0 unverified" in out and "damaged:" not in out
    code, out, md = _render(results, capsys)
    assert code == 0 and "damaged" not in out and "Damaged" not in md and "Unverified" not in md
    assert verify.main(["--results", str(tmp_path / "nowhere")]) == 2


def _as_written_before_seals(run_dir: Path) -> None:
    """What the code before seals left: final.json without the seal key, no manifest."""
    final = json.loads((run_dir / "final.json").read_text())
    del final[seal.SEAL_KEY]
    (run_dir / "final.json").write_text(json.dumps(final, indent=2))
    (run_dir / seal.MANIFEST).unlink()


def test_records_older_than_seals_are_counted_flagged_and_sealed_on_request(sealed_fixture, tmp_path, capsys):
    """Decision: an older record is a result (dropping hours of GPU work after an upgrade would be worse), counted
    but flagged 'unverified'; a truncated or garbled one is still damaged; ``verify --seal`` adopts the rest."""
    results, names = _copy(sealed_fixture, tmp_path)
    for name in names.values():
        if (results / "runs" / name / "final.json").exists():
            _as_written_before_seals(results / "runs" / name)
    sealed_md = _render(_copy(sealed_fixture, tmp_path, "sealed")[0], capsys)[2]
    code, out, md = _render(results, capsys)
    assert code == 0 and "Unverified run records: 16 run(s)" in md
    assert md.replace(md[md.index("\nUnverified"):md.index("\nReferences:")], "").replace(
        f"--results {results}`", "--results <dir>`") == sealed_md.replace(f"--results {tmp_path / 'sealed'}`",
                                                                          "--results <dir>`")  # footers name it
    assert verify.main(["--results", str(results)]) == 0
    assert "16 unverified" in capsys.readouterr().out

    broken = results / "runs" / names[("Baseline", "A", 0)]
    (broken / "final.json").write_bytes((broken / "final.json").read_bytes()[:30])        # truncated, no seal
    assert verify.main(["--results", str(results)]) == 1
    assert f"damaged: {broken}/final.json: not JSON" in capsys.readouterr().out

    assert verify.main(["--results", str(results), "--seal"]) == 1                         # the damaged one stays
    out = capsys.readouterr().out
    assert out.count("sealed: ") == 15 and "15 sealed and intact, 0 unverified" in out
    edited = results / "runs" / names[DAMAGED_CELL]
    _edit(edited / "final.json", '"final_test_error": 28.2', '"final_test_error": 38.2')
    assert RunDir(edited).verify().damaged                                                 # sealed now: caught


TINY = """
name: tiny
title: Tiny
seeds: 2
base: {dataset: synthetic, data: {num_classes: 10, train_per_class: 2, test_per_class: 1}, model: cnn6,
       model_options: {width: 1, bn_momentum: 0.1}, iterations: 4, milestones: [2], eval_every: 2, batch_size: 8,
       eval_batch_size: 100, checkpoint_every: 1000, threads: 1}
columns: [{name: c}]
rows: [{name: Baseline, config: {regularizer: none}}]
"""


def test_the_planner_reports_a_damaged_run_and_retrains_it_only_when_asked(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COMHE_DATA", str(tmp_path / "data"))
    path = tmp_path / "tiny.yaml"
    path.write_text(textwrap.dedent(TINY))
    args = [str(path), "--results", str(tmp_path / "results"), "--no-figures"]
    assert cli.main(args) == 0
    plan = runner.make_plan([str(path)])
    run = RunDir(tmp_path / "results" / "runs" / plan.runs[0].name)
    original = run.read_final()["final_test_error"]
    text = run.final_path.read_text()
    run.final_path.write_text(text.replace('"status": "finished"', '"status": "finished" '))   # one added space
    damaged = run.final_path.read_bytes()
    capsys.readouterr()

    buf = io.StringIO()
    assert runner.train(plan, tmp_path / "results" / "runs", out=buf) == {"skipped": 1, "damaged": 1}
    assert "2 runs: 1 finished (not retrained), 1 damaged (not retrained" in buf.getvalue()
    assert ", 0 to train" in buf.getvalue() and run.final_path.read_bytes() == damaged
    assert cli.main(args) == 1                                           # not retrained, named, table written
    out = capsys.readouterr().out
    assert f"damaged record: {run.path}/final.json: checksum differs" in out
    assert run.final_path.read_bytes() == damaged and "1 damaged" in (tmp_path / "results" / "tiny.md").read_text()
    buf = io.StringIO()
    assert runner.dry_run(plan, tmp_path / "results" / "runs", out=buf)["damaged"] == 1
    assert re.search(rf"\n  damaged +Baseline +c +0  {run.path.name}\n", buf.getvalue())

    assert cli.main(args + ["--retrain-damaged"]) == 0
    out = capsys.readouterr().out
    aside = list((tmp_path / "results" / "runs" / ".damaged").iterdir())
    assert len(aside) == 1 and (aside[0] / "final.json").read_bytes() == damaged         # kept for inspection
    assert "damaged record:" not in out
    assert run.verify().state == "sealed" and run.read_final()["final_test_error"] == original
    assert "damaged" not in (tmp_path / "results" / "tiny.md").read_text()
    assert verify.main(["--results", str(tmp_path / "results")]) == 0                 # .damaged is not a run


def _make(*args, cwd=REPO):
    stamp = subprocess.run("cat requirements/ci.txt pyproject.toml | cksum | cut -d' ' -f1", shell=True, cwd=cwd,
                           capture_output=True, text=True).stdout.strip()
    return subprocess.run(["make", "--no-print-directory", "-o", f".venv/.installed-{stamp}",
                           f"PYTHON={sys.executable}", *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_make_verify_and_retrain_damaged(sealed_fixture, tmp_path):
    results, names = _copy(sealed_fixture, tmp_path)
    DAMAGES["one bit flipped"][0](results / "runs" / names[DAMAGED_CELL])
    done = _make("verify", f"RESULTS={results}")
    assert done.returncode != 0 and f"damaged: {results}/runs/{names[DAMAGED_CELL]}/final.json: " in done.stdout
    dry = _make("-n", "table1", "RETRAIN_DAMAGED=1", "PROFILE=smoke").stdout
    assert "--retrain-damaged" in dry and "'RETRAIN_DAMAGED=1'" not in dry      # a make option, not a config override
    assert "RETRAIN_DAMAGED=1" in _make("help").stdout and "make verify" in _make("help").stdout


def test_unreadable_records_of_an_unfinished_run_never_crash_a_running_render(sealed_fixture, tmp_path, capsys):
    """No final.json: nothing to check against a seal, but --running reads its metrics (and every render its
    config and meta): garbage there shows as no value, not a traceback."""
    results, names = _copy(sealed_fixture, tmp_path)
    partial = results / "runs" / names[("HS-MHE", "B", 1)]
    (partial / "metrics.csv").write_bytes(b"iteration,test_error\n4,\xff\xfe\n")
    (partial / "meta.json").write_bytes(b"\0" * 64)
    (partial / "config.yaml").write_text("[unclosed")
    code, _, md = _render(results, capsys, "--no-figures", "--running")
    assert code == 0 and "| 26.00 (1) |" in md and "1 partial" in md
