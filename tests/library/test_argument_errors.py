"""The library's argument errors, each with the message a user reads: powers, reductions, neuron tensors, eps,
regularisers that select no layer, projection and power-iteration counts, exclusions that leave nothing."""
import pytest
import torch
from torch import nn

from comhe import regularizers
from comhe.energy import canonical_power, energy_from_gram, hyperspherical_energy
from comhe.layers import find_layers


def net():
    return nn.Sequential(nn.Linear(4, 6, bias=False), nn.ReLU(), nn.Linear(6, 5, bias=False), nn.ReLU(),
                         nn.Linear(5, 3))


@pytest.mark.parametrize("given, power", [(2, 2), ("2", 2), (" 1 ", 1), (2.0, 2), (" A1 ", "a1"), ("a0", "a0")])
def test_powers_are_read_in_their_spellings(given, power):
    assert canonical_power(given) == power


@pytest.mark.parametrize("given, shown", [(True, "'true'"), (2.5, "2.5"), ("3", "'3'"), ("a3", "'a3'")])
def test_other_powers_are_refused_with_the_valid_ones(given, shown):
    with pytest.raises(ValueError) as err:
        canonical_power(given)
    assert str(err.value) == f"unknown power s={shown}; valid: 0, 1, 2, a0, a1, a2"


@pytest.mark.parametrize("call, error, message", [
    (lambda: energy_from_gram(torch.eye(3), reduction="max"), ValueError, "unknown reduction 'max'; valid: mean, sum"),
    (lambda: hyperspherical_energy([[1.0, 0.0], [0.0, 1.0]]), TypeError,
     "w must be a torch.Tensor of neurons [N, d] or [..., N, d], got list"),
    (lambda: hyperspherical_energy(torch.ones(3, 2, dtype=torch.int64)), TypeError,
     "w must be floating point, got torch.int64"),
    (lambda: hyperspherical_energy(torch.randn(3, 2), eps=-1e-4), ValueError, "eps must be >= 0, got -0.0001"),
])
def test_energy_arguments(call, error, message):
    with pytest.raises(error) as err:
        call()
    assert str(err.value) == message


@pytest.mark.parametrize("name, options, message", [
    ("hs_mhe", {"eps": 0.0},
     "eps must be > 0 in a regulariser (it keeps zero and padded neurons finite), got 0.0"),
    ("ap_comhe", {"proj_iters": -1}, "proj_iters must be an integer >= 0, got -1"),
    ("ap_comhe", {"proj_iters": True}, "proj_iters must be an integer >= 0, got True"),
    ("srip", {"power_iters": 0}, "power_iters must be an integer >= 1, got 0"),
])
def test_regulariser_options(name, options, message):
    with pytest.raises(ValueError) as err:
        regularizers.build(name, net(), **options)
    assert str(err.value) == message


@pytest.mark.parametrize("name", ["mhe", "orthogonal"])
def test_a_regulariser_that_selects_no_layer_says_so(name):
    only_classifier = nn.Sequential(nn.Linear(4, 3))   # its one layer is the output layer
    with pytest.raises(ValueError) as err:
        regularizers.build(name, only_classifier, layers="hidden", lambda_hidden=0.1)
    assert str(err.value) == "layers='hidden' selects no layer of Sequential"


def test_excluding_every_layer_is_refused():
    with pytest.raises(ValueError) as err:
        find_layers(net(), exclude=["0", "2", "4"])
    assert str(err.value) == "exclude=['0', '2', '4'] leaves no layer of Sequential to regularise"
