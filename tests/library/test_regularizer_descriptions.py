"""What a regulariser says about itself (``describe``, ``repr``) for the kinds the transparency tests do not print
(G-CoMHE's coordinate groups, the orthogonality lambdas by role, ``none``), and ``reg.to(...)``
dropping the stack's cached gather indices."""
import torch
from torch import nn

from comhe import regularizers
from comhe.stacking import Stacker


def net():
    return nn.Sequential(nn.Linear(40, 12, bias=False), nn.ReLU(), nn.Linear(12, 10, bias=False), nn.ReLU(),
                         nn.Linear(10, 3))


def test_g_comhe_describes_its_coordinate_groups():
    reg = regularizers.build("g_comhe", net())
    assert reg.layer_terms() == [("half-space of 5 coordinate groups of 8, s=2", "1"),   # fan-in 40 = 5 x 8
                                 ("half-space (unprojected: fan-in 12 not compressed), s=2", "1"),
                                 ("full-space, s=2", "10")]                                 # the classifier
    assert "(proj): GroupProjection(num_proj=8, min_group_size=8)" in repr(reg)


def test_orthogonality_lambdas_are_given_per_role():
    reg = regularizers.build("srip", net(), layers="both", lambda_hidden=0.1, lambda_output=0.5)
    assert [weight for _, weight in reg.layer_terms()] == ["0.1", "0.1", "0.5"]
    assert {term for term, _ in reg.layer_terms()} == {reg.term_name}


def test_none_regularises_nothing_and_says_nothing():
    reg = regularizers.build("none", net())
    assert reg.compile() is reg and reg.layer_terms() == [] and repr(reg) == "NoRegularizer()"
    loss, stats = reg(lr=0.1)
    assert float(loss) == 0.0 and stats == {"total": 0.0}


def test_moving_the_regulariser_drops_its_cached_indices():
    reg = regularizers.build("g_comhe", net())
    before, _ = reg(lr=0.1)
    stackers = [m for m in reg.modules() if isinstance(m, Stacker)]
    assert stackers and any(s._logical_cache or s._group_cache for s in stackers)
    reg.to(torch.device("cpu"))
    assert not any(s._logical_cache or s._group_cache for s in stackers)
    after, _ = reg(lr=0.1)
    assert torch.equal(before, after)
