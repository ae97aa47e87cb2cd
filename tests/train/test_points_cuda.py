"""The point-cloud path on CUDA (skipped without a GPU): data and augmentation on the device, no channels_last for
[B, 3, N] batches, bf16 autocast with the T-Net loss in float32, fused Adam, and FPS / ball query on the device equal
to the CPU's."""
import pytest
import torch

from comhe.models.pointnet2 import ball_query, farthest_point_sample
from comhe.train import config, engine

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_pointnet_tnet_trains_on_cuda(tmp_path):
    pytest.importorskip("h5py")
    cfg = config.resolve(base={
        "dataset": "synthetic_modelnet40", "data_root": str(tmp_path / "data"),
        "data": {"num_classes": 4, "train_per_class": 8, "test_per_class": 4, "num_points": 256,
                 "augmentation": "pointnet2"},
        "model": "pointnet_tnet", "model_options": {"width": 0.25}, "regularizer": "rp_comhe",
        "reg": {"classifier": "classifier", "exclude": ["*_transform.transform"]},
        "monitor_exclude": ["*_transform.transform"], "optimizer": "adam", "lr": 0.001, "lr_schedule": "staircase",
        "lr_decay": 0.7, "lr_decay_every": 2, "lr_min": 1e-5, "bn_schedule": "staircase", "milestones": [],
        "weight_decay": 0.0, "loss": "cross_entropy", "label_smoothing": 0.0, "iterations": 6, "batch_size": 8,
        "eval_every": 3, "eval_batch_size": 16, "checkpoint_every": 1000, "device": "cuda"})
    s = engine.prepare(cfg)
    assert not s.channels_last and s.amp_dtype == torch.bfloat16
    assert s.optimizer.defaults.get("fused") or s.optimizer.defaults.get("foreach")
    x, y = s.loader.next_batch()
    assert x.device.type == "cuda" and x.shape == (8, 3, 256) and y.device.type == "cuda"
    final = engine.train(cfg, tmp_path / "run", setup=s)
    assert final["status"] == "finished" and final["final_test_error"] is not None


def test_sampling_and_grouping_on_cuda_match_the_cpu():
    xyz = torch.rand(2, 300, 3, generator=torch.Generator().manual_seed(0)) * 2 - 1
    idx = farthest_point_sample(xyz, 32)
    assert torch.equal(farthest_point_sample(xyz.cuda(), 32).cpu(), idx)
    centres = xyz[torch.arange(2)[:, None], idx]
    assert torch.equal(ball_query(xyz.cuda(), centres.cuda(), 0.3, 16).cpu(), ball_query(xyz, centres, 0.3, 16))
