"""The training loop's host syncs and host-to-device copies, measured on the CPU by tagging every tensor that would
be on the device in a CUDA run (``comhe.bench.transfers``): one sync per check interval, no pageable copy per
iteration, the data stream's upload once per epoch."""
import torch

from comhe.bench import transfers
from comhe.train import engine


def test_steady_state_loop_syncs_once_per_check_and_copies_only_per_epoch(tmp_path):
    cfg = transfers.small_cfg("rp_comhe", iterations=61)
    tags = transfers.measure(cfg, str(tmp_path / "run"), steps_per_epoch=30)  # epochs start at 1, 31, 61
    first, last = transfers.steady_window(61)
    events = [(it, kind, what) for it, kind, what in tags.events if first < it <= last]
    syncs = [it for it, kind, _ in events if kind == "sync"]
    assert syncs == [40, 60] and engine.CHECK_EVERY == 20  # one per check interval, at the check
    copies = [(it, kind) for it, kind, _ in events if kind.endswith("copy")]
    assert copies == [(31, "pageable copy")]  # the epoch's permutation and draws (pinned on CUDA; no pinning here)
    assert not [e for e in events if e[1] == "host operand"]


def test_the_harness_sees_a_sync_a_pageable_copy_and_a_host_operand():
    tags = transfers.DeviceTags()
    with transfers.host_transfers(tags, torch.device("cpu")):
        x = torch.zeros(4, device="cpu")          # made on the device
        host = torch.arange(4)                    # on the host
        x.add_(host)                              # a host operand (an error on CUDA)
        y = host.to("cpu")                        # a pageable copy
        float(x.sum())                            # a sync
        (x + y).tolist()                          # a sync
        x.add_(1.0)                               # a scalar argument: nothing
    kinds = [kind for _, kind, _ in tags.events]
    assert kinds == ["host operand", "pageable copy", "sync", "sync"]


def test_learned_and_group_projections_add_no_sync_or_copy(tmp_path):
    for regularizer in ("ap_comhe", "g_comhe"):
        tags = transfers.measure(transfers.small_cfg(regularizer, iterations=41), str(tmp_path / regularizer))
        assert transfers.steady_state(tags, 41) == {"sync": 1}, regularizer  # the check at 40, nothing else


def test_the_point_cloud_stream_copies_only_when_an_epoch_starts():
    """PointNet++'s augmentation (rotations, scale, shift, jitter, a point order): a batch reads only device tensors;
    the epoch's permutation and draws go to the device once, when the epoch starts (one copy per dtype)."""
    from comhe.data.points import PointCloudLoader
    points = torch.randn(40, 3, 32)
    loader = PointCloudLoader(points, torch.arange(40) % 4, 8, "pointnet2", seed=1)   # 5 batches an epoch
    tags = transfers.DeviceTags()
    tags.tag(points, loader.labels, loader.device_tensors())
    with transfers.host_transfers(tags, torch.device("cpu")):
        for step in range(1, 11):
            tags.iteration = step
            x, y = loader.next_batch()
            assert tags.on_device(x) and tags.on_device(y)
    events = [(it, kind) for it, kind, _ in tags.events]
    assert events == [(6, "pageable copy"), (6, "pageable copy")]  # epoch 1 starts: int64 (perm, orders), float


def test_the_chunked_energy_adds_no_sync_or_copy(tmp_path, monkeypatch):
    """The CPU's Gram-by-Gram path for long pair lists (``comhe/chunked.py``), forced on the small run."""
    from comhe import pairs
    monkeypatch.setattr(pairs, "PACKED_CPU_ENTRIES", 0)
    tags = transfers.measure(transfers.small_cfg("rp_comhe", iterations=41), str(tmp_path / "run"))
    assert transfers.steady_state(tags, 41) == {"sync": 1}  # the check at 40, nothing else
