"""``python -m comhe.bench.transfers`` (``make bench``, BENCHMARKS.md section 5): the per-iteration rates it prints
and returns are the steady-state counts of the tagged loop divided by the window."""
from comhe.bench import transfers
from comhe.train import engine


def test_the_command_reports_one_sync_per_check_interval_and_no_copy(capsys):
    rates = transfers.main(["--iterations", "41", "--regularizer", "rp_comhe"])
    first, last = transfers.steady_window(41)
    window = last - first
    assert rates == {"sync": 1 / window, "pageable copy": 0.0, "pinned copy": 0.0, "host operand": 0.0}
    out = capsys.readouterr().out
    assert (f"engine loop, rp_comhe: iterations {first + 1}..{last} ({window} steady-state iterations, a host check "
            f"every {engine.CHECK_EVERY})") in out
    assert f"  sync              1  ({1 / window:.3f} per iteration)" in out
    assert "    iteration 40: sync: item / float / int / bool" in out
