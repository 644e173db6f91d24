import json

import pytest

from freqlens.cli import main


@pytest.mark.slow
def test_demo_end_to_end_writes_figures_results_and_report(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--quick", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "attack success rate (ASR)" in printed and "report.html" in printed
    for name in ("heatmap.png", "heatmap_separate.png", "curves.png", "report.html", "results.json"):
        assert (out / name).stat().st_size > 0
    assert (out / "heatmap.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    results = json.loads((out / "results.json").read_text())
    for key in ("cacc", "asr", "false_trigger_rate", "widths", "timings", "config"):
        assert key in results
    steps = results["analysis"]["convergence_steps"]
    assert set(steps) == {"separate", "joint"}
    assert len(steps["joint"]["backdoor"]["low"]) == len(results["widths"])
    assert results["analysis"]["summary"]["joint"]["statement"]
    report = (out / "report.html").read_text()
    # speed spectrum, mode heat map, static spectrum, the two heat maps, the curves
    assert report.count("data:image/png;base64,") == 6
    assert "converged first" in report or "did NOT" in report


def test_demo_refuses_to_overwrite_a_run(tmp_path, capsys):
    (tmp_path / "trajectory").mkdir()
    (tmp_path / "trajectory" / "meta.json").write_text("{}")
    assert main(["demo", "--out", str(tmp_path), "--quick", "--no-progress"]) == 2
    assert "overwrite" in capsys.readouterr().err


def test_cli_help_and_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert "freqlens" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    assert "--out" in capsys.readouterr().out
