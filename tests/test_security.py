"""Security basics: YAML only through safe_load, checkpoints only through weights_only loads, archives extracted
only inside their destination, no shell built from strings. Source checks walk the package's syntax trees (not
text), and each is shown to catch a planted example."""
import ast
import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import pytest
import torch

from comhe.train import checkpoint, engine
from comhe import data, train
from comhe.data import archives, cifar
from run_helpers import REPO, small_cfg

PACKAGE = REPO / "comhe"
UNSAFE_YAML = {"load", "load_all", "unsafe_load", "unsafe_load_all", "full_load", "full_load_all"}


def unsafe_calls(source: str):
    """``(line, why)`` for each call this project forbids in ``source``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        func, kwargs = node.func, {k.arg: k.value for k in node.keywords}
        owner = func.value.id if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) else None
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        if owner == "yaml" and name in UNSAFE_YAML:
            found.append((node.lineno, f"yaml.{name} (use yaml.safe_load)"))
        if owner == "torch" and name == "load" and not (
                isinstance(kwargs.get("weights_only"), ast.Constant) and kwargs["weights_only"].value is True):
            found.append((node.lineno, "torch.load without weights_only=True"))
        if owner == "pickle" and name in ("load", "loads", "Unpickler"):
            found.append((node.lineno, f"pickle.{name}"))
        if isinstance(kwargs.get("shell"), ast.Constant) and kwargs["shell"].value is True:
            found.append((node.lineno, "shell=True"))
        if owner == "os" and (name in ("system", "popen") or name.startswith(("exec", "spawn"))):
            found.append((node.lineno, f"os.{name}"))
        if owner is None and name in ("eval", "exec") and isinstance(func, ast.Name):
            found.append((node.lineno, name))
        if name == "extract_archive" or (name == "extractall" and "members" not in kwargs):
            found.append((node.lineno, f"{name} without the member checks of archives.extract_tar"))
    return found


def test_the_scanner_catches_each_forbidden_call():
    planted = """
yaml.load(text)
yaml.load(text, Loader=yaml.FullLoader)
yaml.unsafe_load(text)
torch.load(path)
torch.load(path, weights_only=False)
pickle.loads(blob)
subprocess.run(command, shell=True)
os.system(command)
eval(text)
extract_archive(archive, root)
tar.extractall(root)
"""
    assert len(unsafe_calls(planted)) == len(planted.strip().splitlines())
    assert unsafe_calls("yaml.safe_load(t)\ntorch.load(p, weights_only=True)\nsubprocess.run(['git', 'log'])\n"
                        "model.eval()\n") == []


def test_package_has_no_unsafe_call():
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 10
    found = {str(f.relative_to(REPO)): unsafe_calls(f.read_text()) for f in files}
    assert {k: v for k, v in found.items() if v} == {}


# --- behaviour ---------------------------------------------------------------------------------------------------

def test_yaml_python_tags_are_refused_by_the_cli(tmp_path, capsys):
    marker = tmp_path / "pwned"
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"lr: !!python/object/apply:os.system ['mkdir {marker}']\n")
    assert train.main([str(cfg), "--run-dir", str(tmp_path / "run")]) == 2
    assert "is not valid YAML (could not determine a constructor for the tag" in capsys.readouterr().err
    cfg.write_text("lr: 0.1\n")
    assert train.main([str(cfg), "--run-dir", str(tmp_path / "run"),
                       f"lr=!!python/object/apply:os.system ['mkdir {marker}']"]) == 2
    assert "override lr: cannot parse" in capsys.readouterr().err
    assert not marker.exists() and not (tmp_path / "run").exists()


class _Payload:
    """Unpickling this calls ``os.mkdir(path)``: a stand-in for arbitrary code in a tampered checkpoint."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return os.mkdir, (self.path,)


def _plant_checkpoint(directory: Path, state) -> None:
    """A checkpoint with a valid manifest entry: the checksum guards against damage, not against an attacker."""
    buf = io.BytesIO()
    torch.save(state, buf)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "ckpt-000000002.pt").write_bytes(buf.getvalue())
    (directory / "manifest.json").write_text(json.dumps([{"file": "ckpt-000000002.pt", "iteration": 2,
                                                          "sha256": hashlib.sha256(buf.getvalue()).hexdigest()}]))


def test_checkpoint_with_a_pickled_object_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    _plant_checkpoint(tmp_path / "ckpts", {"iteration": 2, "model": _Payload(marker)})
    with pytest.warns(UserWarning, match="ckpt-000000002.pt does not load .*Unpickl"):
        assert checkpoint.load_latest(tmp_path / "ckpts") is None
    assert not marker.exists()
    # the control: an unrestricted load runs the payload
    # unrestricted on purpose: the point of the test
    torch.load(tmp_path / "ckpts" / "ckpt-000000002.pt", weights_only=False)
    assert marker.is_dir()


def test_run_with_a_tampered_checkpoint_restarts_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    cfg = small_cfg(tmp_path, iterations=4, checkpoint_every=4)
    _plant_checkpoint(tmp_path / "run" / "checkpoints", {"iteration": 2, "model": _Payload(marker)})
    with pytest.warns(UserWarning, match="does not load"):
        final = engine.train(cfg, tmp_path / "run")
    assert final["status"] == "finished" and final["iterations"] == 4 and not marker.exists()


def _tar(path: Path, members) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, kind, payload in members:
            info = tarfile.TarInfo(name)
            if kind == "file":
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
            else:
                info.type, info.linkname = tarfile.SYMTYPE, payload
                tar.addfile(info)
    return path


@pytest.mark.parametrize("members, refused", [
    ([("cifar-10-batches-py/ok", "file", b"ok"), ("../../escape", "file", b"x")], "../../escape"),
    ([("cifar-10-batches-py/ok", "file", b"ok"), ("out", "link", "../.."), ("out/escape", "file", b"x")], "out"),
], ids=["dot-dot", "symlink-out"])
def test_archive_members_outside_the_destination_are_refused(tmp_path, members, refused):
    archive = _tar(tmp_path / "evil.tar.gz", members)
    dest = tmp_path / "a" / "b"
    dest.mkdir(parents=True)
    with pytest.raises(data.DatasetUnavailable, match=f"evil.tar.gz was not extracted: '{refused}'"):
        archives.extract_tar(archive, dest)
    assert list(dest.iterdir()) == [] and not (tmp_path / "escape").exists()  # refused whole, before any write


def test_torchvision_extraction_would_escape_on_this_python(tmp_path):
    """Why archives.extract_tar exists: torchvision's extract_archive writes a ``..`` member outside (Python < 3.14)."""
    from torchvision.datasets.utils import extract_archive
    archive = _tar(tmp_path / "evil.tar.gz", [("../../escape", "file", b"x")])
    (tmp_path / "a" / "b").mkdir(parents=True)
    try:
        extract_archive(str(archive), str(tmp_path / "a" / "b"))
    except tarfile.TarError:
        pytest.skip("this Python filters tar members by default")
    assert (tmp_path / "escape").read_bytes() == b"x"


def test_cifar_archive_with_a_traversal_member_is_refused(tmp_path, monkeypatch):
    """Even an archive that passed the md5 check (here: a patched expected md5) goes through extract_tar."""
    from torchvision.datasets import CIFAR10
    root = tmp_path / "root"
    root.mkdir()
    archive = _tar(root / CIFAR10.filename, [("cifar-10-batches-py/batches.meta", "file", b"x"),
                                             ("../escape", "file", b"x")])
    monkeypatch.setattr(CIFAR10, "tgz_md5", hashlib.md5(archive.read_bytes()).hexdigest())
    with pytest.raises(data.DatasetUnavailable, match="was not extracted: '../escape' would be extracted to"):
        cifar._ensure_cifar(CIFAR10, root, download=False)
    assert not (tmp_path / "escape").exists() and not (root / "cifar-10-batches-py").exists()


@pytest.mark.parametrize("override", ["lr=0.1';touch pwned;'", "reg.s=a1", "data_root=/a b/c", 'x=$(touch pwned)'])
def test_make_passes_an_override_as_one_word_whatever_it_holds(override):
    """`make table1 <override>` builds a shell command: the override must reach the runner as one argument, verbatim
    (no quote in it may end the quoting, no $(...) may run)."""
    import shlex
    import subprocess
    out = subprocess.run(["make", "-n", "-s", "table1", override, "VENV=.venv", "STAMP=Makefile"], cwd=REPO,
                         capture_output=True, text=True, timeout=60).stdout
    command = next(line for line in out.splitlines() if "comhe.run table1" in line)
    words = shlex.split(command)
    assert words[-1] == override, words
