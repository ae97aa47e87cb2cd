"""``node_engine.prepare`` refuses, before anything is built or written, what the full-batch graph trainer cannot do:
several processes (torchrun), and a data set that is not a graph."""
import pytest

from comhe.train import config, node_engine
from comhe.train.distributed import DistContext


def gcn_cfg(tmp_path):
    return config.resolve(base={"model": "gcn", "dataset": "synthetic_planetoid", "data": {"num_classes": 4},
                                "data_root": str(tmp_path / "data"), "milestones": [], "threads": 1,
                                "loss": "cross_entropy", "label_smoothing": 0.0})


def test_a_graph_run_under_torchrun_is_refused(tmp_path):
    with pytest.raises(ValueError) as err:
        node_engine.prepare(gcn_cfg(tmp_path), ctx=DistContext(rank=0, world_size=2))
    assert str(err.value) == ("node classification trains the whole graph in one process: run it without "
                              "torchrun")
    assert not (tmp_path / "data").exists()


def test_a_data_set_that_is_not_a_graph_is_refused(tmp_path):
    images = object()   # what data.build would give for an image data set: anything but a GraphBundle
    with pytest.raises(ValueError) as err:
        node_engine.prepare(gcn_cfg(tmp_path), bundle=images)
    assert str(err.value) == ("dataset 'synthetic_planetoid' is not a graph: the node engine trains graphs only")
