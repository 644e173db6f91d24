"""benchmarks/sst2_defenses.py: the tables built from results.json files (no run is made here)."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from freqlens.defenses import DEFENSES, Defense, register_defense, unregister_defense

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "sst2_defenses.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("sst2_defenses_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _results(*, cacc=0.8, asr=0.5, ftr=0.1, defense=None) -> dict:
    """A results.json as freqlens writes it, reduced to what the benchmark reads; ``defense`` None:
    as an earlier freqlens wrote it for vanilla (no clean_examples, no detection)."""
    return {"cacc": cacc, "asr": asr, "false_trigger_rate": ftr,
            "defense": defense or {"name": "vanilla", "lr": 4e-5, "trainable_parameters": 22713986},
            "analysis": {"summary": {"joint": {"counts": {"backdoor first": 7},
                                               "speed_counts": {"low": {"backdoor first": 3, "clean first": 8}}},
                                     "separate": {"counts": {"backdoor first": 11}}}},
            "timings": {"recording_share": 0.0907, "total_seconds": 227.7},
            "config": {"model": {"name": "all-MiniLM-L6-v2"}}}  # freqlens records the whole config


FILTER = {"name": "spectral-filter", "lr": 4e-5, "trainable_parameters": 22713986, "clean_examples": 0,
          "removed": 210, "trained_on": 1790,
          "detection": {"flagged": 210, "poisoned": 200, "precision": 0.9, "recall": 0.945, "f1": 0.922}}


def test_the_defenses_are_the_registered_ones_and_a_new_one_is_accepted(bench):
    assert list(bench.DEFENSES) == list(DEFENSES) and "vanilla" in bench.DEFENSES

    class Newcomer(Defense):
        pass

    register_defense("test-newcomer", Newcomer)
    try:
        assert bench.defense_variant("test-newcomer@restart=false") == "test-newcomer@restart=false"
        assert list(bench.DEFENSES)[-1] == "test-newcomer"
    finally:
        unregister_defense("test-newcomer")
    with pytest.raises(Exception, match="expected one of .*'vanilla'.* got 'test-newcomer'"):
        bench.defense_variant("test-newcomer")


def test_a_row_reads_clean_examples_and_detection_and_marks_older_runs_missing(bench):
    old = bench.row("addsent", "vanilla", 0, _results())
    assert [old[k] for k in ("clean_examples", "removed", "precision", "recall", "f1")] == [None] * 5
    assert old["net_backdoor_effect"] == pytest.approx(0.4) and old["speed_first_widths"] == "3/11"
    new = bench.row("addsent", "spectral-filter", 0, _results(asr=0.2, defense=FILTER))
    assert (new["clean_examples"], new["removed"], new["precision"], new["recall"], new["f1"]) == (
        0, 210, 0.9, 0.945, 0.922)
    assert set(new) == set(bench.COLUMNS)
    header, rule, *lines = bench.runs_table([old, new])
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in (header, *lines)]
    assert all(len(c) == len(cells[0]) == rule.count("---") for c in cells)
    position = {name: i for i, name in enumerate(cells[0])}
    for column in ("clean", "removed", "precision", "recall", "F1"):
        assert cells[1][position[column]] == "–"
    assert [cells[2][position[c]] for c in ("clean", "removed", "precision", "recall", "F1")] == [
        "0", "210", "0.900", "0.945", "0.922"]
    assert cells[1][position["trainable"]] == "22,713,986" and cells[1][position["recording"]] == "9.1%"


def test_the_paper_layout_has_defenses_as_rows_attacks_as_columns_and_seed_means(bench):
    rows = []
    for seed, (v_asr, f_asr) in enumerate([(1.0, 0.10), (0.9, 0.20), (0.95, 0.15)]):
        for attack in ("addsent", "badnets"):  # given in the other order than ATTACKS
            rows.append(bench.row(attack, "vanilla", seed, _results(cacc=0.80 + 0.01 * seed, asr=v_asr)))
            rows.append(bench.row(attack, "spectral-filter", seed,
                                  _results(cacc=0.79, asr=f_asr, ftr=0.1, defense=FILTER)))
    rows.append(bench.row("synbkd", "spectral-filter", 0, _results(cacc=0.7, asr=0.3, defense=FILTER)))
    header, rule, vanilla, filtered = bench.paper_table(rows)
    assert header == "| defense | clean | seeds | badnets | addsent | synbkd |" and rule.count("---") == 6
    cells = [c.strip() for c in vanilla.strip("|").split("|")]
    cacc, asr, net = (f"{np.mean(v):.3f} ± {np.std(v, ddof=1):.3f}"
                      for v in ([0.80, 0.81, 0.82], [1.0, 0.9, 0.95], [0.9, 0.8, 0.85]))
    assert cells == ["vanilla", "–", "3", f"{cacc} / {asr} / {net}", f"{cacc} / {asr} / {net}", "–"]
    cells = [c.strip() for c in filtered.strip("|").split("|")]
    assert cells[:3] == ["spectral-filter", "0", "3/3/1"]
    assert cells[3] == "0.790 ± 0.000 / 0.150 ± 0.050 / 0.050 ± 0.050"
    assert cells[5] == "0.700 / 0.300 / 0.200"  # one seed: no spread


def test_no_run_tabulates_the_result_folders_already_there_old_and_new(bench, tmp_path, monkeypatch, capsys):
    out = tmp_path / "runs"
    for name, results in (("addsent-vanilla-s0", _results()),  # an earlier freqlens: no new fields
                          ("addsent-muscle_reference_size96-s0", _results(asr=0.4, defense={
                              "name": "muscle", "lr": 5e-4, "trainable_parameters": 80000, "clean_examples": 96}))):
        (out / name).mkdir(parents=True)
        (out / name / "results.json").write_text(json.dumps(results))
    monkeypatch.setattr(bench, "ROOT", tmp_path)
    monkeypatch.setattr(bench, "machine", lambda: "test machine")
    monkeypatch.setattr(sys, "argv", ["sst2_defenses.py", "--no-run", "--attacks", "addsent", "--out", str(out),
                                      "--defenses", "vanilla", "muscle@reference_size=96", "reference-only"])
    assert bench.main() == 0
    md = (tmp_path / "benchmarks" / "results" / "sst2_defenses_cpu.md").read_text()
    assert "| addsent | vanilla | 0 | 0.800 | 0.500 | 0.100 | 0.400 | – | – | – | – | – | – | – |" in md
    assert "| addsent | muscle@reference_size=96 | 0 | 0.800 | 0.400 | 0.100 | 0.300 | – | – | 96 | – |" in md
    assert "## Defenses x attacks" in md and "| muscle@reference_size=96 | 96 | 1 | 0.800 / 0.400 / 0.300 |" in md
    assert "| reference-only |" not in md  # not run: left out, not an error
    csv_text = (tmp_path / "benchmarks" / "results" / "sst2_defenses_cpu.csv").read_text().splitlines()
    assert csv_text[0].split(",")[7:14] == ["frr", "far", "clean_examples", "removed", "precision", "recall", "f1"]


def test_each_row_says_the_device_its_run_recorded_and_the_header_lists_them(bench, tmp_path, monkeypatch):
    out = tmp_path / "runs"
    for name, device in (("badnets-vanilla-s0", "cuda:0 (NVIDIA H200)"), ("badnets-vanilla-s1", "cpu"),
                         ("badnets-vanilla-s2", None)):  # the last: a freqlens that did not record it
        (out / name).mkdir(parents=True)
        results = {**_results(), **({"environment": {"device": device}} if device else {})}
        (out / name / "results.json").write_text(json.dumps(results))
    monkeypatch.setattr(bench, "ROOT", tmp_path)
    monkeypatch.setattr(bench, "machine", lambda: "the tabulating machine")
    monkeypatch.setattr(sys, "argv", ["sst2_defenses.py", "--no-run", "--attacks", "badnets", "--out", str(out),
                                      "--defenses", "vanilla", "--seeds", "0", "1", "2"])
    assert bench.main() == 0
    md = (tmp_path / "benchmarks" / "results" / "sst2_defenses_cpu.md").read_text()
    assert "Tabulated on: the tabulating machine" in md and "Runs made on: CPU, NVIDIA H200 (" in md
    lines = {int(line.split("|")[3]): line for line in md.splitlines() if line.startswith("| badnets | vanilla |")}
    assert lines[0].rstrip().endswith("| NVIDIA H200 |") and lines[1].rstrip().endswith("| CPU |")
    assert lines[2].rstrip().endswith("| – |")


def test_each_run_is_kept_in_the_repository_and_the_table_rebuilds_from_it_alone(bench, tmp_path, monkeypatch):
    out = tmp_path / "runs"
    (out / "badnets-vanilla-s1").mkdir(parents=True)
    (out / "badnets-vanilla-s1" / "results.json").write_text(json.dumps(_results(cacc=0.83)))
    monkeypatch.setattr(bench, "ROOT", tmp_path)
    monkeypatch.setattr(bench, "machine", lambda: "test machine")
    argv = ["sst2_defenses.py", "--no-run", "--attacks", "badnets", "--defenses", "vanilla", "--seeds", "1"]
    monkeypatch.setattr(sys, "argv", [*argv, "--out", str(out)])
    assert bench.main() == 0
    kept = tmp_path / "benchmarks" / "results" / "runs" / "cpu" / "badnets-vanilla-s1.json"
    assert json.loads(kept.read_text())["cacc"] == 0.83
    md = tmp_path / "benchmarks" / "results" / "sst2_defenses_cpu.md"
    md.unlink()
    monkeypatch.setattr(sys, "argv", [*argv, "--out", str(tmp_path / "fresh-clone")])  # no run folders at all
    assert bench.main() == 0
    assert "| badnets | vanilla | 1 | 0.830 |" in md.read_text()


def test_rows_of_an_earlier_table_fill_in_the_runs_not_found_and_are_marked(bench, tmp_path, monkeypatch):
    earlier = tmp_path / "earlier.csv"
    earlier.write_text("attack,defense,seed,cacc,asr,false_trigger_rate,net_backdoor_effect,best_epoch,lr\n"
                       "badnets,vanilla,0,0.83,0.81,0.1375,0.6725,,4e-05\n"
                       "badnets,vanilla,1,0.833,0.96,0.135,0.825,,4e-05\n"
                       "addsent,vanilla,0,0.818,1.0,0.182,0.818,,4e-05\n")
    out = tmp_path / "runs"
    (out / "badnets-vanilla-s0").mkdir(parents=True)
    (out / "badnets-vanilla-s0" / "results.json").write_text(json.dumps(_results(cacc=0.5)))
    monkeypatch.setattr(bench, "ROOT", tmp_path)
    monkeypatch.setattr(bench, "machine", lambda: "test machine")
    monkeypatch.setattr(sys, "argv", ["sst2_defenses.py", "--no-run", "--attacks", "badnets", "--defenses", "vanilla",
                                      "--seeds", "0", "1", "--out", str(out), "--include", str(earlier)])
    assert bench.main() == 0
    md = (tmp_path / "benchmarks" / "results" / "sst2_defenses_cpu.md").read_text()
    assert "| badnets | vanilla | 0 | 0.500 |" in md  # a run found wins over the earlier table
    assert "| badnets | vanilla † | 1 | 0.833 | 0.960 | 0.135 | 0.825 | – | – | – |" in md
    assert "earlier.csv" in md and "addsent" not in md.split("## Defenses x attacks")[0]  # not asked for


DETECTED = {"strip": {"name": "strip", "frr": 0.01, "far": 0.3, "cacc": 0.79, "asr": 0.25, "false_trigger_rate": 0.1,
                      "net_backdoor_effect": 0.15, "seconds": 30.0},
            "rap": {"name": "rap", "frr": 0.02, "far": 0.1, "cacc": 0.78, "asr": 0.05, "false_trigger_rate": 0.08,
                    "net_backdoor_effect": -0.03, "seconds": 60.0}}


def test_each_detector_a_run_applied_is_a_row_after_its_defense(bench, tmp_path, monkeypatch):
    out = tmp_path / "runs"
    for attack, detected in (("badnets", DETECTED), ("addsent", None)):
        (out / f"{attack}-vanilla-s0").mkdir(parents=True)
        results = {**_results(), **({"detectors": detected} if detected else {})}
        (out / f"{attack}-vanilla-s0" / "results.json").write_text(json.dumps(results))
    monkeypatch.setattr(bench, "ROOT", tmp_path)
    monkeypatch.setattr(bench, "machine", lambda: "test machine")
    monkeypatch.setattr(sys, "argv", ["sst2_defenses.py", "--no-run", "--attacks", "badnets", "addsent",
                                      "--defenses", "vanilla", "--detectors", "strip", "rap", "--out", str(out)])
    assert bench.main() == 0
    md = (tmp_path / "benchmarks" / "results" / "sst2_defenses_cpu.md").read_text()
    runs, paper = md.split("## Defenses x attacks")
    lines = [line for line in runs.splitlines() if line.startswith("| badnets") or line.startswith("| addsent")]
    assert [line.split("|")[2].strip() for line in lines] == ["vanilla", "vanilla", "vanilla + strip",
                                                              "vanilla + rap"]  # defense, attack, then detectors
    assert "| badnets | vanilla + strip | 0 | 0.790 | 0.250 | 0.100 | 0.150 | 0.010 | 0.300 |" in runs
    assert "| vanilla + rap | – | 1 | 0.780 / 0.050 / -0.030 | – |" in paper  # badnets only: addsent has none
    assert bench.missing_detectors({"detectors": DETECTED}, ["strip", "onion"]) == ["onion"]


def test_a_run_that_fails_is_listed_with_its_reason(bench, tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "ROOT", tmp_path)
    monkeypatch.setattr(bench, "machine", lambda: "test machine")

    def refused(command, stdout, **kwargs):
        stdout.write("Error: Expected `detector.onion.lm` 'gpt2' to load but it is not available offline.\n")
        return 2

    monkeypatch.setattr(bench.subprocess, "call", refused)
    monkeypatch.setattr(sys, "argv", ["sst2_defenses.py", "--attacks", "badnets", "--defenses", "vanilla",
                                      "--detectors", "onion", "--out", str(tmp_path / "runs")])
    out = tmp_path / "runs"
    (out / "badnets-vanilla-s0").mkdir(parents=True)  # an earlier run without the detector: its rows stay
    (out / "badnets-vanilla-s0" / "results.json").write_text(json.dumps(_results(cacc=0.81)))
    assert bench.main() == 1
    md = (tmp_path / "benchmarks" / "results" / "sst2_defenses_cpu.md").read_text()
    reason = "Not run: badnets vanilla seed 0: exit 2 (detectors onion): Error: Expected `detector.onion.lm` 'gpt2'"
    assert reason in md and "| badnets | vanilla | 0 | 0.810 |" in md
    monkeypatch.setattr(sys, "argv", [*sys.argv, "--no-run"])  # the reason is kept: a rebuilt table says it
    assert bench.main() == 0
    md = (tmp_path / "benchmarks" / "results" / "sst2_defenses_cpu.md").read_text()
    assert reason in md and "| badnets | vanilla | 0 | 0.810 |" in md


def test_only_the_detectors_asked_for_get_rows_and_a_run_without_one_says_so(bench, tmp_path, monkeypatch):
    out = tmp_path / "runs"
    (out / "badnets-vanilla-s0").mkdir(parents=True)
    broken = {**DETECTED, "onion": {"name": "onion", "error": "ValueError: no language model"},
              "strip": {**DETECTED["strip"], "asr": None, "net_backdoor_effect": float("nan")}}
    (out / "badnets-vanilla-s0" / "results.json").write_text(json.dumps({**_results(), "detectors": broken}))
    (out / "badnets-vanilla-s1").mkdir(parents=True)
    (out / "badnets-vanilla-s1" / "results.json").write_text(json.dumps({**_results(), "detectors": DETECTED}))
    (out / "badnets-early-loss-s0").mkdir(parents=True)
    (out / "badnets-early-loss-s0" / "results.json").write_text(json.dumps(_results()))
    monkeypatch.setattr(bench, "ROOT", tmp_path)
    monkeypatch.setattr(bench, "machine", lambda: "test machine")
    monkeypatch.setattr(sys, "argv", ["sst2_defenses.py", "--no-run", "--attacks", "badnets", "--seeds", "0", "1",
                                      "--defenses", "vanilla", "early-loss", "--detectors", "strip", "--out", str(out)])
    assert bench.main() == 0
    md = (tmp_path / "benchmarks" / "results" / "sst2_defenses_cpu.md").read_text()
    runs, paper = md.split("## Defenses x attacks")
    assert "vanilla + rap" not in md and "vanilla + onion" not in md  # not asked for / failed: no rows
    assert "| badnets | vanilla + strip | 0 | 0.790 | – | 0.100 | – |" in runs  # None and NaN shown as –
    assert "| vanilla + strip | – | 2 | 0.790 ± 0.000 / 0.250 (n=1) / 0.150 (n=1) |" in paper
    assert "Not run: badnets early-loss seed 0: its results.json has no strip" in md


def _config(*, epochs=2, max_train=2000, seed=0, name="vanilla", reference_size=None, pure=False) -> dict:
    """The part of a results.json's ``config`` that the benchmark checks, as freqlens writes it."""
    return {"data": {"max_train": max_train, "max_eval": 400, "path": "/elsewhere/badnets"},
            "train": {"epochs": epochs, "lr": 4e-05, "seed": seed},
            "defense": {"name": name, "reference_size": reference_size, "ga": {"pure": pure}}}


# a stored run of other settings than the table's: (the table's arguments, the stored run's config)
OTHER_SETTINGS = {
    "budget": (["--budget", "paper"], _config(epochs=2)),  # a cpu-budget run where the paper table looks
    "--set": (["--suffix", "_full", "--set", "data.max_train=100000"], _config()),
    "seed": ([], _config(seed=1)),
    "defense setting": (["--defenses", "muscle@reference_size=32,ga.pure=true"],
                        _config(name="muscle", reference_size=32, pure=False)),
    "defense": (["--defenses", "cube"], _config(name="early-loss")),
    # a default changed since the run: early-loss's first phase took every example before `first_size`
    "changed default": (["--defenses", "early-loss"],
                        {**_config(), "defense": {"name": "early-loss", "options": {"rate": 0.2, "restart": True}}}),
}


@pytest.mark.parametrize("where", ["run folder", "archive"])
@pytest.mark.parametrize("kind", sorted(OTHER_SETTINGS))
def test_a_stored_run_of_other_settings_is_neither_tabulated_nor_archived(bench, tmp_path, monkeypatch, kind, where):
    """The fault this guards: a paper-budget table rebuilt with --no-run took the cpu-budget run of the
    same name from the shared run folder, and copied it over the paper run in the archive."""
    extra, config = OTHER_SETTINGS[kind]
    argv = ["sst2_defenses.py", "--attacks", "badnets", "--defenses", "vanilla", "--out", str(tmp_path / "runs"),
            *extra]
    monkeypatch.setattr(bench, "ROOT", tmp_path)
    monkeypatch.setattr(bench, "machine", lambda: "test machine")
    monkeypatch.setattr(sys, "argv", argv)
    args_budget = "paper" if "paper" in extra else "cpu"
    suffix = "_full" if "_full" in extra else ""
    defense = extra[extra.index("--defenses") + 1] if "--defenses" in extra else "vanilla"
    name = f"badnets-{bench.run_name(defense)}-s0"
    wrong = {**_results(cacc=0.5), "config": config}
    stored = (tmp_path / "runs" / name / "results.json" if where == "run folder"
              else tmp_path / "benchmarks" / "results" / "runs" / f"{args_budget}{suffix}" / f"{name}.json")
    stored.parent.mkdir(parents=True)
    stored.write_text(json.dumps(wrong))
    monkeypatch.setattr(sys, "argv", [*argv, "--no-run"])
    assert bench.main() == 0
    md = (tmp_path / "benchmarks" / "results" / f"sst2_defenses_{args_budget}{suffix}.md").read_text()
    assert "| 0.500 |" not in md  # not tabulated
    assert f"Not run: badnets {defense} seed 0: {stored} has " in md  # and the table says why
    kept = tmp_path / "benchmarks" / "results" / "runs" / f"{args_budget}{suffix}" / f"{name}.json"
    assert not kept.is_file() or json.loads(kept.read_text()) == wrong  # nothing copied over the archive

    def rerun(command, stdout, **kwargs):  # the run made again, with the table's settings
        out = Path(command[command.index("--out") + 1])
        settings = dict(item.partition("=")[::2] for item in command if "=" in item)
        config = {"train": {"epochs": int(settings["train.epochs"]), "seed": int(settings["train.seed"])},
                  "defense": {"name": settings["defense.name"]}}
        (out / "results.json").write_text(json.dumps({**_results(cacc=0.9), "config": config}))
        return 0

    monkeypatch.setattr(bench.subprocess, "call", rerun)
    monkeypatch.setattr(sys, "argv", argv)
    assert bench.main() == 1  # a run would write over the stored one: refused (a failure), the table says so
    assert json.loads(stored.read_text()) == wrong
    md = (tmp_path / "benchmarks" / "results" / f"sst2_defenses_{args_budget}{suffix}.md").read_text()
    assert "not run over it; give a table of other settings its own --suffix" in md
    stored.unlink()  # deleted by hand: now it is run again
    assert bench.main() == 0
    assert json.loads(kept.read_text())["cacc"] == 0.9


def test_settings_compare_as_numbers_or_text_and_unrecorded_keys_cannot_disagree(bench):
    results = {"config": {"train": {"lr": 4e-05, "epochs": 10}, "defense": {"ga": {"pure": True}}}}
    assert bench.mismatch(results, ["train.lr=4e-5", "train.epochs=10", "defense.ga.pure=true"]) is None
    assert bench.mismatch(results, ["train.epochs=2", "train.epochs=10"]) is None  # the last of a key wins
    assert bench.mismatch(results, ["defense.options.rate=0.3", "model.dtype=bfloat16"]) is None  # not recorded
    assert bench.mismatch(results, ["train.lr=2e-5"]) == "has train.lr=4e-05, not 2e-05"
    assert bench.mismatch(results, ["defense.ga.pure=false"]) == "has defense.ga.pure=true, not false"
    assert bench.mismatch({}, ["train.epochs=10"]) is None  # a freqlens that recorded no config


def test_expected_settings_are_parsed_as_set_parses_them(bench):
    """Keys stripped, TOML values, the flat defense keys of earlier versions nested, text compared exactly."""
    results = {"config": {"train": {"lr": 4e-05}, "defense": {"name": "abl", "abl": {"budget": "shared"}}}}
    assert bench.mismatch(results, [" train.lr = 4e-5 ", "defense.name=abl", "defense.abl.budget=shared"]) is None
    shared = "defense.abl.budget=shared"
    assert bench.mismatch(results, ["defense.name=abl", shared, "defense.abl_gamma=0.5"]) is None  # flat, nested
    assert bench.mismatch(results, ["defense.name=abl", shared, "defense.abl_gamma=0.7"]) == (
        "has defense.abl.gamma=0.5, not 0.7")  # the stored run recorded no gamma: read at its default
    assert bench.mismatch(results, ["defense.name=abl", "defense.abl.budget=Shared"]) == (
        'has defense.abl.budget="shared", not "Shared"')
    assert bench.mismatch(results, ["train.lr=\"4e-5\""]) == 'has train.lr=4e-05, not "4e-5"'  # text is not a number


@pytest.mark.parametrize("name", list(DEFENSES))
def test_a_run_of_every_defense_at_todays_defaults_agrees_and_one_changed_setting_does_not(bench, name):
    """Every registered defense: a run stored with today's defaults counts for the plain name; the same
    run with one of its defense settings changed (as a run made before that default changed) does not."""
    from freqlens.defenses.registry import DefenseConfig
    from freqlens.settings import build

    class Args:
        budget, set = "cpu", []

    config = json.loads(json.dumps(dataclasses.asdict(build(DefenseConfig, {"name": name}, "defense")), default=str))
    stored = {"config": {"train": {"epochs": 2, "lr": 4e-05, "seed": 0}, "defense": config}}
    assert bench.mismatch(stored, bench.settings_of(name, 0, Args)) is None
    changed = json.loads(json.dumps(stored))
    changed["config"]["defense"]["select"] = "last" if config["select"] != "last" else "best-dev"
    assert "not today's default" in bench.mismatch(changed, bench.settings_of(name, 0, Args))
    chosen = "last" if config["select"] != "last" else "best-dev"
    assert bench.mismatch(changed, bench.settings_of(f"{name}@select={chosen}", 0, Args)) is None


def test_an_early_loss_or_abl_run_of_before_a_default_changed_is_read_as_it_ran(bench):
    """early-loss's first phase took every example before `options.first_size` (today 1024); ABL's phases
    shared train.epochs before `abl.budget` (today "full")."""
    class Args:
        budget, set = "cpu", []

    early = {"config": {"defense": {"name": "early-loss", "options": {"rate": 0.2, "first_epochs": 1}}}}
    assert "first_size=\"all\", not today's default 1024" in bench.mismatch(
        early, bench.settings_of("early-loss", 0, Args))
    assert bench.mismatch(early, bench.settings_of("early-loss@options.first_size=all", 0, Args)) is None
    abl = {"config": {"defense": {"name": "abl", "abl": {"isolation_rate": 0.01}}}}
    assert "budget=\"shared\"" in bench.mismatch(abl, bench.settings_of("abl", 0, Args))
    assert bench.mismatch(abl, bench.settings_of("abl@abl.budget=shared", 0, Args)) is None


@pytest.mark.parametrize("environment, shown", [
    ({"device": "cuda:0 (NVIDIA H200)"}, "NVIDIA H200"),
    ({"device": "cuda:0 (NVIDIA A100 (MIG 1g.10gb))"}, "NVIDIA A100 (MIG 1g.10gb)"),  # only the outer bracket
    ({"device": "cpu"}, "CPU"),
    ({"device": "mps"}, "MPS"),
    ({}, None), ("cpu", None), ({"device": 3}, None), (None, None),  # not recorded, or not as freqlens writes it
])
def test_the_device_column_shortens_what_the_run_recorded(bench, environment, shown):
    assert bench._device({"environment": environment}) == shown


def test_a_bar_in_a_name_does_not_break_the_markdown_tables(bench):
    rows = [bench.row("badnets", "my|defense", 0, {**_results(), "environment": {"device": "cuda:0 (a|b)"}})]
    def cells(line):  # the column separators: bars not escaped
        return len(re.findall(r"(?<!\\)\|", line))

    for table in (bench.runs_table(rows), bench.paper_table(rows)):
        assert cells(table[2]) == cells(table[0])
    assert "my\\|defense" in bench.runs_table(rows)[2] and "a\\|b" in bench.runs_table(rows)[2]
    assert bench.paper_table(rows)[2].startswith("| my\\|defense |")


@pytest.mark.parametrize("extra, code", [(["--no-run"], 0), ([], 1), (["--detectors", "strip"], 1)])
def test_a_matching_run_folder_never_copies_over_an_archived_run_of_other_settings(bench, tmp_path, monkeypatch,
                                                                                   extra, code):
    """The run folder holds today's run, the committed archive one of other settings (e.g. a GPU run
    copied back while an older CPU run sits in runs/): the folder's run is tabulated, the archive kept;
    where a detector is asked for, the detector run is not made over the archive (a failure, said), and
    the folder's row stays."""
    monkeypatch.setattr(bench, "ROOT", tmp_path)
    monkeypatch.setattr(bench, "machine", lambda: "test machine")
    local = tmp_path / "runs" / "badnets-vanilla-s0" / "results.json"
    kept = tmp_path / "benchmarks" / "results" / "runs" / "cpu" / "badnets-vanilla-s0.json"
    for path, content in ((local, {**_results(cacc=0.8), "config": _config()}),
                          (kept, {**_results(cacc=0.5), "config": _config(epochs=3)})):
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(content))
    archived = kept.read_text()
    monkeypatch.setattr(bench.subprocess, "call", lambda *a, **k: pytest.fail("nothing is to be run"))
    monkeypatch.setattr(sys, "argv", ["sst2_defenses.py", "--attacks", "badnets", "--defenses", "vanilla",
                                      "--out", str(tmp_path / "runs"), *extra])
    assert bench.main() == code
    assert kept.read_text() == archived
    md = (tmp_path / "benchmarks" / "results" / "sst2_defenses_cpu.md").read_text()
    assert "| badnets | vanilla | 0 | 0.800 |" in md
    assert f"{kept} has train.epochs=3, not 2 (not used)" in md

def test_equivalent_defense_settings_name_one_run(bench):
    names = {bench.run_name(d) for d in ('early-loss@options.first_size=all', 'early-loss@options.first_size="all"',
                                         'early-loss@ options.first_size = all ')}
    assert names == {"early-loss_options_first_sizeall"}
    assert bench.run_name("muscle@ga.subspace=4,ga.pure=true") == "muscle_ga_subspace4_ga_puretrue"
    assert bench.run_name("early-loss@options.rate=0.3") == "early-loss_options_rate0.3"


@pytest.mark.parametrize("stored, given", [(True, "1"), (1, "true"), (False, "0"), ([True], "[1]")])
def test_a_boolean_is_not_a_number(bench, stored, given):
    assert bench.mismatch({"config": {"analysis": {"x": stored}}}, [f"analysis.x={given}"]) is not None


def test_a_malformed_set_is_refused_before_anything_runs(bench, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["sst2_defenses.py", "--set", "train.epochs"])
    with pytest.raises(SystemExit) as exit_info:
        bench.main()
    assert exit_info.value.code == 2
    assert "argument --set: Expected an override like `section.key=value`" in capsys.readouterr().err


def test_defense_settings_split_at_commas_outside_brackets_and_quotes(bench):
    assert bench.variant_settings('mslr@mslr.bands=[1,2],mslr.rank=2') == ["mslr.bands=[1,2]", "mslr.rank=2"]
    assert bench.variant_settings('x@a="b,c",d={e=1,f=2}') == ['a="b,c"', "d={e=1,f=2}"]
    assert bench.variant_settings("vanilla") == []
    assert "/" not in bench.run_name('x@a="a/b"') and " " not in bench.run_name("x@a={b=1}")
    assert bench.run_name("lora@lr=5e-4") == "lora_lr5e-4"  # numbers as written: earlier run folders found


@pytest.mark.parametrize("argv, message", [
    (["--defenses", "muscle@reference_size"], "'muscle@reference_size'"),  # no value
    (["--set", "train.lr=1", "--set", "train.lr.x=2"], "to be a table"),  # two settings that clash
    (["--defenses", "early-loss@options.first_size=all", 'early-loss@options.first_size="all"'], "the same run"),
])
def test_settings_that_cannot_all_apply_or_name_one_run_twice_are_refused_before_anything_runs(
        bench, monkeypatch, capsys, argv, message):
    monkeypatch.setattr(sys, "argv", ["sst2_defenses.py", *argv])
    monkeypatch.setattr(bench.subprocess, "call", lambda *a, **k: pytest.fail("nothing is to be run"))
    with pytest.raises(SystemExit) as exit_info:
        bench.main()
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("content", [[], {"cacc": 0.9}, {**_results(), "config": {}}])
def test_a_stored_file_that_records_no_config_is_not_used(bench, tmp_path, monkeypatch, content):
    monkeypatch.setattr(bench, "ROOT", tmp_path)
    monkeypatch.setattr(bench, "machine", lambda: "test machine")
    stored = tmp_path / "runs" / "badnets-vanilla-s0" / "results.json"
    stored.parent.mkdir(parents=True)
    stored.write_text(json.dumps(content))
    monkeypatch.setattr(sys, "argv", ["sst2_defenses.py", "--attacks", "badnets", "--defenses", "vanilla",
                                      "--out", str(tmp_path / "runs"), "--no-run"])
    assert bench.main() == 0
    md = (tmp_path / "benchmarks" / "results" / "sst2_defenses_cpu.md").read_text()
    assert "records no config, so its settings cannot be told (not used)" in md

