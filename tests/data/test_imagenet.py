"""The ImageNet path (DataLoader from JPEG folders, ``LoaderStream``) end to end on a generated layout, CPU."""
import pytest
import torch

from comhe.train import checkpoint, config, engine, setup
from comhe import data
from comhe.data import imagenet
from comhe.train.records import RunDir
from run_helpers import assert_same_run


def imagenet_cfg(tmp_path):
    """ResNet-18 on 3 classes x 4 JPEGs at 32 px, batch 4: an epoch is 3 steps, so the checkpoint at iteration 4 is
    one step into epoch 1."""
    return config.resolve(base={
        "dataset": "synthetic_imagenet", "data_root": str(tmp_path / "data"),
        "workers": 0, "data": {"image_size": 32, "num_classes": 3, "per_class": 4, "size": 40},
        "model": "resnet18", "iterations": 6, "milestones": [4], "lr": 0.02, "batch_size": 4, "eval_every": 3,
        "checkpoint_every": 4, "eval_batch_size": 5, "threads": 1})


class _Crash(Exception):
    pass


def test_imagenet_run_end_to_end_and_resumed_mid_epoch(tmp_path):
    cfg = imagenet_cfg(tmp_path)
    whole = RunDir(tmp_path / "whole")
    final = engine.train(cfg, whole.path)
    assert final["status"] == "finished" and final["iterations"] == 6
    rows = whole.read_metrics()
    assert [int(r["iteration"]) for r in rows] == [0, 3, 6]
    assert float(rows[1]["epoch"]) == 1.0 and 0 <= float(rows[-1]["test_error"]) <= 100
    assert len([k for k in rows[0] if k.startswith("energy/")]) == 21  # 20 convs (3 shortcuts) + fc

    def crash_at_6(row):
        if row["iteration"] == 6:
            raise _Crash
    killed = RunDir(tmp_path / "killed")
    with pytest.raises(_Crash):
        engine.train(cfg, killed.path, report=crash_at_6)
    state = checkpoint.load_latest(killed.checkpoint_dir)
    assert state["iteration"] == 4 and state["loader"] == {"epoch": 1, "step": 1, "seed": 0}  # mid-epoch
    engine.train(cfg, killed.path)
    assert killed.read_meta()["resumed_from"] == 4
    assert_same_run(whole, killed)


def test_evaluation_does_not_draw_from_the_global_rng(tmp_path):
    """The DataLoaders draw their base seed from their own generators: an evaluation (skipped on a restart from
    iteration 0, which already has its row) must not shift the random crops of the training that follows."""
    s = engine.prepare(imagenet_cfg(tmp_path))
    before = torch.get_rng_state()
    engine.evaluate(s)
    assert torch.equal(torch.get_rng_state(), before)


def test_loader_stream_resumed_at_any_step_yields_the_same_batches(tmp_path):
    """Resume (loader state + global RNG, as a checkpoint holds them) at each step of two epochs: the same crops."""
    bundle = data.build("synthetic_imagenet", tmp_path, image_size=32, num_classes=3, per_class=4, size=40)
    torch.manual_seed(0)
    stream, snapshots, batches = bundle.train_loader(4, seed=0), [], []
    for _ in range(2 * 3):
        snapshots.append((stream.state_dict(), torch.get_rng_state()))
        batches.append(stream.next_batch())
    for start in range(1, 6):
        resumed = bundle.train_loader(4, seed=0)
        resumed.load_state_dict(snapshots[start][0])
        torch.set_rng_state(snapshots[start][1])
        for x, y in batches[start:]:
            rx, ry = resumed.next_batch()
            assert torch.equal(rx, x) and torch.equal(ry, y), f"resumed at step {start}"


def test_the_workers_key_reaches_the_image_loader(tmp_path, monkeypatch):
    """``workers`` (top level, not part of the run's identity) sets the DataLoader workers; ``data.workers`` is no
    option (it would change the run's hash and retrain it)."""
    seen = {}

    class Stop(Exception):
        pass

    def fake_bundle(name, top, device, image_size, workers):
        seen["workers"] = workers
        raise Stop

    monkeypatch.setattr(imagenet, "_imagenet_bundle", fake_bundle)
    cfg = config.resolve(base={**imagenet_cfg(tmp_path), "workers": 3})
    with pytest.raises(Stop):
        setup.prepare(cfg)
    assert seen == {"workers": 3}
    assert "workers" not in config.section_defaults(cfg, "data")
