"""``steps.FallbackStep`` once its mode has proven itself, and the graph step's refusals, on the CPU: a capture that
fails at a later learning rate (a milestone re-captures) still falls back to the eager step, with the eager step's
numbers; any other failure after the first success propagates (it is not the mode's); a graph step refuses DDP."""
from types import SimpleNamespace

import pytest
import torch

from comhe.train import engine, steps
from run_helpers import small_cfg


class _Fails:
    def __init__(self, err):
        self.err, self.graphs = err, {}

    def __call__(self, x, y, lr):
        raise self.err


def _proven_graph_step(setup, inner):
    """A FallbackStep as it is after a CUDA-graph step has captured and replayed (``proven``), with ``inner``."""
    step = steps.build(setup, "eager")
    step.mode, step.proven, step.inner = "cuda_graph", True, inner
    return step


def test_a_capture_failing_at_a_milestone_falls_back_to_the_eager_step(tmp_path):
    cfg = small_cfg(tmp_path)
    reference, fallen = engine.prepare(cfg), engine.prepare(cfg)
    x, y = reference.loader.next_batch()
    expected = steps.EagerStep(reference)(x, y, 0.01)
    fallen.step = _proven_graph_step(fallen, _Fails(steps.CaptureFailed("capturing the step at lr=0.01 failed")))
    with pytest.warns(RuntimeWarning, match=r"step mode 'cuda_graph' failed \(CaptureFailed: capturing the step at "
                                            r"lr=0.01 failed\); falling back to the eager step for this run"):
        got = fallen.step(x, y, 0.01)
    assert [t.item() for t in got] == [t.item() for t in expected]
    assert (fallen.step.mode, fallen.step.proven, type(fallen.step.inner)) == ("eager", True, steps.EagerStep)
    for (name, a), b in zip(reference.model.named_parameters(), fallen.model.parameters()):
        assert torch.equal(a, b), name


def test_a_failure_after_the_mode_ran_propagates(tmp_path):
    setup = engine.prepare(small_cfg(tmp_path))
    step = _proven_graph_step(setup, _Fails(RuntimeError("CUDA error: an illegal memory access")))
    with pytest.raises(RuntimeError, match="an illegal memory access"):
        step(*setup.loader.next_batch(), 0.01)
    assert step.mode == "cuda_graph"   # not silently switched to eager


@pytest.mark.parametrize("device, ddp, message", [
    ("cpu", False, "cuda_graph: true needs a CUDA device"),
    ("cuda", True, "cuda_graph: true is single-process only (DDP's all-reduce is not captured here)"),
])
def test_the_graph_step_refuses_the_cpu_and_ddp(device, ddp, message):
    fake = SimpleNamespace(device=torch.device(device), ctx=SimpleNamespace(enabled=ddp))
    with pytest.raises(ValueError) as err:
        steps.GraphStep(fake)
    assert str(err.value) == message
