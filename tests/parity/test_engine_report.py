"""The one report format: rows stay one line (names with control characters escaped), the
plot rings the first divergence, JUnit counts what failed."""

from xml.etree import ElementTree

from parity.engine.report import CheckResult, junit_xml, plot_rows, report_dict
from core.text import escape_text
from parity.engine.rows import Report, Row, format_table


def _report() -> Report:
    return Report([Row("ok", (1, 2), (1, 2), 0.0, 1.0, 0.0, "pass", "ok", "ok"),
                   Row("bad\nname", (1, 2), (1, 2), 1.0, 1.0, 1.0, "fail", "bad", "bad\nname"),
                   Row("relu", (1, 2), None, None, None, None, "only in torch", None, "relu"),
                   Row("nan", (1, 2), (1, 2), float("inf"), 1.0, float("inf"), "fail", "n",
                       "nan")], 1e-5)


def test_text_table_escapes_names_and_the_verdict_names_the_first_divergence():
    report = _report()
    lines = format_table(report)
    assert len(lines) == 5 and any("bad\\nname" in line for line in lines)
    assert escape_text("tab\there") == "tab\\there"
    assert report.first_divergence_module == "bad\nname" and report.passed is False


def test_plot_rings_the_first_divergence_and_names_it(tmp_path, monkeypatch):
    import matplotlib.axes

    drawn = {}
    original = matplotlib.axes.Axes.scatter

    def scatter(self, x, y, *args, **kwargs):
        if kwargs.get("facecolors") == "none":      # the ring
            drawn["ring"] = (list(x), kwargs.get("label"))
        return original(self, x, y, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "scatter", scatter)
    plot_rows(_report(), tmp_path / "plot.png", "rows")
    assert (tmp_path / "plot.png").read_bytes()[:4] == b"\x89PNG"
    assert drawn["ring"] == ([1], "first divergence: bad\\nname"), drawn


def test_json_and_junit_of_a_failing_result():
    result = CheckResult("t", {"weights": "w"}, _report())
    data = report_dict(result)
    assert data["passed"] is False and data["first_divergence"] == "bad\nname"
    assert data["rows"][3]["rel_to_scale"] is None  # non-finite numbers are null in JSON
    suite = ElementTree.fromstring(junit_xml(result))
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("4", "2", "1")
