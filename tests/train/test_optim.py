"""Optimisers and schedules (train/optim.py) against the official TF definitions, the model's auxiliary loss in the
step, and a PointNet run (Adam, staircase LR, scheduled BN momentum, the point stream) that resumes bitwise."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F

from comhe.train import config, engine, optim
from comhe.train.config import ConfigError
from comhe.train.records import RunDir

POINTNET = {"optimizer": "adam", "lr": 0.001, "lr_schedule": "staircase", "lr_decay": 0.7, "lr_decay_every": 6250,
            "lr_min": 1e-5, "milestones": [], "bn_schedule": "staircase", "weight_decay": 0.0}


def tf_pointnet_lr(step: int, batch: int = 32) -> float:
    """charlesq34/pointnet train.py: exponential_decay(0.001, step * batch, 200000, 0.7, staircase) >= 1e-5."""
    return max(0.001 * 0.7 ** math.floor(step * batch / 200000), 0.00001)


def tf_pointnet_bn_momentum(step: int, batch: int = 32) -> float:
    """The same file: bn_decay = min(0.99, 1 - exponential_decay(0.5, step * batch, 200000, 0.5, staircase));
    PyTorch's momentum is 1 - decay."""
    return 1.0 - min(0.99, 1.0 - 0.5 * 0.5 ** math.floor(step * batch / 200000))


def test_staircase_schedules_match_the_official_tf_ones():
    cfg = config.resolve(base=POINTNET)
    for step in (0, 1, 6249, 6250, 12499, 12500, 40000, 76749, 200000, 10 ** 6):
        assert optim.lr_at(cfg, step) == pytest.approx(tf_pointnet_lr(step), rel=1e-12), step
        assert optim.bn_momentum_at(cfg, step) == pytest.approx(tf_pointnet_bn_momentum(step), rel=1e-12), step
    assert optim.lr_at(cfg, 10 ** 6) == 1e-5 and optim.bn_momentum_at(cfg, 10 ** 6) == 0.01      # the floors
    assert engine.lr_at(cfg, 6250) == optim.lr_at(cfg, 6250)                                      # the engine's


def test_the_default_schedule_is_still_the_cifar_milestones():
    cfg = config.resolve()
    assert cfg["optimizer"] == "sgd" and cfg["lr_schedule"] == "milestones" and cfg["bn_schedule"] == "constant"
    for it, lr in ((0, 0.1), (29999, 0.1), (30000, 0.01), (50000, 0.001), (65000, 0.0001)):
        assert engine.lr_at(cfg, it) == pytest.approx(lr, rel=1e-12)
    assert optim.bn_momentum_at(cfg, 10 ** 5) is None


def test_optimizers_by_name():
    model = torch.nn.Linear(3, 2)
    groups = [{"params": list(model.parameters()), "weight_decay": 0.0}]
    adam = optim.build_optimizer(config.resolve(base=POINTNET), groups, torch.device("cpu"))
    assert isinstance(adam, torch.optim.Adam)
    assert adam.defaults["betas"] == (0.9, 0.999) and adam.defaults["eps"] == 1e-8 and adam.defaults["lr"] == 0.001
    sgd = optim.build_optimizer(config.resolve(), [{"params": list(model.parameters()), "weight_decay": 5e-4}],
                                torch.device("cpu"))
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["momentum"] == 0.9
    assert sgd.param_groups[0]["weight_decay"] == 5e-4


@pytest.mark.parametrize("overrides, message", [
    (["optimizer=lamb"], "optimizer must be one of sgd, adam, got 'lamb'"),
    (["lr_schedule=cosine"], "lr_schedule must be one of milestones, staircase"),
    (["lr_schedule=staircase"], "staircase needs lr_decay_every >= 1"),
    (["bn_schedule=staircase"], "bn_schedule: staircase needs lr_decay_every >= 1"),
    (["lr_min=0.5"], r"lr_min must be in \[0, lr = 0.1\]"),
    (["bn_momentum_min=0"], r"bn_momentum_min must be in \(0, 1\]"),
    (["lr_decay_every=-1"], "lr_decay_every must be >= 0"),
    (["bn_schedule=staircase", "lr_decay_every=5", "cuda_graph=true"], "cuda_graph: true replays one BN momentum"),
    (["monitor_exclude=['nothing.*']"], "monitor_exclude: exclude pattern 'nothing.*' matches no regularisable layer"),
])
def test_bad_schedule_options_fail_with_one_line(overrides, message):
    with pytest.raises(ConfigError, match=message):
        config.resolve(overrides)


def point_cfg(tmp_path, **overrides):
    base = {**POINTNET, "dataset": "synthetic_modelnet40", "data_root": str(tmp_path / "data"),
            "data": {"num_classes": 4, "train_per_class": 8, "test_per_class": 4, "num_points": 32},
            "model": "pointnet_tnet", "model_options": {"width": 0.125}, "regularizer": "rp_comhe",
            "reg": {"classifier": "classifier", "exclude": ["*_transform.transform"], "proj_dim": 4, "num_proj": 2},
            "monitor_exclude": ["*_transform.transform"], "lr_decay_every": 2, "loss": "cross_entropy",
            "label_smoothing": 0.0, "iterations": 8, "batch_size": 8, "eval_every": 2, "checkpoint_every": 4,
            "eval_batch_size": 16, "threads": 1}
    base.update(overrides)
    return config.resolve(base=base)


def test_the_step_adds_the_models_auxiliary_loss(tmp_path):
    pytest.importorskip("h5py")
    cfg = point_cfg(tmp_path, regularizer="none", reg={}, model_options={"width": 0.125, "dropout": 0.0})
    s = engine.prepare(cfg)
    with torch.no_grad():  # a T-Net that is not the identity, so that the orthogonality term is not zero
        s.model.feature_transform.transform.weight.normal_(0, 0.1)
    reference = copy.deepcopy(s.model)
    x, y = s.loader.next_batch()
    task, _, reg = s.step(x, y, 1e-3)
    logits = reference(x)
    t = reference.last_feature_transform.double()
    aux = 0.001 * 0.5 * ((t @ t.transpose(1, 2) - torch.eye(t.shape[-1], dtype=torch.float64)) ** 2).sum()
    assert aux > 1e-4
    assert task.item() == pytest.approx((F.cross_entropy(logits, y).double() + aux).item(), rel=1e-5)
    assert reg.item() == 0.0


def test_bn_momentum_follows_the_schedule_in_training(tmp_path):
    pytest.importorskip("h5py")
    s = engine.prepare(point_cfg(tmp_path))
    bns = [m for m in s.model.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    assert bns and s.bn_momentum is not None
    for iteration, expected in ((0, 0.5), (2, 0.25), (5, 0.125), (100, 0.01)):
        s.bn_momentum(iteration)
        assert {m.momentum for m in bns} == {expected}


class _Crash(RuntimeError):
    pass


def test_a_pointnet_run_resumes_bitwise(tmp_path):
    """Adam, the staircase LR and BN schedules, the T-Net loss, RP-CoMHE, the point stream with its jitter: a run
    that crashed after its iteration-4 checkpoint resumes to exactly the uninterrupted run."""
    pytest.importorskip("h5py")
    cfg = point_cfg(tmp_path)
    straight = RunDir(tmp_path / "straight")
    engine.train(cfg, straight.path)

    def crash_at_6(row):
        if row["iteration"] == 6:
            raise _Crash()

    resumed = RunDir(tmp_path / "resumed")
    with pytest.raises(_Crash):
        engine.train(cfg, resumed.path, report=crash_at_6)
    assert resumed.read_final() is None
    engine.train(cfg, resumed.path)
    assert resumed.read_meta()["resumed_from"] == 4
    rows_a, rows_b = straight.read_metrics(), resumed.read_metrics()
    assert [r["iteration"] for r in rows_b] == ["0", "2", "4", "6", "8"]
    assert [float(r["lr"]) for r in rows_a] == pytest.approx([1e-3, 1e-3, 7e-4, 4.9e-4, 3.43e-4])
    for a, b in zip(rows_a, rows_b):
        assert {k: v for k, v in a.items() if k != "seconds"} == {k: v for k, v in b.items() if k != "seconds"}
    assert not any(k.startswith("energy/") and "_transform.transform" in k for k in rows_a[0])
    from comhe.train import checkpoint
    sa, sb = (checkpoint.load_latest(r.checkpoint_dir) for r in (straight, resumed))
    for key in sa["model"]:
        assert torch.equal(sa["model"][key], sb["model"][key]), key
    moments = [(a["exp_avg_sq"], b["exp_avg_sq"]) for a, b in
               zip(sa["optimizer"]["state"].values(), sb["optimizer"]["state"].values())]
    assert moments and all(torch.equal(a, b) for a, b in moments)
