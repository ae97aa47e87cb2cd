"""The optimiser options a CUDA run gets, checked without a GPU (the device only chooses options here, nothing is
moved): the fused kernel where the optimiser has one, else ``foreach``; Adam's step count on the device under a
CUDA graph. On the CPU the options stay torch's defaults."""
import torch

from comhe.train import config, optim

CUDA, CPU = torch.device("cuda"), torch.device("cpu")


class _ForeachOnly:
    """An optimiser signature without ``fused`` (as torch's RMSprop or an older torch's SGD)."""

    def __init__(self, params, lr=0.1, foreach=None):
        pass


def groups():
    return [{"params": [torch.nn.Parameter(torch.ones(3, 2))], "weight_decay": 0.0}]


def test_cuda_takes_the_fused_kernel_where_there_is_one_else_foreach():
    assert optim._fast_path({"lr": 0.1}, torch.optim.SGD, CUDA) == {"lr": 0.1, "fused": True}
    assert optim._fast_path({"lr": 0.1}, _ForeachOnly, CUDA) == {"lr": 0.1, "foreach": True}
    assert optim._fast_path({"lr": 0.1}, torch.optim.SGD, CPU) == {"lr": 0.1}


def test_sgd_and_adam_options_on_cuda_and_on_the_cpu():
    sgd = config.resolve(base={"optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": True})
    on_cuda = optim.build_optimizer(sgd, groups(), CUDA).defaults
    assert (on_cuda["fused"], on_cuda["lr"], on_cuda["momentum"], on_cuda["nesterov"]) == (True, 0.05, 0.9, True)
    assert not optim.build_optimizer(sgd, groups(), CPU).defaults["fused"]

    adam = config.resolve(base={"optimizer": "adam", "lr": 1e-3})
    graph = optim.build_optimizer({**adam, "cuda_graph": True}, groups(), CUDA).defaults
    assert graph["capturable"] and graph["fused"] and graph["betas"] == (0.9, 0.999)
    assert not optim.build_optimizer(adam, groups(), CUDA).defaults["capturable"]   # eager CUDA: not needed
    assert not optim.build_optimizer({**adam, "cuda_graph": True}, groups(), CPU).defaults["capturable"]
