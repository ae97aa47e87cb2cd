"""``streams.TensorLoader``'s argument checks (each with its message; also the augmentation's padding limit) and its
iterator protocol: ``next(iter(s))`` is the same batch as ``s.next_batch()`` from the same seed."""
import pytest
import torch

from comhe.data.streams import TensorLoader


def images(n=16):
    return torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("x, y, options, message", [
    (images().float(), torch.zeros(16), {}, "images must be uint8 [N, C, H, W], got torch.float32 (16, 3, 8, 8)"),
    (images()[:, 0], torch.zeros(16), {}, "images must be uint8 [N, C, H, W], got torch.uint8 (16, 8, 8)"),
    (images(), torch.zeros(15), {}, "labels must be [N] = [16], got (15,)"),
    (images(), torch.zeros(16), {"rank": 2, "world_size": 2}, "rank 2 is not in 0..1"),
    (images(), torch.zeros(16), {"rank": -1}, "rank -1 is not in 0..0"),
    (images(), torch.zeros(16), {"drop_last": False, "world_size": 2},
     "drop_last=False is only supported with world_size=1"),
    (images(), torch.zeros(16), {"batch_size": 32}, "16 images cannot fill one global batch of 32 with drop_last"),
])
def test_bad_arguments_are_refused_with_their_message(x, y, options, message):
    with pytest.raises(ValueError) as err:
        TensorLoader(x, y, **{"batch_size": 4, **options})
    assert str(err.value) == message


def test_iterating_gives_the_batches_of_next_batch():
    labels = torch.arange(16) % 4
    a, b = TensorLoader(images(), labels, batch_size=4, seed=3), TensorLoader(images(), labels, batch_size=4, seed=3)
    assert iter(a) is a
    for _ in range(6):   # across the epoch boundary (4 batches an epoch)
        (xa, ya), (xb, yb) = next(a), b.next_batch()
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_padding_wider_than_the_image_is_refused():
    from comhe.data.augment import augment_batch, draw_augment_params
    params = draw_augment_params(2, torch.Generator().manual_seed(0), pad=4)
    with pytest.raises(ValueError) as err:
        augment_batch(images(2)[:, :, :3, :3], params, pad=4)
    assert str(err.value) == "symmetric padding of 4 needs images of at least 4x4, got 3x3"
