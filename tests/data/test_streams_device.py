"""The tensor stream's device side: one upload per epoch, and the same state format as a stream drawing batch by
batch (checkpoints written before and after the change resume each other)."""
import torch

from comhe.data.augment import draw_augment_params
from comhe.data.streams import TensorLoader


def images(n):
    return torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))


def test_state_generator_is_the_batch_by_batch_streams():
    """The saved generator sits at the current step's draws, as when every batch drew its own: the documented
    stream (randperm, then each global batch's draws), replayed here by hand."""
    loader = TensorLoader(images(40), torch.arange(40), 8, seed=3)
    g = torch.Generator().manual_seed(3)
    torch.randperm(40, generator=g)
    for step in range(5):
        assert torch.equal(loader.state_dict()["generator"], g.get_state()) and loader.step == step
        loader.next_batch()
        draw_augment_params(8, g)
    torch.randperm(40, generator=g)  # epoch 1 begins with the next batch: its permutation first
    loader.next_batch()
    draw_augment_params(8, g)
    assert loader.epoch == 1 and torch.equal(loader.state_dict()["generator"], g.get_state())


def test_resume_at_an_epoch_end_and_in_the_middle():
    for stop in (5, 7):  # 5 steps an epoch: at its end, and two steps into the next
        first = TensorLoader(images(40), torch.arange(40), 8, seed=3)
        for _ in range(stop):
            first.next_batch()
        state = first.state_dict()
        expected = [first.next_batch() for _ in range(8)]
        resumed = TensorLoader(images(40), torch.arange(40), 8, seed=0)
        resumed.load_state_dict(state)
        assert torch.equal(resumed.state_dict()["generator"], state["generator"])
        for (x, y), (rx, ry) in zip(expected, (resumed.next_batch() for _ in range(8))):
            assert torch.equal(x, rx) and torch.equal(y, ry)


def test_a_batch_reads_only_device_tensors():
    """Per batch: slices of the epoch's device-side permutation and draws, nothing from the host generator."""
    loader = TensorLoader(images(40), torch.arange(40), 8, seed=3)
    state = loader.generator.get_state()
    for _ in range(4):
        loader.next_batch()
    assert torch.equal(loader.generator.get_state(), state)  # drawn when the epoch started
