"""Resume when the checkpoint's tensors are not on the CPU (a run resumed on CUDA, or loaded with a non-CPU
``map_location``): every RNG and generator state goes back to the CPU before use, and the run ends bitwise equal to an
uninterrupted one. On the CPU the foreign device is simulated: each loaded tensor is wrapped so that it reports the
``meta`` device and can only be used the way CPU code can use a CUDA tensor (copied into a CPU tensor, or moved with
``.cpu()`` / ``.to("cpu")``); ``.numpy()``, ``torch.set_rng_state`` and ``Generator.set_state`` refuse it, as they
refuse a CUDA tensor."""
import os
import signal

import pytest
import torch
from torch.utils._pytree import tree_map

from comhe.train import checkpoint, engine, seeding
from comhe.train.records import RunDir
from run_helpers import assert_same_run, small_cfg


class OnAnotherDevice(torch.Tensor):
    """A CPU tensor dressed as one on another device (``meta``): only copies to the CPU work."""

    @staticmethod
    def __new__(cls, inner: torch.Tensor):
        return torch.Tensor._make_wrapper_subclass(cls, inner.shape, strides=inner.stride(), dtype=inner.dtype,
                                                   device=torch.device("meta"), requires_grad=inner.requires_grad)

    def __init__(self, inner: torch.Tensor):
        self.inner = inner

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        unwrap = lambda t: t.inner if isinstance(t, OnAnotherDevice) else t  # noqa: E731
        name = func.overloadpacket.__name__
        to_cpu = name == "_to_copy" and kwargs.get("device") == torch.device("cpu")
        into_cpu = name == "copy_" and not isinstance(args[0], OnAnotherDevice)
        if to_cpu or into_cpu:
            return func(*tree_map(unwrap, args), **tree_map(unwrap, kwargs))
        if name in ("detach", "alias", "clone", "_to_copy"):
            return OnAnotherDevice(func(*tree_map(unwrap, args), **tree_map(unwrap, kwargs)))
        raise RuntimeError(f"{func} on a tensor of another device (as on a CUDA tensor from CPU code)")


def elsewhere(state):
    return tree_map(lambda v: OnAnotherDevice(v) if isinstance(v, torch.Tensor) else v, state)


def test_the_simulated_device_refuses_what_a_cuda_tensor_refuses():
    state = elsewhere(seeding.rng_state())
    with pytest.raises((RuntimeError, TypeError)):
        torch.set_rng_state(state["torch"])
    with pytest.raises((RuntimeError, TypeError)):
        state["numpy"]["keys"].numpy()
    with pytest.raises((RuntimeError, TypeError)):
        torch.Generator().set_state(state["torch"])
    assert torch.equal(state["torch"].cpu(), torch.get_rng_state())


def test_rng_states_from_another_device_are_restored():
    seeding.seed_everything(7)
    saved = seeding.rng_state()
    expected = (torch.rand(3), __import__("numpy").random.rand(2).tolist(), __import__("random").random())
    seeding.seed_everything(99)
    seeding.set_rng_state(elsewhere(saved))
    got = (torch.rand(3), __import__("numpy").random.rand(2).tolist(), __import__("random").random())
    assert torch.equal(got[0], expected[0]) and got[1:] == expected[1:]


@pytest.mark.parametrize("regularizer, reg", [("rp_comhe", {"proj_dim": 4, "num_proj": 2}),
                                              ("ap_comhe", {"proj_dim": 4})])
def test_resume_from_a_checkpoint_on_another_device_equals_uninterrupted(tmp_path, monkeypatch, regularizer, reg):
    cfg = small_cfg(tmp_path, regularizer=regularizer, reg=reg)
    reference = RunDir(tmp_path / "reference")
    engine.train(cfg, reference.path)

    run = RunDir(tmp_path / "resumed")

    def stop_at_4(row):  # SIGUSR1 at the evaluation of iteration 4: checkpoint, then Preempted
        if row["iteration"] == 4:
            os.kill(os.getpid(), signal.SIGUSR1)

    with pytest.raises(engine.Preempted):
        engine.train(cfg, run.path, report=stop_at_4)
    loads = []
    original = checkpoint.load_latest

    def load_on_another_device(directory, map_location="cpu"):
        loads.append(map_location)
        state = original(directory, map_location="cpu")
        return None if state is None else elsewhere(state)

    monkeypatch.setattr(checkpoint, "load_latest", load_on_another_device)
    engine.train(cfg, run.path)
    monkeypatch.undo()
    assert loads == ["cpu"]  # the engine asks for CPU tensors; the wrapper checks it would cope with others
    assert_same_run(reference, run)
