"""``seal.verify`` on run folders written by hand: each way a record or its manifest can be damaged gives the
``damaged`` verdict with the one-line reason the tables and ``make verify`` print (the end-to-end tests in
``tests/suite/test_record_integrity.py`` damage real runs; these pin every reason without training)."""
import json
from pathlib import Path

import pytest

from comhe.train import seal
from comhe.train.seal import MANIFEST

GOOD = {"config.yaml": "model: cnn9\nlr: 0.1\n",
        "metrics.csv": "iteration,test_error\n100,12.5\n200,10.0\n",
        "meta.json": json.dumps({"git_sha": "abc123", "device": "cpu"}),
        "final.json": json.dumps({"status": "finished", "final_test_error": 10.0, "best_test_error": 9.5,
                                  seal.SEAL_KEY: True})}


def write_run(tmp_path: Path, sealed: bool, **files) -> Path:
    """A finished run's records (``GOOD`` with ``files`` replacing some; bytes or text), with its manifest when
    ``sealed`` (computed over the files as written, as ``RunDir.write_final`` does)."""
    run = tmp_path / "run"
    run.mkdir(parents=True)
    for name, content in {**GOOD, **files}.items():
        (run / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    if sealed:
        (run / MANIFEST).write_text(seal.manifest_text(run, (run / "final.json").read_bytes()))
    return run


def test_intact_records_are_sealed_and_an_old_unsealed_record_is_unverified(tmp_path):
    assert seal.verify(write_run(tmp_path / "a", sealed=True)) == seal.Verdict("sealed")
    old_final = json.dumps({"status": "finished", "final_test_error": 10.0})   # no seal key: written before seals
    verdict = seal.verify(write_run(tmp_path / "b", sealed=False, **{"final.json": old_final}))
    assert verdict == seal.Verdict("unverified", f"no {MANIFEST}: written before run records were sealed")
    assert not verdict.damaged


@pytest.mark.parametrize("name, content, why", [
    ("final.json", b"", "empty"),
    ("final.json", b"\0" * 64, "all zero bytes"),
    ("final.json", b'{"status": "finished", "note": "\xff"}', "not UTF-8 text (byte 32)"),
    ("final.json", "[" * 100_000, "not JSON (nested too deep)"),
    ("final.json", '{"status": "finished",', "not JSON (Expecting property name enclosed in double quotes at line 1)"),
    ("final.json", "[1, 2]", "not a JSON object"),
    ("final.json", '{"status": "running"}', "status 'running' is neither finished nor diverged"),
    ("final.json", '{"status": "finished", "final_test_error": 140.0}', "final_test_error = 140.0 is not a percentage"),
    ("final.json", '{"status": "diverged", "best_test_error": true}', "best_test_error = True is not a percentage"),
    ("final.json", '{"status": "finished", "final_test_error": NaN}', "final_test_error = nan is not a percentage"),
    ("config.yaml", "model: [cnn9\n", "not YAML (while parsing a flow sequence)"),
    ("config.yaml", "- cnn9\n- resnet20\n", "not a YAML mapping"),
    ("config.yaml", "[" * 5000, "not YAML (nested too deep)"),
    ("metrics.csv", "iteration,test_error\n1," + "9" * 200_000 + "\n",
     "not CSV (field larger than field limit (131072))"),
    ("metrics.csv", "step,test_error\n100,12.5\n", "no header with an iteration column"),
    ("metrics.csv", "iteration,test_error\n100,12.5\n200\n", "line 3 has 1 fields, the header 2"),
    ("metrics.csv", "iteration,test_error\n1e2,12.5\nlast,10.0\n", "line 3: iteration 'last' is not a number"),
    ("meta.json", "", "empty"),
])
def test_a_record_that_does_not_parse_is_damaged_with_its_reason(tmp_path, name, content, why):
    # Unsealed (no manifest): the contents are all that can be checked. Sealed with the damaged file in the manifest
    # the checksum matches, so the same content check has to catch final.json; the other files are the writers'.
    verdict = seal.verify(write_run(tmp_path, sealed=False, **{name: content}))
    assert verdict == seal.Verdict("damaged", f"{name}: {why}")


def test_a_record_that_cannot_be_read_is_damaged_not_a_traceback(tmp_path):
    run = write_run(tmp_path, sealed=False)
    (run / "meta.json").unlink()
    (run / "meta.json").mkdir()   # reading it raises IsADirectoryError, an OSError
    assert seal.verify(run) == seal.Verdict("damaged", "meta.json: unreadable (Is a directory)")


@pytest.mark.parametrize("manifest, why", [
    (b"\xff\xfe not text", "not UTF-8 text"),
    ("0" * 64 + "  notes.txt\n", "line 1 is not '<sha256>  <record file>'"),
    ("0" * 64 + "  meta.json\n", "does not list final.json"),
])
def test_a_damaged_manifest_is_named(tmp_path, manifest, why):
    run = write_run(tmp_path, sealed=True)
    (run / MANIFEST).write_bytes(manifest if isinstance(manifest, bytes) else manifest.encode())
    assert seal.verify(run) == seal.Verdict("damaged", f"{MANIFEST}: {why}")


def test_an_unreadable_manifest_is_named(tmp_path):
    run = write_run(tmp_path, sealed=False)
    (run / MANIFEST).mkdir()
    assert seal.verify(run) == seal.Verdict("damaged", f"{MANIFEST}: unreadable (Is a directory)")


def test_a_record_written_after_the_seal_is_damaged(tmp_path):
    run = write_run(tmp_path, sealed=True)
    lines = (run / MANIFEST).read_text().splitlines()
    (run / MANIFEST).write_text("\n".join(line for line in lines if not line.endswith("meta.json")) + "\n")
    assert seal.verify(run) == seal.Verdict("damaged",
                                            f"meta.json: not in {MANIFEST} (written after the run finished)")


def test_a_listed_record_that_cannot_be_read_is_damaged(tmp_path):
    run = write_run(tmp_path, sealed=True)
    (run / "metrics.csv").unlink()
    (run / "metrics.csv").mkdir()
    assert seal.verify(run) == seal.Verdict("damaged", "metrics.csv: unreadable (Is a directory)")


def test_several_problems_are_joined_in_one_line(tmp_path):
    run = write_run(tmp_path, sealed=True)
    (run / "config.yaml").write_text("model: cnn9\nlr: 0.2\n")   # an edit
    (run / "metrics.csv").unlink()
    assert seal.verify(run) == seal.Verdict("damaged", "; ".join([
        f"config.yaml: checksum differs from {MANIFEST} (the file or its checksum changed since the run finished)",
        f"metrics.csv: missing (listed in {MANIFEST})"]))
