"""`freqlens report`: runs compared side by side, incomplete runs named, the HTML rendered."""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from freqlens.cli import main
from freqlens.compare import (
    RunError,
    comparison_rows,
    config_differences,
    configurations,
    load_run,
    load_runs,
    seed_summary,
    write_comparison,
)
from freqlens.recording.storage import load_trajectory
from freqlens.spectral.widths import resolvable_widths


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A quick demo run, a copy relabelled as a defense, and a copy that differs only in ``train.seed``."""
    root = tmp_path_factory.mktemp("runs")
    assert main(["demo", "--quick", "--seed", "0", "--out", str(root / "seed0"), "--no-progress"]) == 0
    results = json.loads((root / "seed0" / "results.json").read_text())  # the quick demo's model may put every
    results["majority_prediction_share"] = 0.55  # clean input in one class; these tests need a baseline
    (root / "seed0" / "results.json").write_text(json.dumps(results))
    seed1 = root / "seed1"
    shutil.copytree(root / "seed0", seed1)
    results = json.loads((seed1 / "results.json").read_text())
    results["config"]["train"]["seed"] = 1
    (seed1 / "results.json").write_text(json.dumps(results))
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


# ------------------------------------------------------------- grouping: one experiment, several defenses
import hashlib  # noqa: E402

import freqlens.compare as compare_module  # noqa: E402
from freqlens.compare import NOT_RECORDED, experiment_fields, groups  # noqa: E402
from freqlens.config import ExperimentConfig  # noqa: E402
from freqlens.data.identity import dataset_identity  # noqa: E402

OB_TRAIN = "mix/0.1/train-poison.csv"


def _ob_config(path="/data/poison_data/sst-2/1/addsent", *, train=OB_TRAIN, target=1, max_train=None,
               max_eval=None, defense="vanilla", seed=0, lr=4e-5, epochs=2, model="minilm", fmt="openbackdoor",
               attack="none", rate=0.1):
    """A config as `freqlens run` stores it (ExperimentConfig.to_dict())."""
    defense_section = {"name": defense, **({"lora": {"r": 8}} if defense == "lora" else {})}
    return ExperimentConfig.from_dict({
        "model": {"name": model}, "data": {"path": path, "train": train, "target_label": target,
                                           "max_train": max_train, "max_eval": max_eval, "format": fmt},
        "attack": {"name": attack, "rate": rate}, "defense": defense_section,
        "train": {"seed": seed, "lr": lr, "epochs": epochs}}).to_dict()


def _ob_name(config) -> str:
    """The name freqlens.data.loaders.load_openbackdoor gives: the last two folders and the training file."""
    root = Path(config["data"]["path"])
    return f"{root.parent.name}/{root.name} ({config['data']['train']})"


def _variant(runs, root, name, config, *, asr, cacc=0.8, identity=None):
    """A copy of the demo run whose results.json says it ran ``config`` with these metrics;
    without ``identity`` it is a run of an older freqlens that recorded none (neither in
    results.json nor in the trajectory's meta.json)."""
    target = root / name
    shutil.copytree(runs / "seed0", target)
    results = json.loads((target / "results.json").read_text())
    results["config"] = config
    results["dataset"] = {"name": _ob_name(config), **({"identity": identity} if identity else {})}
    results.pop("defense", None)
    results.update(asr=asr, cacc=cacc, false_trigger_rate=0.1, majority_prediction_share=0.55)  # not collapsed
    (target / "results.json").write_text(json.dumps(results))
    _set_meta_identity(target, identity)
    return target


def _set_meta_dataset(target, name):
    meta_path = target / "trajectory" / "meta.json"
    meta_path.write_text(json.dumps({**json.loads(meta_path.read_text()), "dataset": name}))


def _set_meta_identity(target, identity):
    meta_path = target / "trajectory" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta.pop("dataset_identity", None)
    meta.pop("config", None)
    if identity:
        meta["dataset_identity"] = identity
    meta_path.write_text(json.dumps(meta))


DIFFERENT_EXPERIMENTS = {  # the same folder and file names where it matters: only this one setting differs
    "dataset path (same basenames)": {"path": "/data/poison_data/hsol/1/addsent"},
    "training file": {"train": "clean/0.1/train-poison.csv"},
    "target label": {"target": 0},
    "training cap": {"max_train": 2000},
    "evaluation cap": {"max_eval": 400},
    "model": {"model": "roberta"},
    "attack (clean data poisoned here)": {"fmt": "clean", "attack": "badnets"},
    "poison rate": {"rate": 0.2},
}


@pytest.mark.parametrize("change", sorted(DIFFERENT_EXPERIMENTS))
def test_runs_of_different_experiments_are_never_grouped_nor_compared(runs, tmp_path, change):
    other = DIFFERENT_EXPERIMENTS[change]
    base = {"fmt": "clean", "attack": "addsent"} if "attack" in other or "rate" in other else {}
    a_vanilla = _variant(runs, tmp_path, "a-vanilla", _ob_config(**base), asr=1.0)
    b_vanilla = _variant(runs, tmp_path, "b-vanilla", _ob_config(**{**base, **other}), asr=0.9)
    b_muscle = _variant(runs, tmp_path, "b-muscle", _ob_config(**{**base, **other}, defense="muscle", lr=1e-3),
                        asr=0.3)
    loaded, problems = load_runs([a_vanilla, b_vanilla, b_muscle])
    assert not problems
    grouped = groups(loaded)
    assert len(grouped) == 2 and [len(m) for m in grouped.values()] == [1, 2]
    a_name, b_name = grouped
    assert a_name != b_name  # readable names that tell the experiments apart:
    if _ob_name(_ob_config(**base)) == _ob_name(_ob_config(**{**base, **other})):  # the dataset, and what differs
        assert re.search(r" \[.+=.+\]$", b_name)
    rows = {r["directory"]: r for r in comparison_rows(loaded)}
    defended = rows[str(b_muscle)]
    assert defended["group"] == b_name and defended["baseline"] == "vanilla"
    assert defended["shift_asr"] == pytest.approx(0.3 - 0.9)  # against its own vanilla run, not 1.0
    assert rows[str(a_vanilla)]["shift_asr"] == 0.0


def test_openbackdoor_layout_two_datasets_one_attack_name(runs, tmp_path, monkeypatch):
    """poison_data/<dataset>/<target>/<attack>: sst-2 and hsol are both `1/addsent` to the loader."""
    sst2, hsol = (_ob_config(f"/data/poison_data/{d}/1/addsent") for d in ("sst-2", "hsol"))
    assert _ob_name(sst2) == _ob_name(hsol)
    dirs = [_variant(runs, tmp_path, "sst2-vanilla", sst2, asr=1.0),
            _variant(runs, tmp_path, "hsol-vanilla", hsol, asr=0.95),
            _variant(runs, tmp_path, "hsol-muscle", _ob_config("/data/poison_data/hsol/1/addsent",
                                                               defense="muscle"), asr=0.15)]
    loaded, _ = load_runs(dirs)
    names = list(groups(loaded))
    assert len(names) == 2 and any("sst-2" in n for n in names) and any("hsol" in n for n in names)
    muscle = next(r for r in comparison_rows(loaded) if r["defense"] == "muscle")
    assert "hsol" in muscle["group"] and muscle["shift_asr"] == pytest.approx(0.15 - 0.95)
    out = tmp_path / "report"
    import matplotlib.pyplot as plt

    import freqlens.compare as compare

    def one_figure_each(group, members, view):  # the names, without drawing the real figures
        return [(("convergence_spectrum",), "c", plt.figure())] + [
            ((m.label, "heatmap"), m.label, plt.figure()) for m in members]

    monkeypatch.setattr(compare, "_group_figures", one_figure_each)
    write_comparison(loaded, out)
    stems = sorted(p.stem for p in (out / "figures").glob("*.png"))
    assert stems == sorted(p.stem for p in (out / "figures").glob("*.pdf")) and len(stems) == 2 + 3
    assert len({s.split("_")[0] for s in stems}) == 2  # one file-name prefix per experiment, never `group1-01`
    assert {s.split("_", 1)[1] for s in stems} == {"convergence_spectrum", "vanilla_heatmap", "muscle_heatmap"}
    assert all(re.fullmatch(r"[a-z0-9.-]+(_[a-z0-9.-]+)*", s) for s in stems)


def test_runs_of_one_experiment_with_different_defenses_are_grouped(runs, tmp_path):
    dirs = [_variant(runs, tmp_path, "vanilla", _ob_config(), asr=1.0),
            _variant(runs, tmp_path, "muscle", _ob_config(defense="muscle", lr=1e-3, epochs=3), asr=0.2),
            _variant(runs, tmp_path, "lora", _ob_config(defense="lora", lr=2e-4), asr=0.6)]
    loaded, _ = load_runs(dirs)
    assert len(groups(loaded)) == 1
    rows = {r["run"]: r for r in comparison_rows(loaded)}
    assert rows["muscle"]["shift_asr"] == pytest.approx(-0.8) and rows["lora"]["shift_asr"] == pytest.approx(-0.4)
    assert set(config_differences(loaded)) >= {"defense.name", "train.lr"}


def test_each_seed_is_compared_with_the_vanilla_run_of_its_seed(runs, tmp_path):
    dirs = [_variant(runs, tmp_path, "v0", _ob_config(seed=0), asr=1.0),
            _variant(runs, tmp_path, "v1", _ob_config(seed=1), asr=0.8),
            _variant(runs, tmp_path, "m1", _ob_config(seed=1, defense="muscle"), asr=0.1)]
    loaded, _ = load_runs(dirs)
    rows = {Path(r["directory"]).name: r for r in comparison_rows(loaded)}
    assert rows["m1"]["baseline"] == "vanilla (v1)" and rows["m1"]["shift_asr"] == pytest.approx(0.1 - 0.8)


def test_a_recorded_dataset_identity_groups_by_content_not_by_how_the_path_was_written(runs, tmp_path):
    identity = {"name": "sst-2/1/addsent (mix/0.1/train-poison.csv)", "path": "/data/poison_data/sst-2/1/addsent",
                "train_file": "/data/poison_data/sst-2/1/addsent/mix/0.1/train-poison.csv", "train_sha256": "ab"}
    same = [_variant(runs, tmp_path, "rel", _ob_config("../poison_data/sst-2/1/addsent"), asr=1.0,
                     identity=identity),
            _variant(runs, tmp_path, "abs", _ob_config(defense="muscle"), asr=0.2, identity=identity)]
    changed = _variant(runs, tmp_path, "changed", _ob_config(defense="lora"), asr=0.5,
                       identity={**identity, "train_sha256": "cd"})  # the file was regenerated
    loaded, _ = load_runs([*same, changed])
    assert [len(m) for m in groups(loaded).values()] == [2, 1]
    assert next(iter(groups(loaded))).startswith("sst-2/1/addsent")


def test_dataset_identity_names_the_folder_and_the_training_file(tmp_path, monkeypatch):
    import hashlib

    for dataset, text in (("sst-2", "a,1\n"), ("hsol", "b,0\n")):
        folder = tmp_path / "poison_data" / dataset / "1" / "addsent" / "mix" / "0.1"
        folder.mkdir(parents=True)
        (folder / "train-poison.csv").write_text(text)
    monkeypatch.chdir(tmp_path / "poison_data")
    ids = {d: dataset_identity({"data": {"path": f"{d}/1/addsent", "train": OB_TRAIN}},
                               {"files": {"train": f"{d}/1/addsent/{OB_TRAIN}"}}) for d in ("sst-2", "hsol")}
    sst2 = ids["sst-2"]
    assert sst2["name"] == "sst-2/1/addsent (mix/0.1/train-poison.csv)" and ids["hsol"]["name"].startswith("hsol/")
    assert sst2["path"] == str((tmp_path / "poison_data/sst-2/1/addsent").resolve())
    assert sst2["train_file"] == str((tmp_path / "poison_data/sst-2/1/addsent" / OB_TRAIN).resolve())
    assert sst2["train_sha256"] == hashlib.sha256(b"a,1\n").hexdigest() != ids["hsol"]["train_sha256"]
    hub = dataset_identity({"data": {"path": "glue"}})
    assert hub == {"name": "glue", "path": "glue", "train_file": None, "train_sha256": None,
                   "train_fingerprint": None}


@pytest.mark.parametrize("train", ["train.csv", "mytrain.csv", "sub/other.tsv"])
def test_dataset_identity_hashes_the_file_read_never_a_guess(tmp_path, train):
    """The identity hashes the file the loader read (``info["files"]["train"]``), whatever its name;
    a ``train.*`` that happens to lie in the folder is never hashed in its place."""
    import hashlib

    folder = tmp_path / "data"
    (folder / "sub").mkdir(parents=True)
    (folder / "train.csv").write_text("sentence,label\ndecoy,0\n")
    (folder / train).write_text("sentence\tlabel\nread,1\n" if train.endswith("tsv") else "sentence,label\nread,1\n")
    read = folder / train
    identity = dataset_identity({"data": {"path": str(folder), "splits": {"train": train}}},
                                {"files": {"train": str(read), "dev": str(folder / "dev.csv")}})
    assert identity["train_file"] == str(read.resolve())
    assert identity["train_sha256"] == hashlib.sha256(read.read_bytes()).hexdigest()  # independent reference
    assert identity["name"] == "/".join(folder.resolve().parts[-3:]) + f" ({train})"
    # No record of the file read: no hash at all (train.csv lies there, but nothing says it was read).
    for info in (None, {}, {"files": {}}, {"files": {"dev": str(folder / "train.csv")}}):
        unknown = dataset_identity({"data": {"path": str(folder)}}, info)
        assert unknown["train_file"] is None and unknown["train_sha256"] is None, info
    with pytest.raises(FileNotFoundError, match="gone.csv"):
        dataset_identity({"data": {"path": str(folder)}}, {"files": {"train": str(folder / "gone.csv")}})


def test_dataset_identity_of_a_hub_dataset_is_its_fingerprint_where_recorded():
    hub = {"data": {"path": "glue", "config_name": "sst2"}}
    fingerprinted = dataset_identity(hub, {"fingerprints": {"train": "0123abcd"}})
    assert fingerprinted == {"name": "glue", "path": "glue", "train_file": None, "train_sha256": None,
                             "train_fingerprint": "0123abcd"}
    assert dataset_identity(hub, {"splits": {"train": "split 'train'"}})["train_fingerprint"] is None


def test_dataset_identity_of_a_split_read_from_several_files_hashes_them_all_in_order(tmp_path):
    """A Hugging Face split read from local Arrow files lists them all (``info["files"]["train"]``)."""
    import hashlib

    parts = [tmp_path / f"data-0000{i}-of-00002.arrow" for i in range(2)]
    for i, part in enumerate(parts):
        part.write_bytes(bytes([i]) * 1000)
    identity = dataset_identity({"data": {"path": "some/dataset"}}, {"files": {"train": [str(p) for p in parts]}})
    assert identity["train_file"] == [str(p.resolve()) for p in parts]
    assert identity["train_sha256"] == hashlib.sha256(parts[0].read_bytes() + parts[1].read_bytes()).hexdigest()
    reordered = dataset_identity({"data": {"path": "some/dataset"}},
                                 {"files": {"train": [str(p) for p in parts[::-1]]}})
    assert reordered["train_sha256"] != identity["train_sha256"]


def test_the_openbackdoor_loader_records_the_file_the_identity_hashes(tmp_path):
    """End to end with the loader: `data.train` picks the file; the identity is that file's."""
    import hashlib

    from data.test_loaders import make_openbackdoor

    from freqlens.data.loaders import load_openbackdoor

    root = make_openbackdoor(tmp_path / "poison_data" / "sst-2" / "1" / "addsent")
    rows = list(csv.reader((root / OB_TRAIN).open()))  # training texts of their own (no copy of dev)
    with (root / OB_TRAIN).open("w", newline="") as file:
        csv.writer(file).writerows([rows[0]] + [[r[0], f"train only {r[1]}", *r[2:]] for r in rows[1:]])
    dataset = load_openbackdoor(str(root), train=OB_TRAIN, target_label=1)
    identity = dataset_identity({"data": {"path": str(root), "train": OB_TRAIN}}, dataset.info)
    assert identity["train_file"] == str((root / OB_TRAIN).resolve())
    assert identity["train_sha256"] == hashlib.sha256((root / OB_TRAIN).read_bytes()).hexdigest()
    assert identity["name"] == "sst-2/1/addsent (mix/0.1/train-poison.csv)"


def test_what_may_differ_within_a_group_is_the_defense_and_how_it_ran():
    fields = experiment_fields({"config": _ob_config(defense="muscle"), "dataset": {"name": "n"}}, {})
    assert not any(k.startswith(("defense.", "train.", "record.", "analysis.")) for k in fields)
    assert {"data.path", "data.train", "data.target_label", "data.max_train", "data.max_eval", "attack.name",
            "attack.rate", "attack.seed", "model.name", "model.max_length", "dataset"} <= set(fields)
    no_config = experiment_fields({}, {"dataset": "n"}, Path("somewhere"))
    assert no_config["run directory"] == str(Path("somewhere").resolve())  # a group of its own


# ------------------------------------------------------------- partial runs (killed: no results.json)
def _killed(runs, root, name, *, keep=5, results=False, config=None, identity=None):
    """A copy of the demo run as a SIGKILL leaves it: the first snapshots, meta.json never closed
    (with only the ``config`` and dataset ``identity`` given, as an older freqlens left it)."""
    target = root / name
    shutil.copytree(runs / "seed0", target)
    snapshots = sorted((target / "trajectory" / "snapshots").glob("step-*.npz"))
    for path in snapshots[keep:]:
        path.unlink()
    meta_path = target / "trajectory" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["status"] = "recording"
    for key in ("finished", "recording_seconds", "snapshots"):
        meta.pop(key)
    meta.pop("config", None)
    meta.pop("dataset_identity", None)
    if config is not None:
        meta["config"] = config
    if identity is not None:
        meta["dataset_identity"] = identity
    meta_path.write_text(json.dumps(meta))
    if not results:
        (target / "results.json").unlink()
    steps = [int(p.stem.split("-")[1]) for p in snapshots[:keep]]
    return target, steps, meta["total_steps"]


def test_a_killed_run_is_a_partial_run_of_the_snapshots_it_has(runs, tmp_path):
    directory, steps, total = _killed(runs, tmp_path, "killed")
    run = load_run(directory)
    assert run.partial == f"partial: killed at step {steps[-1]} of {total}" and run.label.endswith("(partial)")
    assert run.analysis.steps.tolist() == steps
    assert all(run.metric(m) is None for m in ("cacc", "asr", "false_trigger_rate", "net_backdoor_effect"))
    # no config recorded: the default analysis settings, as many widths as the pooled probes resolve
    pooled = sum(len(load_trajectory(directory / "trajectory").labels[name])
                 for name in (run.analysis.roles["clean"], run.analysis.roles["backdoor"]))
    assert run.analysis.widths.size == resolvable_widths(pooled) == run.analysis.config.num_widths
    demo_config = json.loads((runs / "seed0" / "results.json").read_text())["config"]
    with_config, _, _ = _killed(runs, tmp_path, "killed-with-config", config=demo_config)
    assert load_run(with_config).analysis.widths.size == demo_config["num_widths"] == 5  # the run's own settings


def test_a_run_whose_recording_was_not_closed_is_partial_even_with_results(runs, tmp_path):
    directory, steps, total = _killed(runs, tmp_path, "not-closed", results=True)
    run = load_run(directory)
    # results.json is written after the recording closes: beside an unclosed one it is an earlier run's
    assert run.partial.startswith(f"partial: killed at step {steps[-1]} of {total}")
    assert "earlier run" in run.partial and run.metric("asr") is None and run.metric("cacc") is None


@pytest.mark.parametrize("where", ["checkpoint/config.json", "trajectory meta"])
def test_a_partial_run_is_never_the_baseline_and_is_grouped_by_its_recorded_config(runs, tmp_path, where):
    config = _ob_config()
    vanilla, _, _ = _killed(runs, tmp_path, "vanilla-killed", config=config if where == "trajectory meta" else None)
    if where == "checkpoint/config.json":  # what `freqlens run` stores before training, for --resume
        (vanilla / "checkpoint").mkdir()
        (vanilla / "checkpoint" / "config.json").write_text(json.dumps(config))
    muscle = _variant(runs, tmp_path, "muscle", _ob_config(defense="muscle"), asr=0.2)
    meta_path = vanilla / "trajectory" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["dataset"] = _ob_name(config)
    meta_path.write_text(json.dumps(meta))
    loaded, _ = load_runs([vanilla, muscle])
    assert len(groups(loaded)) == 1
    rows = {r["defense"]: r for r in comparison_rows(loaded)}
    assert rows["muscle"]["baseline"] is None and rows["muscle"]["shift_asr"] is None
    assert rows["vanilla"]["status"].startswith("partial: killed")


def test_a_trajectory_without_a_snapshot_is_named(runs, tmp_path):
    directory, _, _ = _killed(runs, tmp_path, "no-snapshot", keep=0)
    with pytest.raises(RunError, match="trajectory cannot be read.*snapshot"):
        load_run(directory)


def test_report_includes_a_partial_run_marked_everywhere(runs, tmp_path):
    killed, steps, total = _killed(runs, tmp_path, "killed")
    out = tmp_path / "out"
    assert main(["report", str(runs / "seed0"), str(killed), "--out", str(out)]) == 0
    note = f"partial: killed at step {steps[-1]} of {total}"
    page, markdown = (out / "report.html").read_text(), (out / "report.md").read_text()
    assert "Left out" not in page
    for text in (page, markdown):
        assert note in text and "missing (–), not zero" in text
        assert text.count("No complete vanilla (undefended) run whose model has not collapsed in this group") == 1
    row = next(line for line in markdown.splitlines() if line.startswith("| unknown defense (partial) |"))
    assert row.split(" | ")[1:6] == [note, "–", "–", "–", "–"]
    with open(out / "runs.csv") as file:
        table = {r["directory"]: r for r in csv.DictReader(file)}
    assert table[str(killed)]["status"] == note
    assert table[str(killed)]["cacc"] == table[str(killed)]["asr"] == ""  # missing, not 0
    figures = re.findall(r'<figure><img alt="([^"]*)"', page)
    own = [f for f in figures if f.startswith("unknown defense (partial)")]
    # its mode heat map, heat map, curves, bands, ratios, projection
    assert len(own) == 6 and all(note in f for f in own)
    # + the group's convergence, learning-speed and static spectra, which name it
    assert len([f for f in figures if "unknown defense (partial)" in f]) == 6 + 3


def test_report_figures_are_named_by_group_run_and_kind(report):
    names = sorted(p.stem for p in (report / "figures").glob("*.png"))
    prefix = {n.split("_")[0] for n in names}
    assert len(prefix) == 1 and re.fullmatch(r"[a-z0-9.-]+", prefix.pop())
    kinds = {n.split("_", 1)[1] for n in names}
    assert kinds == {"metrics", "convergence_spectrum", "speed_spectrum", "speed_vs_vanilla", "static_spectrum"} | {
        f"{run}_{kind}" for run in ("vanilla", "muscle") for kind in (
            "mode_heatmap", "heatmap", "error_curves", "band_spectrum", "frequency_ratios", "projection_spectrum")}
    markdown = (report / "report.md").read_text()
    assert all(f"](figures/{n}.png)" in markdown for n in names)


def _recorded(folder: Path) -> dict:
    """The identity a run on the OpenBackdoor folder ``folder`` records when it starts."""
    return dataset_identity({"data": {"path": str(folder), "train": OB_TRAIN}},
                            {"files": {"train": str(folder / OB_TRAIN)}})


def test_absolute_dataset_folders_are_identified_by_their_recorded_files(runs, tmp_path):
    """The report names each folder by its last three parts and groups by the hash recorded at the
    run's start; the files as they are at report time play no part (they may have changed since)."""
    for dataset in ("sst-2", "hsol"):
        folder = tmp_path / "poison_data" / dataset / "1" / "addsent" / "mix" / "0.1"
        folder.mkdir(parents=True)
        (folder / "train-poison.csv").write_text(f"{dataset},1\n")
    sst2, hsol = (tmp_path / "poison_data" / d / "1" / "addsent" for d in ("sst-2", "hsol"))
    dirs = [_variant(runs, tmp_path, "sst2-vanilla", _ob_config(str(sst2)), asr=1.0, identity=_recorded(sst2)),
            _variant(runs, tmp_path, "sst2-muscle", _ob_config(str(sst2), defense="muscle"), asr=0.1,
                     identity=_recorded(sst2)),
            _variant(runs, tmp_path, "hsol-vanilla", _ob_config(str(hsol)), asr=0.9, identity=_recorded(hsol))]
    (sst2 / OB_TRAIN).write_text("changed after the runs,0\n")
    shutil.rmtree(hsol)
    loaded, _ = load_runs(dirs)
    assert list(groups(loaded)) == ["sst-2/1/addsent (mix/0.1/train-poison.csv)",
                                    "hsol/1/addsent (mix/0.1/train-poison.csv)"]
    digests = [run.experiment["dataset.identity.train_sha256"] for run in loaded]
    assert digests[0] == digests[1] != digests[2]
    assert digests[0] == hashlib.sha256(b"sst-2,1\n").hexdigest()  # as recorded, not as the file is now


def test_a_run_without_a_recorded_identity_never_joins_one_with_it(runs, tmp_path, monkeypatch):
    """An older run (no identity in results.json or meta.json) is not given one at report time: it is
    marked "not recorded", grouped only with other such runs of the same config as written, never with
    a run on the same folder that recorded its identity (whose training file may have changed)."""
    folder = tmp_path / "poison_data" / "sst-2" / "1" / "addsent"
    (folder / "mix" / "0.1").mkdir(parents=True)
    (folder / OB_TRAIN).write_text("old,1\n")
    config = _ob_config(str(folder))
    old_vanilla = _variant(runs, tmp_path, "old-vanilla", config, asr=1.0)
    old_lora = _variant(runs, tmp_path, "old-lora", _ob_config(str(folder), defense="lora"), asr=0.7)
    (folder / OB_TRAIN).write_text("relabelled,0\n")  # the data changed; then a new run
    new_muscle = _variant(runs, tmp_path, "new-muscle", _ob_config(str(folder), defense="muscle"), asr=0.2,
                          identity=_recorded(folder))
    old_killed, _, _ = _killed(runs, tmp_path, "old-killed", config=_ob_config(str(folder), defense="ga"))
    _set_meta_dataset(old_killed, _ob_name(config))
    import freqlens.data.identity

    def no_hashing(*args, **kwargs):
        raise AssertionError("the report hashed a file")

    monkeypatch.setattr(freqlens.data.identity, "file_sha256", no_hashing, raising=False)
    loaded, problems = load_runs([old_vanilla, old_lora, new_muscle, old_killed])
    assert not problems
    by_dir = {run.directory.name: run for run in loaded}
    grouped = groups(loaded)
    assert sorted(sorted(r.directory.name for r in members) for members in grouped.values()) == [
        ["new-muscle"], ["old-killed", "old-lora", "old-vanilla"]]
    assert by_dir["old-vanilla"].experiment["dataset.identity"] == NOT_RECORDED
    assert not any(k.startswith("dataset.identity.") for k in by_dir["old-vanilla"].experiment)
    assert by_dir["old-vanilla"].experiment["data.path"] == str(folder)  # the config as written
    rows = {Path(r["directory"]).name: r for r in comparison_rows(loaded)}
    assert rows["new-muscle"]["baseline"] is None and rows["new-muscle"]["shift_asr"] is None  # not vs old
    assert rows["old-lora"]["shift_asr"] == pytest.approx(0.7 - 1.0)
    monkeypatch.setattr(compare_module, "_group_figures", lambda *args: [])
    write_comparison(loaded, tmp_path / "report")
    markdown = (tmp_path / "report" / "report.md").read_text()
    note = "dataset identity not recorded by this freqlens version; grouped by config as written"
    assert markdown.count(note) == 1 and note in (tmp_path / "report" / "report.html").read_text()
    section = markdown.split(note)[0].rsplit("## ", 1)[1]
    assert section.startswith(by_dir["old-vanilla"].group)


@pytest.mark.parametrize("where", ["trajectory meta", "checkpoint/identity.json"])
def test_a_killed_run_is_grouped_by_the_identity_it_recorded_at_its_start(runs, tmp_path, where):
    folder = tmp_path / "poison_data" / "sst-2" / "1" / "addsent"
    (folder / "mix" / "0.1").mkdir(parents=True)
    (folder / OB_TRAIN).write_text("a,1\n")
    identity = _recorded(folder)
    vanilla = _variant(runs, tmp_path, "vanilla", _ob_config(str(folder)), asr=1.0, identity=identity)
    killed, _, _ = _killed(runs, tmp_path, "muscle-killed", config=_ob_config(str(folder), defense="muscle"),
                           identity=identity if where == "trajectory meta" else None)
    _set_meta_dataset(killed, _ob_name(_ob_config(str(folder))))
    if where == "checkpoint/identity.json":
        (killed / "checkpoint").mkdir()
        (killed / "checkpoint" / "identity.json").write_text(json.dumps(identity))
    changed = _variant(runs, tmp_path, "lora-changed", _ob_config(str(folder), defense="lora"), asr=0.5,
                       identity={**identity, "train_sha256": "0" * 64})
    (folder / OB_TRAIN).write_text("changed since,0\n")  # the report must not look at the file now
    loaded, _ = load_runs([vanilla, killed, changed])
    assert [sorted(r.directory.name for r in m) for m in groups(loaded).values()] == [
        ["muscle-killed", "vanilla"], ["lora-changed"]]
    assert next(r for r in loaded if r.directory == killed).experiment["dataset.identity.train_sha256"] == \
        identity["train_sha256"]


def test_an_identity_that_names_no_file_groups_by_the_config(runs, tmp_path):
    """A hub dataset has no local file to hash: runs that recorded such an identity are grouped by
    their config (and fingerprint where recorded); a run that recorded none is never joined to them."""
    hub = _ob_config("glue", fmt="hf")
    identity = dataset_identity(hub)
    assert identity["train_sha256"] is None
    dirs = [_variant(runs, tmp_path, "with", hub, asr=1.0, identity=identity),
            _variant(runs, tmp_path, "with-too", _ob_config("glue", fmt="hf", defense="lora"), asr=0.6,
                     identity=identity),
            _variant(runs, tmp_path, "fingerprinted", _ob_config("glue", fmt="hf", defense="lora"), asr=0.6,
                     identity={**identity, "train_fingerprint": "ab12"}),
            _variant(runs, tmp_path, "without", _ob_config("glue", fmt="hf", defense="muscle"), asr=0.3)]
    loaded, _ = load_runs(dirs)
    assert [sorted(r.directory.name for r in m) for m in groups(loaded).values()] == [
        ["with", "with-too"], ["fingerprinted"], ["without"]]


def test_seeds_of_one_configuration_are_aggregated_with_mean_and_spread(runs, tmp_path):
    dirs = [_variant(runs, tmp_path, "v0", _ob_config(seed=0), asr=1.0, cacc=0.80),
            _variant(runs, tmp_path, "v1", _ob_config(seed=1), asr=0.8, cacc=0.84),
            _variant(runs, tmp_path, "m0", _ob_config(seed=0, defense="muscle"), asr=0.2),
            _variant(runs, tmp_path, "m1", _ob_config(seed=1, defense="muscle"), asr=0.1),
            _variant(runs, tmp_path, "m2", _ob_config(seed=2, defense="muscle"), asr=0.6),
            _variant(runs, tmp_path, "m-lr", _ob_config(seed=0, defense="muscle", lr=1e-3), asr=0.5)]
    loaded, _ = load_runs(dirs)
    summary = {r["configuration"]: r for r in seed_summary(loaded)}
    assert sorted(summary) == ["muscle [train.lr=0.001]", "muscle [train.lr=4e-05]", "vanilla"]
    muscle = summary["muscle [train.lr=4e-05]"]
    assert muscle["seeds"] == [0, 1, 2] and muscle["asr_n"] == 3
    assert muscle["asr"] == pytest.approx(np.mean([0.2, 0.1, 0.6]))
    assert muscle["asr_sd"] == pytest.approx(np.std([0.2, 0.1, 0.6], ddof=1))
    assert summary["vanilla"]["cacc"] == pytest.approx(0.82) and summary["muscle [train.lr=0.001]"]["asr_sd"] is None
    write_comparison(loaded, tmp_path / "report")
    md = (tmp_path / "report" / "report.md").read_text()
    assert "Across seeds" in md and "0.300 ± 0.265" in md and "| vanilla | 0, 1 |" in md


def test_one_seed_per_configuration_adds_no_seed_table(runs, tmp_path):
    dirs = [_variant(runs, tmp_path, "v0", _ob_config(seed=0), asr=1.0),
            _variant(runs, tmp_path, "m0", _ob_config(seed=0, defense="muscle"), asr=0.2)]
    loaded, _ = load_runs(dirs)
    write_comparison(loaded, tmp_path / "report")
    assert "Across seeds" not in (tmp_path / "report" / "report.md").read_text()


def test_the_report_says_who_is_learned_first_with_intervals(report):
    md = (report / "report.md").read_text()
    title = "### Who is learned first: learning speed of the backdoor vs the clean probes"
    assert title in md
    table = md[md.index(title):].split("\n\n")[1].splitlines()
    assert table[0].startswith("| run | widths: backdoor / clean first / unresolved |")
    rows = {line.split(" | ")[0].lstrip("| "): line for line in table[2:]}
    assert set(rows) == {"vanilla", "muscle"} and all(" of " in line for line in rows.values())


def _flat_defense(config: dict) -> dict:
    """``config`` as freqlens stored it before the defense settings were nested (``defense.ga_mu``)."""
    from freqlens.defenses.registry import FLAT_KEYS

    section = config["defense"]
    flat = {k: v for k, v in section.items() if not isinstance(v, dict) and k != "options"}
    for old, new in FLAT_KEYS.items():
        table, _, key = new.partition(".")
        flat[old] = section[table][key]
    return {**config, "defense": flat}


def test_report_reads_runs_stored_with_the_flat_defense_keys_of_earlier_versions(runs, tmp_path):
    """An earlier version's results.json (`defense.ga_mu`, `defense.lora_r`, ...) is read with its keys
    nested, so its run is one configuration with a run of this version with the same settings."""
    old = _flat_defense(_ob_config(seed=0, defense="muscle"))
    assert "ga_mu" in old["defense"] and "ga" not in old["defense"]
    dirs = [_variant(runs, tmp_path, "vanilla", _ob_config(seed=0), asr=1.0),
            _variant(runs, tmp_path, "old", old, asr=0.2),
            _variant(runs, tmp_path, "new", _ob_config(seed=1, defense="muscle"), asr=0.3)]
    loaded, problems = load_runs(dirs)
    assert not problems
    by_name = {run.directory.name: run for run in loaded}
    assert by_name["old"].config["defense.ga.mu"] == 0.1 and "defense.ga_mu" not in by_name["old"].config
    assert by_name["old"].config == {**by_name["new"].config, "train.seed": 0}
    found = configurations([by_name["old"], by_name["new"]])
    assert list(found) == ["muscle"] and len(found["muscle"]) == 2


def _with_defense(directory: Path, record: dict | None) -> Path:
    """``directory``'s results.json with ``record`` as what its defense recorded (None: nothing, as
    freqlens wrote before defenses recorded their clean examples and detection)."""
    path = directory / "results.json"
    results = json.loads(path.read_text())
    results.pop("defense", None)
    if record is not None:
        results["defense"] = record
    path.write_text(json.dumps(results))
    return directory


def _detection(precision, recall, removed=100):
    f1 = 2 * precision * recall / (precision + recall)
    return {"name": "abl", "clean_examples": 0, "removed": removed, "trained_on": 2000 - removed,
            "detection": {"flagged": removed, "poisoned": 90, "precision": precision, "recall": recall, "f1": f1}}


def _no_figures(monkeypatch):
    """write_comparison writes its tables but draws no figure (these tests are about the tables)."""
    import freqlens.compare as compare

    monkeypatch.setattr(compare, "_group_figures", lambda group, members, view: [])


def test_clean_examples_and_detection_are_reported_where_recorded_and_missing_elsewhere(runs, tmp_path,
                                                                                        monkeypatch):
    dirs = [_with_defense(_variant(runs, tmp_path, "old-vanilla", _ob_config(seed=0), asr=1.0), None),
            _with_defense(_variant(runs, tmp_path, "vanilla1", _ob_config(seed=1), asr=0.9),
                          {"name": "vanilla", "clean_examples": 0}),
            _with_defense(_variant(runs, tmp_path, "ref", _ob_config(seed=0, defense="reference-only"), asr=0.2),
                          {"name": "reference-only", "clean_examples": 256}),
            _with_defense(_variant(runs, tmp_path, "abl0", _ob_config(seed=0, defense="abl"), asr=0.1),
                          _detection(1.0, 0.9, removed=81)),
            _with_defense(_variant(runs, tmp_path, "abl1", _ob_config(seed=1, defense="abl"), asr=0.2),
                          _detection(0.8, 1.0, removed=112))]
    loaded, problems = load_runs(dirs)
    assert not problems
    rows = {Path(r["directory"]).name: r for r in comparison_rows(loaded)}
    assert rows["old-vanilla"]["clean_examples"] is None and rows["old-vanilla"]["detection_f1"] is None
    assert rows["vanilla1"]["clean_examples"] == 0 and rows["ref"]["clean_examples"] == 256
    assert rows["ref"]["detection_precision"] is None and rows["ref"]["removed"] is None
    assert rows["abl0"]["detection_recall"] == pytest.approx(0.9) and rows["abl1"]["removed"] == 112
    summary = {r["configuration"]: r for r in seed_summary(loaded)}
    abl = summary["abl"]
    assert abl["detection_precision"] == pytest.approx(0.9)
    assert abl["detection_precision_sd"] == pytest.approx(np.std([1.0, 0.8], ddof=1))
    assert abl["detection_f1"] == pytest.approx(np.mean([2 * 0.9 / 1.9, 1.6 / 1.8]))
    assert summary["vanilla"]["clean_examples"] == 0 and summary["vanilla"]["clean_examples_n"] == 1  # one recorded
    assert summary["reference-only"]["detection_recall"] is None

    _no_figures(monkeypatch)
    paths = write_comparison(loaded, tmp_path / "report")
    md = paths["markdown"].read_text()
    lines = md.splitlines()
    header = next(line for line in lines if line.startswith("| run | status |"))
    cells = [c.strip() for c in header.strip("|").split("|")]
    assert cells[6] == "clean examples" and cells[-4:] == ["removed", "detection precision", "detection recall",
                                                           "detection F1"]

    def row(label):
        line = next(line for line in lines if line.startswith(f"| {label} |") and "complete" in line)
        return [c.strip() for c in line.strip("|").split("|")]

    assert row("vanilla (old-vanilla)")[6] == "–" and row("vanilla (old-vanilla)")[-4:] == ["–"] * 4
    assert row("vanilla (vanilla1)")[6] == "0" and row("reference-only")[6] == "256"
    assert row("abl (abl0)")[-4:] == ["81", "1.000", "0.900", f"{2 * 0.9 / 1.9:.3f}"]
    seeds = md[md.index("### Across seeds"):].split("\n\n")[1].splitlines()
    assert seeds[0] == ("| configuration | seeds | CACC | ASR | false-trigger | net | clean examples | "
                        "detection precision | detection recall | detection F1 |")
    abl_line = next(line for line in seeds if line.startswith("| abl |"))
    assert "| 0 | 0.900 ± 0.141 | 0.950 ± 0.071 |" in abl_line
    assert next(line for line in seeds if line.startswith("| reference-only |")).endswith("| 256 | – | – | – |")
    with open(paths["csv"]) as file:
        table = {Path(r["directory"]).name: r for r in csv.DictReader(file)}
    assert table["abl1"]["detection_precision"] == "0.8"
    assert table["abl1"]["clean_examples"] == "0" and table["abl1"]["removed"] == "112"  # counts as integers
    assert table["old-vanilla"]["clean_examples"] == table["ref"]["detection_f1"] == ""  # not recorded: empty


def test_a_group_without_a_filtering_defense_has_no_detection_columns(runs, tmp_path, monkeypatch):
    dirs = [_with_defense(_variant(runs, tmp_path, "v", _ob_config(seed=0), asr=1.0), None),
            _with_defense(_variant(runs, tmp_path, "m", _ob_config(seed=0, defense="muscle"), asr=0.3),
                          {"name": "muscle", "clean_examples": 256})]
    loaded, _ = load_runs(dirs)
    _no_figures(monkeypatch)
    md = write_comparison(loaded, tmp_path / "report")["markdown"].read_text()
    assert "| clean examples |" in md and "detection" not in md
    assert "| muscle | complete" in md and "| 256 |" in md  # (collapsed: the tiny fixture model is)


def test_a_plug_in_recording_a_list_or_a_string_where_the_report_reads_a_number_shows_a_dash(runs, tmp_path,
                                                                                              monkeypatch):
    record = {**_detection(1.0, 0.9), "removed": [3, 5, 7]}  # a plug-in's removed rows, not their count
    record["detection"] = {**record["detection"], "precision": "n/a", "recall": True}
    dirs = [_with_defense(_variant(runs, tmp_path, "odd", _ob_config(seed=0, defense="abl"), asr=0.1), record),
            _with_defense(_variant(runs, tmp_path, "fine", _ob_config(seed=1, defense="abl"), asr=0.2),
                          _detection(0.8, 1.0, removed=112))]
    loaded, problems = load_runs(dirs)
    assert not problems
    rows = {Path(r["directory"]).name: r for r in comparison_rows(loaded)}
    assert rows["odd"]["removed"] is None and rows["odd"]["detection_precision"] is None
    assert rows["odd"]["detection_recall"] is None and rows["odd"]["detection_f1"] == pytest.approx(2 * 0.9 / 1.9)
    assert rows["fine"]["removed"] == 112
    _no_figures(monkeypatch)
    assert write_comparison(loaded, tmp_path / "report")["markdown"].is_file()


@pytest.mark.parametrize("share, collapsed", [(1.0, True), (0.97, True), (0.95, False), (0.6, False), (None, False)])
def test_a_collapsed_run_is_marked_where_its_metrics_are_read(runs, tmp_path, monkeypatch, share, collapsed):
    """A model that predicts one class for nearly every clean input scores an ASR and a net with no backdoor
    behind them; the report says so beside its row, in the status column and in runs.csv (None: a run of
    a freqlens that did not record the share, never marked)."""
    defended = _variant(runs, tmp_path, "d", _ob_config(seed=0, defense="early-loss"), asr=0.48, cacc=0.5)
    results = json.loads((defended / "results.json").read_text())
    results.pop("majority_prediction_share", None)
    if share is not None:
        results["majority_prediction_share"] = share
    (defended / "results.json").write_text(json.dumps(results))
    vanilla = _variant(runs, tmp_path, "v", _ob_config(seed=0), asr=1.0)
    results = json.loads((vanilla / "results.json").read_text())
    (vanilla / "results.json").write_text(json.dumps({**results, "majority_prediction_share": 0.52}))
    loaded, _ = load_runs([vanilla, defended])
    _no_figures(monkeypatch)
    paths = write_comparison(loaded, tmp_path / "report")
    md, page = paths["markdown"].read_text(), paths["html"].read_text()
    rows = {r["run"]: r for r in csv.DictReader(paths["csv"].open())}
    assert ("| early-loss | complete (collapsed) |" in md) == collapsed
    assert ("early-loss: The model predicts one class" in md) == collapsed
    assert ("early-loss: The model predicts one class" in page) == collapsed
    assert rows["early-loss"]["status"] == ("complete (collapsed)" if collapsed else "complete")
    assert rows["vanilla"]["status"] == "complete"


def test_runs_csv_carries_the_config_keys_that_set_the_runs_of_a_group_apart(runs, tmp_path, monkeypatch):
    dirs = [_variant(runs, tmp_path, "v", _ob_config(seed=0), asr=1.0),
            _variant(runs, tmp_path, "e", _ob_config(seed=0, defense="early-loss"), asr=0.2)]
    loaded, _ = load_runs(dirs)
    _no_figures(monkeypatch)
    rows = list(csv.DictReader(write_comparison(loaded, tmp_path / "report")["csv"].open()))
    assert [r["config.defense.name"] for r in rows] == ["vanilla", "early-loss"]
    assert not any(key.startswith("config.train.") for key in rows[0])  # the same in both: not a column


def test_a_collapsed_vanilla_run_is_never_the_baseline_and_collapsed_seeds_are_named(runs, tmp_path, monkeypatch):
    """A shift against a model that puts every input in one class reads as a defense (ASR 1.0 -> 0.2):
    no Δ is computed against it, the note says why, and the seed table names the collapsed seeds."""
    def variant(name, defense, seed, asr, share):
        directory = _variant(runs, tmp_path, name, _ob_config(seed=seed, defense=defense), asr=asr)
        results = json.loads((directory / "results.json").read_text())
        strip = {"frr": 0.05, "far": 0.9, "cacc": 0.8, "asr": asr, "false_trigger_rate": 0.1}
        (directory / "results.json").write_text(json.dumps({**results, "majority_prediction_share": share,
                                                            "detectors": {"strip": strip}}))
        return directory

    loaded, _ = load_runs([variant("v0", "vanilla", 0, 1.0, 1.0), variant("m0", "muscle", 0, 0.2, 0.5),
                           variant("m1", "muscle", 1, 1.0, 0.99)])
    rows = {(r["defense"], r["directory"][-2:]): r for r in comparison_rows(loaded)}
    assert rows[("muscle", "m0")]["baseline"] is None and rows[("muscle", "m0")]["shift_asr"] is None
    _no_figures(monkeypatch)
    md = write_comparison(loaded, tmp_path / "report")["markdown"].read_text()
    assert "It is not used as the baseline of the shifts" in md
    assert "No complete vanilla (undefended) run whose model has not collapsed" in md
    assert "| muscle | 0, 1 (collapsed) |" in md
    assert "| muscle | strip | 0, 1 (collapsed) |" in md  # the detector table names them too
    from freqlens.figures import FIGURES

    beside = FIGURES["speeds_vs_vanilla"]
    assert compare_module._group_input(beside, "g", loaded) is None  # nor the grey line beside each defense
    healthy, _ = load_runs([variant("v0h", "vanilla", 0, 1.0, 0.5), *(run.directory for run in loaded[1:])])
    drawn, fields = compare_module._group_input(beside, "g", healthy)
    assert fields["source"] == "vanilla" and list(drawn)[0] == "vanilla"
