"""``comhe.bench.startup`` measures the CPU seconds of fresh processes (not a timed test: the figures go to
BENCHMARKS.md); here it runs on trivial code and must report a row per case with CPU and wall time."""
import csv

from comhe.bench import startup


def test_startup_bench_reports_every_case(tmp_path, monkeypatch):
    monkeypatch.setattr(startup, "CASES", {"nothing": "pass", "a little work": "sum(range(10**6))"})
    rows = startup.main(["--repeats", "2", "--out", str(tmp_path / "s.csv")])
    assert [r["case"] for r in rows] == ["nothing", "a little work"]
    assert all(r["cpu_s"] >= 0 and r["wall_s"] > 0 and r["repeats"] == 2 for r in rows)
    assert [r["case"] for r in csv.DictReader(open(tmp_path / "s.csv"))] == ["nothing", "a little work"]
