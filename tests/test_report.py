"""The per-run HTML report renders nested settings as tables, never as Python reprs."""

from __future__ import annotations

import html
import re

import matplotlib.pyplot as plt
import numpy as np

from freqlens import analyse
from freqlens.report import write_report
from tests.synthetic import make_trajectory

DETAILS = {
    "timings (s)": {"train_seconds": 12.5, "recording_share": 0.051},
    "probes": {"size": 16, "sets": ["clean", "backdoor"], "plan": {"probe_size": 16, "snapshots": 30}},
    "config": {"model": {"name": "tiny", "max_length": 32}, "data": {"path": "d/<x>", "max_train": None}},
    "warnings": [],
    "runs": [{"seed": 0}, {"seed": 1}],
}


def _values(mapping, prefix=()):
    for key, value in mapping.items():
        if isinstance(value, dict):
            yield from _values(value, (*prefix, key))
        else:
            yield (*prefix, key), value


def test_nested_details_become_nested_tables(tmp_path):
    analysis = analyse(make_trajectory(), num_widths=3)
    page = write_report(tmp_path / "report.html", title="t", analysis=analysis, metrics={"cacc": 0.9},
                        figures={}, details=DETAILS).read_text()
    run = page[page.index("<h2>Run</h2>"):]
    assert "{" not in run and "[" not in run  # no dict or list repr anywhere
    for path, value in _values(DETAILS):
        for key in path[1:]:  # every nested key is a header cell of its own
            assert f"<th>{html.escape(key)}</th>" in run
    assert "<td>clean, backdoor</td>" in run  # a list of names: one line
    assert "<td>d/&lt;x&gt;</td>" in run  # escaped
    assert re.search(r"<th>max_train</th><td>&ndash;</td>", run)  # None: missing
    assert run.count('<table class="mapping">') == 1 + 2 + 3 + 2  # timings, probes (+plan), config (+model, data), runs
    plt.close("all")


def test_render_value_of_plain_and_empty_values():
    from freqlens.report import render_value

    assert render_value(0.123456) == "0.1235"
    assert render_value(True) == "true"
    assert render_value({}) == render_value([]) == render_value(None) == "&ndash;"
    assert render_value("<b>") == "&lt;b&gt;"


def test_the_report_gives_static_spectra_speeds_and_verdicts_with_their_intervals(tmp_path):
    analysis = analyse(make_trajectory(), num_widths=3)
    page = write_report(tmp_path / "report.html", title="t", analysis=analysis, metrics={"cacc": 0.9},
                        figures={}).read_text()
    static = page[page.index("Static target spectrum"):page.index("Learning speed per")]
    for spectrum in analysis.static_spectra.values():
        share = spectrum.low_share["backdoor"]
        assert f"{float(share.estimate):.3g} [{float(share.low):.3g}, {float(share.high):.3g}]" in static
    modes = page[page.index("Learning speed per eigenmode band, joint view"):]
    verdicts = analysis.speed_verdicts["joint"]["modes"]
    d = verdicts.difference
    i = int(np.nanargmax(np.abs(d.estimate)))
    assert f"{d.estimate[i]:.3g} [{d.low[i]:.3g}, {d.high[i]:.3g}]" in modes
    row = modes[modes.index("<td>verdict</td>"):].split("</tr>")[0]
    assert row.count("<td>") == 1 + len(verdicts.outcomes)
    assert "Learning speed per filter width (low part), joint view" in page
    plt.close("all")


def _defense_rows(page: str) -> dict[str, str]:
    section = page[page.index("<h2>Defense</h2>"):]
    table = section[:section.index("</table>")]
    return {html.unescape(k): html.unescape(v)
            for k, v in re.findall(r"<tr><td>([^<]*)</td><td>([^<]*)</td></tr>", table)}


def test_the_run_report_shows_the_clean_examples_and_the_detection_of_a_filtering_defense(tmp_path):
    analysis = analyse(make_trajectory(), num_widths=3)
    defense = {"name": "cube", "lr": 4e-5, "clean_examples": 0, "removed": 230, "trained_on": 1770,
               "detection": {"flagged": 230, "poisoned": 200, "precision": 0.8435, "recall": 0.97, "f1": 0.9023},
               "clusters": 3}
    page = write_report(tmp_path / "filter.html", title="t", analysis=analysis, metrics={"cacc": 0.9},
                        figures={}, defense=defense).read_text()
    rows = _defense_rows(page)
    assert rows == {"defense": "cube", "clean examples used (reference set)": "0",
                    "training examples removed": "230", "training examples trained on": "1770",
                    "flagged as poisoned": "230", "poisoned in the training set": "200",
                    "detection precision (flagged that are poisoned)": "0.8435",
                    "detection recall (poisoned that are flagged)": "0.97", "detection F1": "0.9023"}
    rest = page[page.index("Everything the defense recorded"):]
    assert "<th>clusters</th><td>3</td>" in rest and "<th>lr</th>" in rest and "<th>removed</th>" not in rest
    assert page.index("<h2>Defense</h2>") < page.index("<h2>Static target spectrum")

    older = write_report(tmp_path / "older.html", title="t", analysis=analysis, metrics={"cacc": 0.9},
                         figures={}, defense={"name": "muscle"}).read_text()  # before clean_examples existed
    assert _defense_rows(older) == {"defense": "muscle", "clean examples used (reference set)": "–"}
    assert "Everything the defense recorded" not in older
    demo = write_report(tmp_path / "demo.html", title="t", analysis=analysis, metrics={"cacc": 0.9},
                        figures={}).read_text()
    assert "<h2>Defense</h2>" not in demo
    plt.close("all")
