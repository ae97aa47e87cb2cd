"""A run's CUDA RNG state is its own device's: a checkpoint resumes whatever the number of visible GPUs (a run
started alone on an 8-GPU node, resumed as one of several jobs that each see one GPU). The CUDA RNG API is faked
with per-device states built by hand (no GPU here); the CPU parts of the state are real."""
import pytest
import torch

from comhe.train import seeding


class FakeCuda:
    """``visible`` devices, each with its own RNG state (a byte tensor); setting a state on an index that is not
    visible fails as CUDA does."""

    def __init__(self, monkeypatch, visible: int, current: int = 0):
        self.states = {i: torch.full((16,), i, dtype=torch.uint8) for i in range(visible)}
        self.set_calls = []
        self.visible, self.current = visible, current
        for name, fn in {"is_available": lambda: True, "is_initialized": lambda: True,
                         "device_count": lambda: self.visible, "current_device": lambda: self.current,
                         "get_rng_state": self.get, "set_rng_state": self.set}.items():
            monkeypatch.setattr(torch.cuda, name, fn)

    def _index(self, device):
        index = torch.device("cuda", device).index if isinstance(device, int) else torch.device(device).index
        if index is None:
            index = self.current
        if index >= self.visible:
            raise RuntimeError(f"CUDA error: invalid device ordinal {index} (of {self.visible} visible)")
        return index

    def get(self, device="cuda"):
        return self.states[self._index(device)].clone()

    def set(self, state, device="cuda"):
        index = self._index(device)
        assert state.device.type == "cpu" and state.dtype == torch.uint8
        self.states[index] = state.clone()
        self.set_calls.append(index)


def hand_built(cuda):
    """A checkpoint's RNG state, CPU parts real, the CUDA part as given."""
    state = seeding.rng_state(torch.device("cpu"))
    state["cuda"] = cuda
    return state


def test_a_state_of_every_visible_gpu_resumes_on_one_visible_gpu(monkeypatch):
    """An older checkpoint: 8 states (8 GPUs visible when saved, the run on cuda:0); resumed where one GPU is
    visible (before: set_rng_state_all set all 8 by index and failed on index 1)."""
    cuda = FakeCuda(monkeypatch, visible=1)
    saved = [torch.full((16,), 100 + i, dtype=torch.uint8) for i in range(8)]
    seeding.set_rng_state(hand_built(saved), torch.device("cuda", 0))
    assert cuda.set_calls == [0] and torch.equal(cuda.states[0], saved[0])


def test_an_older_state_restores_the_entry_of_the_runs_device_only(monkeypatch):
    cuda = FakeCuda(monkeypatch, visible=8)
    saved = [torch.full((16,), 100 + i, dtype=torch.uint8) for i in range(8)]
    seeding.set_rng_state(hand_built(saved), torch.device("cuda", 3))
    assert cuda.set_calls == [3] and torch.equal(cuda.states[3], saved[3])
    assert all(torch.equal(cuda.states[i], torch.full((16,), i, dtype=torch.uint8)) for i in range(8) if i != 3)


@pytest.mark.parametrize("saved_on, visible_then, resumed_on, visible_now", [(0, 8, 0, 1), (0, 1, 5, 8),
                                                                             (2, 4, 0, 2)])
def test_a_runs_own_state_round_trips_across_device_counts(monkeypatch, saved_on, visible_then, resumed_on,
                                                           visible_now):
    before = FakeCuda(monkeypatch, visible=visible_then)
    before.states[saved_on] = torch.arange(16, dtype=torch.uint8) * 3
    state = seeding.rng_state(torch.device("cuda", saved_on))
    assert torch.equal(state["cuda"], before.states[saved_on])  # one tensor: the run's device only
    after = FakeCuda(monkeypatch, visible=visible_now)
    seeding.set_rng_state(state, torch.device("cuda", resumed_on))
    assert after.set_calls == [resumed_on] and torch.equal(after.states[resumed_on], before.states[saved_on])


def test_a_cpu_run_saves_and_restores_no_cuda_state(monkeypatch):
    cuda = FakeCuda(monkeypatch, visible=2)
    state = seeding.rng_state(torch.device("cpu"))
    assert "cuda" not in state
    seeding.set_rng_state(hand_built([torch.zeros(16, dtype=torch.uint8)] * 2), torch.device("cpu"))
    assert cuda.set_calls == []
