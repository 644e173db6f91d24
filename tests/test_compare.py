"""`freqlens report`: runs compared side by side, incomplete runs named, the HTML rendered."""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from freqlens.cli import main
from freqlens.compare import RunError, comparison_rows, config_differences, load_run, load_runs, write_comparison


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two quick demo runs (seeds 0, 1) and a copy of the first relabelled as a defense."""
    root = tmp_path_factory.mktemp("runs")
    for seed in (0, 1):
        assert main(["demo", "--quick", "--seed", str(seed), "--out", str(root / f"seed{seed}"), "--no-progress"]) == 0
    defended = root / "muscle"
    shutil.copytree(root / "seed0", defended)
    results = json.loads((defended / "results.json").read_text())
    results["defense"] = {"name": "muscle"}
    results["asr"], results["cacc"] = 0.25, results["cacc"] - 0.01
    results["config"]["train"]["lr"] = 5e-4
    (defended / "results.json").write_text(json.dumps(results))
    return root


def test_a_run_is_reanalysed_with_its_own_settings(runs):
    run = load_run(runs / "seed0")
    results = json.loads((runs / "seed0" / "results.json").read_text())
    assert run.analysis.widths.tolist() == results["widths"]
    assert run.label == "vanilla" and run.group == results["dataset"]["name"]
    stored = results["analysis"]["convergence_steps"]["joint"]["clean"]["low"]
    recomputed = run.analysis.convergence["joint"]["clean"]["low"].tolist()
    assert [s is None for s in stored] == [s != s for s in recomputed]  # same NaNs (JSON null)


def test_rows_carry_metrics_bands_and_the_shift_against_vanilla(runs):
    loaded, problems = load_runs([runs / "seed0", runs / "muscle"])
    assert not problems
    rows = {r["run"]: r for r in comparison_rows(loaded)}
    assert set(rows) == {"vanilla", "muscle"}
    assert rows["muscle"]["shift_asr"] == pytest.approx(0.25 - rows["vanilla"]["asr"])
    assert rows["muscle"]["shift_cacc"] == pytest.approx(-0.01)
    assert rows["vanilla"]["shift_asr"] == 0.0
    bands = [k for k in rows["vanilla"] if re.fullmatch(r"backdoor_band\d+_step", k)]
    assert len(bands) == loaded[0].analysis.widths.size + 1
    assert config_differences(loaded)["train.lr"] == [loaded[0].config["train.lr"], 5e-4]


def test_same_defense_twice_is_told_apart_by_directory(runs):
    loaded, _ = load_runs([runs / "seed0", runs / "seed1"])
    assert [r.label for r in loaded] == ["vanilla (seed0)", "vanilla (seed1)"]


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda d: None, "no results.json"),
        (lambda d: (d / "results.json").write_text("{"), "not valid JSON"),
        (lambda d: (d / "results.json").write_text(json.dumps({"cacc": 0.5, "freqlens_version": "0.0.1"})),
         r"lacks \['asr', 'analysis', 'widths'\] \(written by freqlens 0.0.1\)"),
    ],
)
def test_unusable_run_directories_say_why(tmp_path, make, match):
    directory = tmp_path / "run"
    directory.mkdir()
    make(directory)
    with pytest.raises(RunError, match=match):
        load_run(directory)


def test_a_missing_trajectory_is_named(runs, tmp_path):
    directory = tmp_path / "no-trajectory"
    directory.mkdir()
    shutil.copy(runs / "seed0" / "results.json", directory / "results.json")
    with pytest.raises(RunError, match="trajectory cannot be read"):
        load_run(directory)


@pytest.fixture(scope="module")
def report(runs, tmp_path_factory):
    """`freqlens report` over vanilla, muscle and a directory that is not a run."""
    root = tmp_path_factory.mktemp("report")
    broken = root / "broken"
    broken.mkdir()
    out = root / "out"
    assert main(["report", str(runs / "seed0"), str(runs / "muscle"), str(broken), "--out", str(out)]) == 0
    return out


def test_report_command_covers_the_rest_and_writes_html_markdown_csv(report):
    out = report
    page = (out / "report.html").read_text()
    assert "Left out" in page and page.count("<img") >= 2 + 2 * 5  # comparison figures + five per run
    markdown = (out / "report.md").read_text()
    assert "| muscle |" in markdown and "Config differences" in markdown
    with open(out / "runs.csv") as file:
        table = list(csv.DictReader(file))
    assert [r["run"] for r in table] == ["vanilla", "muscle"]
    pngs, pdfs = sorted((out / "figures").glob("*.png")), sorted((out / "figures").glob("*.pdf"))
    assert len(pngs) == len(pdfs) == page.count("<img")


def test_runs_of_different_datasets_are_grouped_not_mixed(runs, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(runs / "seed1", other)
    results = json.loads((other / "results.json").read_text())
    results["dataset"]["name"] = "another attack"
    (other / "results.json").write_text(json.dumps(results))
    loaded, _ = load_runs([runs / "seed0", other])
    rows = comparison_rows(loaded)
    assert [r["group"] for r in rows] == [loaded[0].group, "another attack"]
    assert all(r["shift_asr"] == 0.0 for r in rows)  # each is the vanilla run of its own group


def test_left_out_directories_are_reported_on_stderr(runs, tmp_path, capsys):
    assert main(["report", str(runs / "seed0"), str(tmp_path), "--out", str(tmp_path / "out")]) == 0
    assert f"left out {tmp_path}: no results.json" in capsys.readouterr().err


def test_nothing_to_compare_is_one_clear_error(tmp_path, capsys):
    assert main(["report", str(tmp_path / "missing"), "--out", str(tmp_path / "out")]) == 2
    assert "at least one run" in capsys.readouterr().err
    with pytest.raises(ValueError, match="at least one run"):
        write_comparison([], tmp_path / "out")


def _chromium() -> str | None:
    return next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)),
                None)


@pytest.mark.skipif(_chromium() is None, reason="headless Chromium not installed (Debian: apt install chromium)")
def test_html_report_renders_every_figure_in_headless_chromium(report):
    paths = {"html": report / "report.html"}
    dom = subprocess.run(
        [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000",
         "--dump-dom", Path(paths["html"]).resolve().as_uri()],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout
    body = re.search(r"<body[^>]*>", dom).group(0)
    total = int(re.search(r'data-figures-total="(\d+)"', body).group(1))
    loaded_count = int(re.search(r'data-figures-loaded="(\d+)"', body).group(1))
    assert total == paths["html"].read_text().count("<img") > 0
    assert loaded_count == total
