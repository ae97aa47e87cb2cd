"""``comhe.bench.throughput`` flushes subnormal floats for its whole process (its step times would otherwise measure
the synthetic run's saturated softmax: see the module docstring), and ``--keep-subnormals`` keeps them."""
import subprocess
import sys
import textwrap

import pytest
import torch

# In a child process: the flag is process-wide and would leak into every later test of this one.
CHILD = textwrap.dedent("""
    import csv, sys, torch
    from comhe.bench import throughput
    out = sys.argv[1]
    for keep in (False, True):
        args = ["--steps", "1", "--rounds", "1", "--regularizers", "none", "--out", out]
        throughput.main(args + ["--keep-subnormals"] * keep)
        row = next(csv.DictReader(open(out)))
        subnormal = torch.tensor([1e-40]) * torch.tensor([1.0])   # a subnormal times one: 0 where flushed
        # an intra-op thread too: a parallel sum over many subnormals stays 0 only where every thread flushes
        many = torch.full((1 << 20,), 1e-40)
        print(keep, row["subnormals_flushed"], float(subnormal) == 0.0, float(many.mul(1.0).sum()) == 0.0)
""")


@pytest.mark.skipif(not torch.set_flush_denormal(False), reason="this CPU cannot flush subnormals (not x86)")
def test_throughput_flushes_subnormals_in_every_thread_unless_told(tmp_path):
    out = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / "t.csv")], capture_output=True, text=True,
                         check=True).stdout.splitlines()
    results = [line.split() for line in out if line.startswith(("False", "True"))]
    assert results == [["False", "True", "True", "True"], ["True", "False", "False", "False"]], out
