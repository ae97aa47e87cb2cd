"""A table never mislabels its runs: an override of a key its rows or columns set is refused with one line (so is
``seed=``); any override that changes the protocol is printed in the md and tex headers and on every figure, which
also says its profile (issue 14, item 1)."""
import matplotlib.pyplot as plt
import pandas as pd
import pytest

from comhe import run
from comhe.suite import experiments, figures, overrides, report, runner
from comhe.train import config


@pytest.mark.parametrize("name, override, key, where", [
    ("table1", "model=cnn9", "model", "column CNN-6"),          # the case: 10 runs under three labels
    ("table1", "regularizer=mhe", "regularizer", "row Baseline"),
    ("table7", "reg.s=1", "reg.s", "row MHE"),                  # rows set it to the columns' ${s} variable
    ("table8", "model_options.width=2", "model_options.width", "column 16/32/64"),
    ("table8", "model_options={width: 2}", "model_options.width", "column 16/32/64"),
    ("fig2", "reg.lambda_hidden=0.5", "reg.lambda_hidden", "every column"),
])
def test_an_override_of_a_layout_key_is_refused(name, override, key, where):
    with pytest.raises(config.ConfigError) as err:
        runner.make_plan([name], "smoke", overrides=[override])
    text = str(err.value)
    assert "\n" not in text and f"{name} sets {key} in its layout" in text and where in text
    assert "docs/reference.md §7" in text


def test_seed_is_refused_with_the_seeds_option():
    with pytest.raises(config.ConfigError, match="seed comes from the seed list; use SEEDS=0,4,5"):
        runner.make_plan(["table1"], "smoke", overrides=["seed=3"])


def test_the_cli_refuses_in_one_line_and_writes_nothing(tmp_path, capsys):
    code = run.main(["table1", "--profile", "smoke", "model=cnn9", "--results", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: override 'model=cnn9': table1 sets model")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("given, printed", [
    (["lr=0.05"], ["lr=0.05"]),
    (["reg.proj_dim=40"], ["reg.proj_dim=40"]),          # AP-CoMHE's k is 30: it changes AP, so it is printed
    (["threads=1", "device=cpu", "tensorboard=true"], []),  # how runs execute, not what they compute
    (["model_options.width=1"], []),                    # the smoke profile's own value: no run changes
    (["lr=0.05", "lr=0.1"], []),                        # the last one wins: back to the protocol
    (["weight_decay=0.0005"], []),                      # the protocol's own value, spelled out
])
def test_only_overrides_that_change_a_run_are_the_protocol_changes(given, printed):
    plan = runner.make_plan(["table1"], "smoke", overrides=given)
    assert plan.experiments[0].overrides == printed


def test_protocol_overrides_are_in_the_md_and_tex_headers_and_the_command():
    plan = runner.make_plan(["table1"], "smoke", overrides=["lr=0.05", "threads=1"])
    exp = plan.experiments[0]
    df = report.collect(exp, plan.cells["table1"], "/nonexistent-runs")
    md, tex = report.render_md(exp, df), report.render_tex(exp, df)
    assert "**Not the paper protocol: overrides lr=0.05 " in md.split("| Method")[0]          # above the table
    assert "`python -m comhe.run table1 --profile smoke lr=0.05`" in md
    head = tex.split(r"\toprule")[0]
    assert r"\multicolumn{10}{l}{\footnotesize Profile smoke. Not the paper protocol: overrides lr=0.05" in head
    plain = runner.make_plan(["table1"], "paper").experiments[0]
    assert "Not the paper protocol" not in report.render_md(plain, report.collect(plain, [], "/nowhere"))


def test_layout_keys_name_where_each_key_is_set():
    keys = overrides.layout_keys(experiments.load("table1"))
    assert keys["model"] == ["column CNN-6", "column CNN-9", "column CNN-15"]
    assert "lr" not in keys and len(keys["regularizer"]) == 5


@pytest.mark.parametrize("kind", sorted(figures.FIGURES))
@pytest.mark.filterwarnings("error:No artists with labels")  # a figure of no finished runs draws no empty legend
def test_every_figure_says_its_profile_and_overrides(kind, tmp_path, monkeypatch):
    exp = experiments.load("fig2" if kind == "sweep" else "fig1" if kind == "dynamics" else "table1", "smoke")
    cells = experiments.plan(exp, ["lr=0.05"])
    df = report.collect(exp, cells, tmp_path)
    exp.figures = [{"kind": kind, **({"flat": ["Baseline"]} if kind == "sweep" else {})}]
    texts = []

    def keep(fig, out, *args, **kwargs):
        figures.stamp(fig, exp, df)
        texts.extend(t.get_text() for t in fig.texts)
        plt.close(fig)
        return []
    monkeypatch.setattr(figures, "_save", keep)
    figures.render(exp, df, cells, tmp_path, tmp_path)
    footer = "\n".join(texts)
    assert "profile smoke" in footer and "overrides lr=0.05: NOT the paper protocol" in footer
    assert f"python -m comhe.run {exp.name} --profile smoke lr=0.05" in footer
    assert isinstance(df, pd.DataFrame)
