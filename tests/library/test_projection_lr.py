"""AP/Adv-CoMHE's ``proj_lr_fixed``: the projection steps at ``proj_lr`` whatever rate the network passes (under Adam
at 1e-3 the official "network's current rate" would barely move P); and the energy monitor's ``exclude``."""
import pytest
import torch
from torch import nn

from comhe import layer_energies, regularizers


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3), nn.Conv2d(16, 32, 3), nn.Flatten(), nn.Linear(32, 10))


def after_one_step(name, lr, **options):
    model = net()
    torch.manual_seed(1)                                   # the same initial P for every regulariser built here
    reg = regularizers.build(name, model, proj_dim=8, **options)
    loss, _ = reg(lr=lr, stats=False)
    loss.backward()
    return reg.proj.bucket_matrices()[0].clone(), loss.item(), model[1].weight.grad.clone()


@pytest.mark.parametrize("name", ["ap_comhe", "adv_comhe"])
def test_a_fixed_projection_rate_ignores_the_networks(name):
    fixed = after_one_step(name, 1e-3, proj_lr=0.1, proj_lr_fixed=True)
    official_at_0_1 = after_one_step(name, 0.1)            # the default follows the rate it is given
    official_at_1e_3 = after_one_step(name, 1e-3)
    for a, b in zip(fixed, official_at_0_1):               # P, the loss and W's gradient through the look-ahead
        assert torch.equal(torch.as_tensor(a), torch.as_tensor(b))
    start = after_one_step(name, 0.0)[0]
    moved_fixed = (fixed[0] - start).norm()
    moved_network = (official_at_1e_3[0] - start).norm()
    assert moved_fixed > 50 * moved_network > 0            # 0.1 vs 1e-3: ~100x the step


def test_the_option_is_declared_with_the_official_default():
    for name in ("ap_comhe", "adv_comhe"):
        assert regularizers.option_defaults(name)["proj_lr_fixed"] is False


def test_layer_energies_leave_out_excluded_layers():
    model = net()
    every = layer_energies(model)
    kept = layer_energies(model, exclude=["1"])
    assert list(every) == ["0", "1", "3"] and list(kept) == ["0", "3"]
    assert kept == {k: every[k] for k in kept}
    with pytest.raises(ValueError, match="matches no regularisable layer"):
        layer_energies(model, exclude=["fc"])
