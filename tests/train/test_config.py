"""Config: typed overrides, unknown keys with suggestions, range checks, safe YAML."""
import pytest

from comhe.train import config
from comhe.train.config import ConfigError


def test_defaults_are_the_official_protocol():
    cfg = config.resolve()
    assert (cfg["iterations"], cfg["milestones"], cfg["lr"], cfg["batch_size"]) == (75000, [30000, 50000, 65000],
                                                                                    0.1, 128)
    assert (cfg["momentum"], cfg["weight_decay"], cfg["loss"], cfg["label_smoothing"]) == (0.9, 5e-4, "official",
                                                                                           0.01)
    assert cfg["eval_every"] == 500 and cfg["model"] == "cnn9" and cfg["dataset"] == "cifar100"


def test_typed_overrides():
    cfg = config.resolve(["lr=0.05", "iterations=100", "milestones=[10, 50]", "regularizer=rp_comhe",
                          "reg.proj_dim=30", "model_options.width=2", "wd_exclude_bn=true"])
    assert cfg["lr"] == 0.05 and cfg["iterations"] == 100 and cfg["milestones"] == [10, 50]
    assert cfg["reg"] == {"proj_dim": 30} and cfg["model_options"] == {"width": 2} and cfg["wd_exclude_bn"] is True
    assert config.resolve(["lr=1"])["lr"] == 1  # an int where a float is expected is fine
    assert config.resolve(["regularizer=mhe", "reg.s=a2"])["reg"] == {"s": "a2"}


@pytest.mark.parametrize("override, message", [
    ("learning_rate=0.1", "unknown config key 'learning_rate'"),
    ("itertions=5", "closest: iterations"),
    ("lr=fast", "lr .*must be float"),
    ("iterations=1.5", "iterations .*must be int"),
    ("augment=1", "augment .*must be bool"),
    ("lr", "not key=value"),
    ("foo.bar=1", "only data, model_options, reg take dotted keys"),
])
def test_bad_overrides(override, message):
    with pytest.raises(ConfigError, match=message):
        config.resolve([override])


@pytest.mark.parametrize("overrides, message", [
    (["lr=-0.1"], "lr must be > 0"),
    (["iterations=0"], "iterations must be > 0"),
    (["milestones=[50, 10]"], "milestones must be increasing"),
    (["lr_decay=2"], r"lr_decay must be in \(0, 1\]"),
    (["loss=hinge"], "loss must be one of official, cross_entropy"),
    (["regularizer=rp_comhe", "reg.proj_dimm=3"], "unknown option reg.proj_dimm .*closest: proj_dim"),
    (["regularizer=rp_comhe", "reg.proj_dim=x"], "reg.proj_dim must be int"),
    (["regularizer=mhe", "reg.s=a3"], "reg.s: unknown power s='a3'; valid: 0, 1, 2, a0, a1, a2"),
    (["regularizer=rp"], "unknown regulariser 'rp'"),
    (["model=cnn10"], "unknown model 'cnn10'"),
    (["model_options.depth=3"], "unknown option model_options.depth for 'cnn9'"),
    (["dataset=cifar1000"], "unknown dataset 'cifar1000'"),
])
def test_validation(overrides, message):
    with pytest.raises(ConfigError, match=message):
        config.resolve(overrides)


def test_yaml_file_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: [0.1\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        config.load(bad)
    code = tmp_path / "code.yaml"
    code.write_text("lr: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):  # safe_load refuses python tags
        config.load(code)
    listing = tmp_path / "list.yaml"
    listing.write_text("- lr\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        config.load(listing)
    with pytest.raises(ConfigError, match="does not exist"):
        config.load(tmp_path / "missing.yaml")
    good = tmp_path / "good.yaml"
    good.write_text("regularizer: hs_mhe\nreg: {s: 0}\n")
    cfg = config.load(good, ["seed=3"])
    assert cfg["regularizer"] == "hs_mhe" and cfg["reg"] == {"s": 0} and cfg["seed"] == 3


def test_option_checks_build_the_model_without_moving_the_global_rng():
    """Validation builds the model and regulariser (He-init draws) to check their options; a config read after
    seeding must leave the caller's random stream where it was."""
    import torch
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    cfg = config.resolve(["model=cnn15", "regularizer=ap_comhe", "model_options.width=1.5"])  # a new setting: built
    assert torch.equal(torch.rand(3), expected) and cfg["regularizer"] == "ap_comhe"
    with pytest.raises(ConfigError, match=r"regularizer 'ap_comhe': proj_dim must be an integer >= 1, got 0"):
        config.resolve(["model=cnn15", "regularizer=ap_comhe", "reg.proj_dim=0"])
