"""The regulariser follows its model's dtype: float64 math for float64 weights, float32 math (and a float32 loss) for
float32 / fp16 / bf16 weights, whether the model was converted before or after ``build``, and whether the regulariser
was converted too (``reg.double()``, ``reg.half()``, ``reg.to(dtype)``), checked against the float64 per-layer
reference of ``test_regularizers.py``."""
import copy

import pytest
import torch

import test_regularizers as ref
from comhe import regularizers

EVERY = ref.ENERGY_NAMES + ["orthonormal", "orthogonal", "srip"]
CONVERT = {"model only": lambda reg, dtype: None, "reg.to(dtype)": lambda reg, dtype: reg.to(dtype),
           "reg.double/half/bfloat16()": lambda reg, dtype: {torch.float64: reg.double, torch.float16: reg.half,
                                                             torch.bfloat16: reg.bfloat16}[dtype]()}


def options(name):
    return dict(ref.PROJECTED_OPTIONS.get(name, {}), **({"power_iters": 60} if name == "srip" else {}))


@pytest.mark.parametrize("convert", list(CONVERT))
@pytest.mark.parametrize("name", ref.ENERGY_NAMES)
def test_float64_after_build_matches_the_float64_reference(name, convert, monkeypatch):
    """Built on a float32 model, then ``model.double()`` (and the regulariser converted, or not): loss, stats,
    gradients and AP/Adv's inner steps equal the float64 per-layer reference to 1e-10 (float32 math would be ~1e-7)."""
    real_build = regularizers.build

    def build_then_convert(n, model, **opts):
        reg = real_build(n, model.float(), **opts)
        model.double()
        CONVERT[convert](reg, torch.float64)
        return reg
    monkeypatch.setattr(regularizers, "build", build_then_convert)
    first_state = ref.learned_state  # P drawn in float32 at build: exactly representable in float64
    monkeypatch.setattr(ref, "learned_state", lambda reg: {k: v.double() for k, v in first_state(reg).items()})
    model = ref.small_cnn(width=4).double()
    reg = ref.check_against_reference(name, model, monkeypatch, **ref.PROJECTED_OPTIONS.get(name, {}))
    loss, _ = reg(lr=0.1)
    assert loss.dtype == torch.float64
    assert all(t.dtype == torch.float64 for t in reg.buffers() if t.is_floating_point())


class UpcastRecorder(ref.Recorder):
    """The projections a half-precision run used, found for the float64 copy of its weights."""

    def matrices_for(self, weight):
        p = super().matrices_for(weight.float())
        return None if p is None else p.double()


def reference(name, model, recorder, learned, **opts):
    """The float64 value of the same regulariser on the same (upcast) weights."""
    if name in ref.ENERGY_NAMES:
        return ref.reference_loss(name, model, recorder, learned=learned, **opts)
    torch.manual_seed(0)
    return regularizers.build(name, model, **opts)()[0]


@pytest.mark.parametrize("dtype, convert, when", [
    (torch.float16, "model only", "before build"), (torch.float16, "reg.double/half/bfloat16()", "after build"),
    (torch.bfloat16, "model only", "after build"), (torch.bfloat16, "reg.to(dtype)", "after build")])
@pytest.mark.parametrize("name", EVERY)
def test_half_precision_weights_get_float32_math(name, dtype, convert, when, monkeypatch):
    """fp16 / bf16 weights: a float32 loss equal to the float64 reference on the same weights to float32 rounding
    (1e-4), gradients in the weights' dtype close to the reference's, and no half-precision state in the regulariser."""
    model = ref.small_cnn(width=4)
    if when == "before build":
        model.to(dtype)
    torch.manual_seed(0)
    reg = regularizers.build(name, model, **options(name))
    model.to(dtype)
    CONVERT[convert](reg, dtype)
    assert all(t.dtype == torch.float32 for t in reg.buffers() if t.is_floating_point())
    recorder = UpcastRecorder(monkeypatch)
    learned = ref.learned_state(reg) if name in ("ap_comhe", "adv_comhe") else None
    loss, stats = reg(lr=0.1)
    assert loss.dtype == torch.float32
    assert name == "srip" or stats["total"] == pytest.approx(loss.item(), rel=1e-6)  # srip's stats: the exact norm
    weights = [layer.weight for layer in reg.layers]
    grads = torch.autograd.grad(loss, weights)
    assert all(g.dtype == dtype for g in grads)

    upcast = copy.deepcopy(model).double()
    learned64 = None if learned is None else {k: v.double() for k, v in learned.items()}
    expected = reference(name, upcast, recorder, learned64, **options(name))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-4 if name != "srip" else 1e-3)
    modules = dict(upcast.named_modules())
    ref_weights = [modules[layer.name].weight for layer in reg.layers]
    ref_grads = torch.autograd.grad(expected, ref_weights)
    for g, r in zip(grads, ref_grads):
        assert (g.double() - r).norm() <= 2e-2 * r.norm() + 1e-6  # the gradient is rounded to the weights' dtype


@pytest.mark.parametrize("name", EVERY)
def test_back_and_forth_conversions_keep_state_and_follow_the_model(name):
    """``reg.half()`` never rounds the regulariser's state (AP's P, SRIP's vectors); the compute dtype follows the
    model at every call: float64 -> float32 -> float64 gives the loss of a regulariser built in that dtype."""
    model = ref.small_cnn(width=4)
    torch.manual_seed(0)
    reg = regularizers.build(name, model, **options(name))
    state = {k: v.clone() for k, v in reg.state_dict().items() if torch.is_tensor(v) and v.is_floating_point()}
    reg.half()
    reg.bfloat16()
    reg.to(torch.float16)
    for key, value in state.items():
        assert reg.state_dict()[key].dtype == torch.float32 and torch.equal(reg.state_dict()[key], value)
    for dtype, expected in [(torch.float64, torch.float64), (torch.float32, torch.float32),
                            (torch.bfloat16, torch.float32), (torch.float64, torch.float64)]:
        model.to(dtype)
        assert reg(lr=0.1)[0].dtype == expected


def test_the_baseline_follows_too():
    model = ref.small_cnn(width=4)
    none = regularizers.build("none", model)
    model.double()
    assert none()[0].dtype == torch.float64
    model.half()
    assert none()[0].dtype == torch.float32 and none()[0].item() == 0.0


@pytest.mark.filterwarnings("ignore:Complex modules")
@pytest.mark.parametrize("name", ["mhe", "rp_comhe", "orthonormal"])
def test_a_dtype_the_math_cannot_take_is_one_line_saying_what_to_do(name):
    model = ref.small_cnn(width=4)
    reg = regularizers.build(name, model, **options(name))
    model.to(torch.complex64)
    with pytest.raises(TypeError, match=r"reads weights of dtype float16, bfloat16, float32 or float64, not "
                                        r"torch.complex64: regularise a floating-point copy"):
        reg()
    with pytest.raises(TypeError, match="not torch.complex64"):
        regularizers.build(name, model, **options(name))
