"""A table or figure made on a stand-in data set (the CIFAR-10 JPEG export under ``dataset=cifar10_jpeg_export``)
says so in words, not only as an override (issue 21): its numbers are never shown as CIFAR-10 numbers."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from comhe.suite import experiments, figures, labels, report  # noqa: E402


def test_the_export_override_is_named_in_words_and_nothing_else_is():
    exp = experiments.load("cifar10_cpu")
    assert labels.stand_in_data(exp) == "" and report.protocol_line(exp) == ""
    exp.overrides = ["dataset=cifar10_jpeg_export"]
    assert labels.stand_in_data(exp).startswith("data: CIFAR-10 JPEG export")
    assert "Every number here is on the CIFAR-10 JPEG export" in report.protocol_line(exp)
    exp.overrides = ["lr=0.05"]
    assert labels.stand_in_data(exp) == "" and "JPEG" not in report.protocol_line(exp)


def test_the_figure_carries_the_words_above_its_panels():
    exp = experiments.load("cifar10_cpu")
    exp.overrides = ["dataset=cifar10_jpeg_export"]
    fig = plt.figure()
    figures.stamp(fig, exp, pd.DataFrame({"git_sha": []}))  # no run records: the footer says "no runs yet"
    texts = [t.get_text() for t in fig.texts]
    plt.close(fig)
    assert any(t.startswith("data: CIFAR-10 JPEG export") for t in texts), texts
    assert any("dataset=cifar10_jpeg_export" in t for t in texts), texts
