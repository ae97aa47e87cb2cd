"""The ImageNet stream keeps one DataLoader per run (persistent worker processes, not new ones every epoch), in the
same order as without workers; ``workers: auto`` shares the cores among the runs at once."""
import pytest
import torch

from comhe import data
from comhe.suite import runner
from comhe.train import config


def test_one_dataloader_per_run_with_persistent_workers(tmp_path, monkeypatch):
    import torch.utils.data as tud
    made = []
    real = tud.DataLoader

    class Counting(real):
        def __init__(self, *args, **kwargs):
            made.append(kwargs)
            super().__init__(*args, **kwargs)
    bundle = data.build("synthetic_imagenet", tmp_path, image_size=32, num_classes=3, per_class=4, size=40)
    plain = bundle.train_loader(4, seed=0)
    expected = [plain.next_batch()[1] for _ in range(9)]  # 3 epochs of 3 steps, no workers
    monkeypatch.setattr(tud, "DataLoader", Counting)
    with_workers = data.build("synthetic_imagenet", tmp_path, image_size=32, num_classes=3, per_class=4, size=40,
                              workers=1)
    stream = with_workers.train_loader(4, seed=0)
    labels = [stream.next_batch()[1] for _ in range(9)]
    assert len(made) == 1 and made[0]["persistent_workers"] is True  # before: one DataLoader (and workers) an epoch
    assert all(torch.equal(a, b) for a, b in zip(labels, expected))  # the same order, epoch after epoch
    stream.load_state_dict({"epoch": 1, "step": 2, "seed": 0})  # a resume mid-epoch reuses it
    assert torch.equal(stream.next_batch()[1], expected[5]) and len(made) == 1


@pytest.mark.parametrize("workers, processes, cores, expected", [("auto", 1, 16, 15), ("auto", 4, 16, 3),
                                                                  ("auto", 8, 16, 1), ("auto", 4, 2, 0),
                                                                  (6, 4, 16, 6), (0, 1, 16, 0)])
def test_workers_per_job_from_the_cores_and_jobs(workers, processes, cores, expected):
    assert data.loader_workers(workers, processes, cores) == expected


def test_the_runner_gives_each_job_its_share_of_the_cores(monkeypatch):
    monkeypatch.setattr(data.streams.os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    cfg = config.resolve(base={"dataset": "imagenet", "model": "resnet18"})
    assert cfg["workers"] == "auto"
    planned = [runner.Planned("a", cfg)]
    assert runner.prepare_configs(planned, jobs=4)[0]["workers"] == 3
    assert runner.prepare_configs(planned, jobs=1)[0]["workers"] == "auto"  # the run itself: 15 of 16 cores
    assert runner.prepare_configs([runner.Planned("b", {**cfg, "workers": 2})], jobs=4)[0]["workers"] == 2
    with pytest.raises(config.ConfigError, match="workers must be auto or an integer >= 0, got -1"):
        config.resolve(["workers=-1"])
