"""The runner end to end: `make table1 PROFILE=smoke` writes the table and a figure, a second invocation trains
nothing, DRY=1 lists runs with their status; plus experiment planning (shared runs, overrides, profiles), locking,
parallel workers, waiting for runs another process trains, and the submitit path."""
import _thread
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pandas as pd
import pytest

from comhe.train import config
from comhe.suite import experiments, runner
from comhe.train.records import RunDir, run_name

REPO = Path(__file__).resolve().parents[2]


def make(*args, tmp_path, timeout=600, cwd=REPO, outputs_in_tmp=True):
    """``make`` in ``cwd`` with this interpreter; the venv stamp is taken as current (-o: never reinstall)."""
    stamp = subprocess.run("cat requirements/ci.txt pyproject.toml | cksum | cut -d' ' -f1", shell=True, cwd=cwd,
                           capture_output=True, text=True).stdout.strip()
    env = {**os.environ, "COMHE_DATA": str(tmp_path / "data")}
    outputs = [f"RESULTS={tmp_path / 'results'}", f"FIGURES={tmp_path / 'figures'}"] if outputs_in_tmp else []
    cmd = ["make", "--no-print-directory", "-o", f".venv/.installed-{stamp}", f"PYTHON={sys.executable}", *outputs,
           *args]
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def fresh_checkout(where: Path) -> Path:
    """The files a clone of this working tree would have (tracked and not-ignored untracked files, as they are now):
    no results, figures, data or caches of this checkout come along."""
    listed = subprocess.run(["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                            check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():  # a tracked file deleted in the working tree is not there
            (where / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, where / name)
    return where


def finals(runs_root: Path):
    return {p.parent.name: p.stat().st_mtime_ns for p in runs_root.glob("*/final.json")}


def test_make_table1_smoke_end_to_end(tmp_path, monkeypatch):
    """On a fresh checkout, with its default output folders: the tables and a figure, then a second invocation trains
    nothing, DRY=1 lists, a changed config is new runs, a partial run is the only one retrained."""
    clone = fresh_checkout(tmp_path / "clone")
    assert not (clone / "results" / "runs").exists() and not (clone / ".venv").exists()
    git = {"cwd": clone, "capture_output": True, "text": True, "check": True}
    subprocess.run("git init -q && git add -A && git -c user.name=t -c user.email=t@t commit -qm clone", shell=True,
                   **git)
    out = make("table1", "PROFILE=smoke", tmp_path=tmp_path, cwd=clone, outputs_in_tmp=False)
    assert subprocess.run(["git", "status", "--porcelain"], **git).stdout == ""   # a user's run dirties nothing
    # smoke never writes where the real tables are (issue 20): results/smoke/, figures included, and it says so
    results, runs_root = clone / "results" / "smoke", clone / "results" / "smoke" / "runs"
    assert "profile smoke: tables, runs and figures go to results/smoke/" in out
    assert not (clone / "results" / "table1.md").exists() and not (clone / "figures").exists()
    for ext in ("csv", "md", "tex"):
        assert (results / f"table1.{ext}").stat().st_size > 500
    assert (results / "figures" / "table1.png").stat().st_size > 5000
    table = pd.read_csv(results / "table1.csv")
    assert len(table) == 30 and set(table["status"]) == {"done"}          # 5 methods x 3 depths x 2 smoke seeds
    assert table["final_test_error"].between(0, 100).all() and set(table["dataset"]) == {"synthetic"}
    md = (results / "table1.md").read_text()
    assert "| RP-CoMHE |" in md and "| 24.39 |" in md and "| N/C |" in md and "Runs: 30 done." in md
    assert "30 to train" in out
    first = finals(runs_root)
    assert len(first) == 30 and not any((runs_root / n / "checkpoints").exists() for n in first)  # smoke: no weights
    records = json.loads((runs_root / sorted(first)[0] / "final.json").read_text())
    assert records["status"] == "finished"

    again = make("table1", "PROFILE=smoke", tmp_path=tmp_path, cwd=clone, outputs_in_tmp=False)  # trains nothing
    assert "30 finished (not retrained), 0 to train" in again and finals(runs_root) == first

    partial = sorted(first)[0]
    (runs_root / partial / "final.json").unlink()                               # a run interrupted half-way
    listing = make("table1", "PROFILE=smoke", "DRY=1", "lr=0.05", tmp_path=tmp_path, cwd=clone, outputs_in_tmp=False)
    assert "29 done, 1 partial, 0 todo" not in listing and "0 done, 0 partial, 30 todo" in listing  # a changed config
    assert finals(runs_root).keys() == set(first) - {partial}                   # DRY trains and writes nothing
    monkeypatch.setenv("COMHE_DATA", str(clone / "data"))  # in-process, the clone's default data, not this checkout's
    plan = runner.make_plan(["table1"], "smoke")
    counts = runner.dry_run(plan, runs_root)
    assert counts == {"done": 29, "partial": 1, "todo": 0}
    assert runner.train(plan, runs_root) == {"skipped": 29, "finished": 1}       # the partial run alone is retrained
    assert len(finals(runs_root)) == 30


@pytest.mark.parametrize("profile", experiments.PROFILES)
@pytest.mark.parametrize("name", experiments.names())
def test_every_experiment_plans(name, profile):
    exp = experiments.load(name, profile)
    cells = experiments.plan(exp)
    assert cells and all(c.name == run_name(c.cfg) for c in cells)
    datasets = {c.cfg["dataset"] for c in cells}
    graphs = {"cora", "citeseer", "pubmed"}  # full-batch GCN runs: an iteration is an epoch of a small graph
    if profile == "smoke":
        longest = 6 if not datasets <= graphs | {"synthetic_planetoid"} else 30
        assert max(c.cfg["iterations"] for c in cells) <= longest and not exp.keep_weights
        assert datasets <= {"synthetic", "synthetic_imagenet", "fashion_mnist", "synthetic_planetoid",
                            "synthetic_modelnet40"}
    else:
        assert not datasets & {"synthetic", "synthetic_imagenet", "synthetic_planetoid", "synthetic_modelnet40"}
    if profile == "paper" and name != "demo":
        assert exp.seeds == ([0, 1, 2] if not datasets <= graphs else list(range(10)))  # GCN: 10 seeds
        assert exp.references or exp.source.startswith("not a paper")     # fig3: our own sweep, no paper values
        assert exp.path.read_text().startswith("# ")                     # opens with source, command, cost


def test_paper_protocols():
    """The schedules the issue names: CoMHE 75k (30k/50k/65k), MHE 42.5k (20k/30k/37.5k), He et al., torchvision."""
    def one(name, **where):
        return next(c.cfg for c in runner.make_plan([name]).cells[name] if all(c.cfg[k] == v for k, v in where.items()))
    assert (one("table1")["iterations"], one("table1")["milestones"]) == (75000, [30000, 50000, 65000])
    for name in ("table7", "table8", "table9", "fig2"):
        assert (one(name)["iterations"], one(name)["milestones"]) == (42500, [20000, 30000, 37500]), name
    he = one("table5")
    assert (he["iterations"], he["milestones"], he["batch_size"], he["weight_decay"], he["loss"]) == \
        (64000, [32000, 48000], 128, 1e-4, "cross_entropy")
    imagenet = one("table6")
    assert (imagenet["iterations"], imagenet["milestones"], imagenet["batch_size"]) == (450360, [150120, 300240], 256)


@pytest.mark.parametrize("profile", ["paper", "smoke"])
def test_identical_configs_share_one_run(profile):
    plan = runner.make_plan(["table1", "table2", "fig1"], profile)
    by_cell = {(c.experiment, c.row, c.column, c.seed): c.name for cells in plan.cells.values() for c in cells}
    for row in ("Baseline", "MHE", "HS-MHE", "RP-CoMHE", "AP-CoMHE"):
        assert by_cell[("table1", row, "CNN-9", 0)] == by_cell[("table2", row, "CNN-9", 0)]
    assert by_cell[("fig1", "RP-CoMHE", "hidden energy", 1)] == by_cell[("table1", "RP-CoMHE", "CNN-9", 1)]
    seeds = len(plan.experiments[0].seeds)
    assert len(plan.runs) == (15 + 2 + 1) * seeds          # table1, + Adv/G (table2), + Orthogonal (fig1)


def test_table7_and_table9_share_the_h_and_o_column():
    plan = runner.make_plan(["table7", "table9"])
    names = {(c.experiment, c.row, c.column, c.seed): c.name for cells in plan.cells.values() for c in cells}
    assert names[("table9", "MHE", "H and O", 0)] == names[("table7", "MHE", "C100 s=0", 0)]
    assert names[("table9", "HS-A-MHE", "H and O", 2)] == names[("table7", "HS-A-MHE", "C100 s=2", 2)]
    assert names[("table9", "Baseline", "O only", 1)] == names[("table7", "Baseline", "C100 s=2", 1)]
    assert ("table9", "HS-MHE", "O only", 0) not in names                        # N/A: not trained


READ_TIME_OPTIONS = ("num_points", "augmentation")  # synthetic_modelnet40: how the files are read, not written


def test_smoke_synthetic_data_is_one_dataset_per_format():
    """Two smoke specs of the same synthetic folder would rewrite each other's files (and race between workers)."""
    specs = {}
    for cell in (c for cells in runner.make_plan(["all"], "smoke").cells.values() for c in cells):
        if cell.cfg["dataset"].startswith("synthetic"):
            key = (cell.cfg["dataset"], cell.cfg["data"].get("num_classes"))
            written = {k: v for k, v in cell.cfg["data"].items() if k not in READ_TIME_OPTIONS}
            specs.setdefault(key, set()).add(json.dumps(written, sort_keys=True))
    assert specs and all(len(v) == 1 for v in specs.values()), specs


def test_vars_null_and_targeted_overrides():
    exp = experiments.load("table7")
    cfgs = {(c.row, c.column): c.cfg for c in experiments.plan(exp) if c.seed == 0}
    assert cfgs[("A-MHE", "C10 s=1")]["reg"] == {"s": "a1"} and cfgs[("MHE", "C100 s=0")]["reg"] == {"s": 0}
    assert experiments.layer({"reg": {"s": 2}, "lr": 0.1}, {"reg": None}) == {"reg": {}, "lr": 0.1}
    table1 = runner.make_plan(["table1"], overrides=["reg.proj_dim=20", "lr=0.05"])
    for cell in table1.cells["table1"]:
        assert cell.cfg["lr"] == 0.05
        assert cell.cfg["reg"].get("proj_dim") == (20 if cell.row in ("RP-CoMHE", "AP-CoMHE") else None)
    def rp(plan):
        return [c.name for c in plan.cells["table1"] if c.row == "RP-CoMHE"]
    spelled_out = runner.make_plan(["table1"], overrides=["reg.proj_dim=40"])   # RP's default k: the same runs
    assert rp(spelled_out) == rp(runner.make_plan(["table1"])) != rp(table1)
    with pytest.raises(config.ConfigError, match="no run of this experiment has the option reg.nope"):
        runner.make_plan(["table1"], overrides=["reg.nope=1"])
    with pytest.raises(config.ConfigError, match="unknown config key 'lrr'"):
        runner.make_plan(["table1"], overrides=["lrr=1"])
    with pytest.raises(experiments.ExperimentError, match="no experiment 'table99'"):
        runner.make_plan(["table99"])
    assert experiments.parse_seeds("0,4,5") == [0, 4, 5] and experiments.parse_seeds(2) == [0, 1]


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


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    path = tmp_path / "tiny.yaml"
    path.write_text(textwrap.dedent(TINY))
    monkeypatch.setenv("COMHE_DATA", str(tmp_path / "data"))
    return runner.make_plan([str(path)]), tmp_path / "runs"


def test_locked_run_is_skipped(tiny):
    plan, runs_root = tiny
    first = plan.runs[0]
    holder = RunDir(runs_root / first.name)
    holder.lock()                                     # another process training it (flock: per open file)
    try:
        result = runner.execute_one(first.cfg, str(runs_root / first.name))
    finally:
        holder.unlock()
    assert result["outcome"] == "locked" and not (runs_root / first.name / "final.json").exists()
    counts = runner.train(plan, runs_root, jobs=1)
    assert counts == {"skipped": 0, "finished": 2}
    assert runner.execute_one(first.cfg, str(runs_root / first.name))["outcome"] == "skipped"


def test_parallel_workers(tiny):
    plan, runs_root = tiny
    counts = runner.train(plan, runs_root, jobs=2)
    assert counts == {"skipped": 0, "finished": 2}
    threads = {RunDir(runs_root / p.name).read_config()["threads"] for p in plan.runs}
    assert threads == {1}                             # the experiment's setting wins over cores // jobs


def test_submitit_local_launcher(tiny):
    pytest.importorskip("submitit")
    _, runs_root = tiny
    plan = runner.make_plan([str(runs_root.parent / "tiny.yaml")], seeds=1)   # one job: each imports torch
    counts = runner.train(plan, runs_root, launcher="submitit-local")
    assert counts == {"skipped": 0, "finished": 1}
    assert all(RunDir(runs_root / p.name).read_final()["status"] == "finished" for p in plan.runs)
    assert list((runs_root.parent / "submitit").glob("*/*_log.out"))


class _Watch(io.StringIO):
    """The runner's output; calls ``action`` once, when the runner starts waiting for locked runs."""

    def __init__(self, action):
        super().__init__()
        self.action = action

    def write(self, text):
        if "run(s) another process is training" in text and self.action:  # not the "locked ... waiting" line
            self.action, action = None, self.action
            action()
        return super().write(text)


def test_runner_waits_for_a_locked_run_and_resumes_it_when_its_holder_stops(tiny):
    plan, runs_root = tiny
    holder = RunDir(runs_root / plan.runs[0].name)
    holder.lock()                                     # another process is training it ...
    out = _Watch(holder.unlock)                       # ... and stops without finishing while this one waits
    assert runner.train(plan, runs_root, out=out, poll_s=0.1) == {"skipped": 0, "finished": 2}
    assert " locked " in out.getvalue() and "waiting for 1 run(s)" in out.getvalue()
    assert holder.read_final()["status"] == "finished"


def test_ctrl_c_stops_waiting_and_reports_the_run_as_locked(tiny):
    plan, runs_root = tiny
    holder = RunDir(runs_root / plan.runs[0].name)
    holder.lock()
    # A suite started in the background (`nohup make test &`, some CI shells) inherits SIGINT ignored; Python then
    # installs no handler, interrupt_main does nothing, and the runner would wait for the held lock forever.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        out = _Watch(lambda: threading.Timer(0.2, _thread.interrupt_main).start())   # Ctrl-C while sleeping
        assert runner.train(plan, runs_root, out=out, poll_s=2.0) == {"skipped": 0, "finished": 1, "locked": 1}
    finally:
        signal.signal(signal.SIGINT, previous)
        holder.unlock()
    assert "stopped waiting: 1 run(s) left to the other process" in out.getvalue()
    assert holder.status() == "todo"
