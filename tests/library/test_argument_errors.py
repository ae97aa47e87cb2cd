"""The library's argument errors, each with the message a user reads: powers, reductions, neuron tensors, eps,
regularisers that select no layer, projection and power-iteration counts, exclusions that leave nothing, lazy layers;
and which layers are found under wrappers (DataParallel, torch.compile) and when two modules share a weight."""
import pytest
import torch
from torch import nn

from comhe import regularizers
from comhe.energy import canonical_power, energy_from_gram, hyperspherical_energy
from comhe.layers import find_layers, unwrap


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
    ("srip", {"power_iters": 0}, "power_iters must be an integer >= 1, got 0"),
])
def test_regulariser_options(name, options, message):
    with pytest.raises(ValueError) as err:
        regularizers.build(name, net(), **options)
    assert str(err.value) == message


def test_a_bool_is_not_a_count():
    """True is an int subclass; as a count it is a type error that names the option (regularizers/options.py)."""
    with pytest.raises(TypeError, match=r"^proj_iters must be an integer >= 0, got True \(bool\)$"):
        regularizers.build("ap_comhe", net(), proj_iters=True)


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


def test_wrapped_models_are_unwrapped_to_the_users_model():
    class Compiled(nn.Module):   # torch.compile's OptimizedModule keeps the model as ``_orig_mod``
        def __init__(self, inner):
            super().__init__()
            self._orig_mod = inner

    model = net()
    assert unwrap(nn.DataParallel(Compiled(model))) is model
    assert [layer.name for layer in find_layers(Compiled(nn.DataParallel(model)))] == ["0", "2", "4"]


def test_a_lazy_layer_must_run_once_before_a_regulariser_is_built():
    with pytest.raises(ValueError) as err:
        find_layers(nn.Sequential(nn.LazyLinear(3), nn.ReLU(), nn.Linear(3, 2)))
    assert str(err.value) == ("layer '0' is lazy and not initialised yet: run one forward pass before building a "
                              "regulariser")


def test_a_weight_shared_by_two_modules_is_regularised_once():
    shared = nn.Linear(4, 4, bias=False)
    tied = nn.Linear(4, 4, bias=False)
    tied.weight = shared.weight
    assert [layer.name for layer in find_layers(nn.Sequential(shared, nn.ReLU(), tied, nn.Linear(4, 2)))] == ["0", "3"]
