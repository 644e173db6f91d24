"""`freqlens run` applies inference-time detectors after training (`[detector]`) and `freqlens report` shows
them: checked with detectors whose answer is known (tests/detectors/oracles.py), on a tiny BERT."""

import csv
import json

import numpy as np
import pytest

from freqlens.cli import main
from freqlens.config import ExperimentConfig
from freqlens.data.splits import PoisonedDataset, Split
from freqlens.detectors import Detector, Victim, evaluate_detector
from tests.test_run import _tiny_experiment

ORACLES = "tests.detectors.oracles:TriggerWord,tests.detectors.oracles:RemoveTrigger"
TINY = """
[train]
epochs = 1
batch_size = 16
lr = 1e-3
[record]
schedule = "log:4"
probe_size = 8
[analysis]
num_widths = 3
bootstrap = 20
"""


@pytest.mark.slow
def test_a_run_applies_its_detectors_and_both_reports_show_them(tmp_path):
    config = _tiny_experiment(tmp_path, TINY)
    out = tmp_path / "run"
    assert main(["run", str(config), "--out", str(out), "--no-progress", "--set", f"detector.name={ORACLES}"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["detector"]["name"] == ORACLES.split(",")
    flagging, repairing = (results["detectors"][name] for name in ORACLES.split(","))
    # the oracle rejects exactly the triggered inputs: nothing clean is lost, no attack gets through
    assert flagging["frr"] == 0 and flagging["far"] == 0 and flagging["asr"] == 0
    assert flagging["cacc"] == pytest.approx(results["cacc"])
    assert flagging["false_trigger_rate"] == pytest.approx(results["false_trigger_rate"])
    assert flagging["threshold"] == 0 and not flagging["repairs"]
    # cutting the trigger out gives back the control sentences: ASR falls to the false-trigger rate
    assert repairing["frr"] is None and repairing["far"] is None and repairing["repairs"]
    assert repairing["asr"] == pytest.approx(results["false_trigger_rate"])
    assert repairing["cacc"] == pytest.approx(results["cacc"])
    assert repairing["words_removed_clean"] == 0 and repairing["words_removed_triggered"] == 5
    page = (out / "report.html").read_text()
    assert "<h2>Inference-time detectors</h2>" in page and "tests.detectors.oracles:TriggerWord" in page
    compared = tmp_path / "compared"
    assert main(["report", str(out), "--out", str(compared)]) == 0
    markdown = (compared / "report.md").read_text()
    assert "### Inference-time detectors" in markdown
    line = next(row for row in markdown.splitlines() if "oracles:TriggerWord" in row)
    assert "| 0.000 | 0.000 |" in line  # FRR and FAR
    with open(compared / "runs.csv", newline="") as file:
        row = next(csv.DictReader(file))
    assert float(row["detector_tests.detectors.oracles:TriggerWord_asr"]) == 0


@pytest.mark.parametrize(("sets", "match"), [
    (["detector.name=strp"], "`detector.name` to be one of"),
    (["detector.name=strip,strip"], "each detector once in `detector.name`"),
    (["detector.frr=1.5"], "`detector.frr` in [0, 1)"),
    (["detector.batch_size=0"], "`detector.batch_size`"),
    (["detector.strip.swap_ratio=0"], "`detector.strip.swap_ratio`"),
    (["detector.rap.drop=[0.3, 0.1]"], "`detector.rap.drop`"),
    (["detector.rap.lrr=1"], "detector.rap.lrr"),
    (["detector.onion.batch_size=0"], "`detector.onion.batch_size`"),
    (["detector.name=tests.detectors.oracles:NeedsAWord"], "`detector.oracle.word`"),
    (["detector.name=onion", "detector.onion.lm=./no-such-lm"], "`detector.onion.lm`"),
    (["detector.options.strip={repeat = 2}", "detector.name=strip"], "`detector.strip`"),
], ids=["unknown name", "repeated", "frr", "batch size", "strip", "rap drop", "rap key", "onion",
        "check before training", "onion's language model", "built-in options misplaced"])
def test_a_bad_detector_setting_fails_before_training_naming_the_key(tmp_path, capsys, sets, match):
    config = _tiny_experiment(tmp_path, TINY)
    out = tmp_path / "run"
    flags = [a for kv in sets for a in ("--set", kv)]
    assert main(["run", str(config), "--out", str(out), "--no-progress", *flags]) == 2
    assert match in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())


def test_a_run_stored_before_detectors_existed_reads_as_one_that_applied_none():
    upgraded = ExperimentConfig.upgrade({"model": {"name": "m"}, "defense": {"name": "vanilla"}})
    assert upgraded["detector"]["name"] == [] and upgraded["detector"]["frr"] == 0.01
    assert "detector" not in ExperimentConfig.upgrade({"probe_size": 8})  # the demo's config has no sections


class _Constant(Detector):
    """Scores by a table of known values (a detector whose threshold can be worked out by hand)."""

    def __init__(self, scores, **kwargs):
        super().__init__("constant", **kwargs)
        self.scores = scores

    def score(self, victim, texts):
        return np.array([self.scores[t] for t in texts], dtype=float)


class _Fixed:
    """A victim stand-in whose class for a text is its first character (0 or 1)."""

    target_label = 1

    def probabilities(self, texts):
        classes = np.array([int(t[0]) for t in texts], dtype=int)
        return np.eye(2, dtype=np.float32)[classes] if len(texts) else np.zeros((0, 2), np.float32)


def _split(texts, labels):
    return Split(texts=list(texts), labels=np.asarray(labels))


def test_the_threshold_lets_frr_of_the_clean_dev_scores_through_and_rejected_inputs_count_as_failures():
    dev = [f"0 dev {i}" for i in range(100)]
    scores = {t: float(i) for i, t in enumerate(dev)}  # 0..99
    clean = ["1 a", "0 b", "1 c", "0 d"]  # labels 1, 0, 0, 0: 3 correct ("0 c" is wrong: class 1)
    poison = ["1 p", "1 q", "0 r", "1 s"]
    control = ["0 p'", "1 q'", "0 r'", "0 s'"]  # the same sources untriggered: scored 0, never rejected
    scores.update({"1 a": 200.0, "0 b": 1.0, "1 c": 1.0, "0 d": 1.0, "1 p": 300.0, "1 q": 96.5, "0 r": 0.0,
                   "1 s": 50.0, **dict.fromkeys(control, 0.0)})
    dataset = PoisonedDataset(train=_split(["0"], [0]), dev_clean=_split(dev, np.zeros(100)),
                              dev_poison=_split(["1"], [1]), test_clean=_split(clean, [1, 0, 0, 0]),
                              test_poison=_split(poison, [1, 1, 1, 1]), test_control=_split(control, [0, 0, 0, 0]),
                              target_label=1)
    detector = _Constant(scores, frr=0.03)
    result = evaluate_detector(detector, _Fixed(), dataset)
    # sorted descending 99, 98, 97, 96, ...: index int(100 * 0.03) = 3 -> threshold 96; above it: 97, 98, 99
    assert result["threshold"] == 96.0 and result["calibration_inputs"] == 100
    assert result["frr"] == 0.25  # "1 a" (200) of the 4 clean inputs
    assert result["far"] == 0.5  # "0 r" (0) and "1 s" (50) accepted; "1 p" and "1 q" (96.5) rejected
    assert result["cacc"] == 0.5  # correct and accepted: "0 b", "0 d" ("1 a" rejected, "1 c" wrong)
    assert result["asr"] == 0.25  # accepted and predicted 1: "1 s"
    assert result["false_trigger_rate"] == 0.25 and result["net_backdoor_effect"] == 0.0  # control "1 q'"


def test_a_victim_tokenises_like_a_run_and_returns_probabilities():
    from freqlens.demo.model import make_model, make_tokenizer

    tokenizer = make_tokenizer()
    victim = Victim(make_model(len(tokenizer)), tokenizer, max_length=16, batch_size=2)
    probabilities = victim.probabilities(["the movie was good", "bad", "cf the plot"])
    assert probabilities.shape == (3, 2) and np.allclose(probabilities.sum(axis=1), 1, atol=1e-5)
    assert victim.probabilities([]).shape == (0, 2)


def test_a_registered_detector_is_a_name_the_config_takes_and_registering_is_checked():
    from freqlens.detectors import DETECTORS, DetectorConfig, register_detector, unregister_detector

    class Mine(Detector):
        def score(self, victim, texts):
            return np.zeros(len(texts))

    register_detector("test-mine", Mine)
    try:
        assert "test-mine" in DETECTORS and list(DETECTORS)[-1] == "test-mine"
        assert DetectorConfig(name=["strip", "test-mine"]).names == ("strip", "test-mine")
        with pytest.raises(ValueError, match="registered already"):
            register_detector("test-mine", Mine)
        with pytest.raises(TypeError, match="subclass of freqlens.detectors.Detector"):
            register_detector("test-other", object)
    finally:
        unregister_detector("test-mine")
    assert "test-mine" not in DETECTORS
    with pytest.raises(ValueError, match="`detector.name` to be one of"):
        DetectorConfig(name="test-mine")
    with pytest.raises(KeyError, match="registered detector name"):
        unregister_detector("test-mine")


@pytest.mark.slow
def test_a_detector_that_fails_after_training_costs_the_run_nothing(tmp_path):
    config = _tiny_experiment(tmp_path, TINY)
    out = tmp_path / "run"
    names = "tests.detectors.oracles:Fails,tests.detectors.oracles:TriggerWord"
    assert main(["run", str(config), "--out", str(out), "--no-progress", "--set", f"detector.name={names}"]) == 0
    results = json.loads((out / "results.json").read_text())
    failed = results["detectors"]["tests.detectors.oracles:Fails"]
    assert failed["error"].startswith("ValueError: Expected some clean dev inputs") and "cacc" not in failed
    assert results["detectors"]["tests.detectors.oracles:TriggerWord"]["far"] == 0  # the next one still ran
    assert any("'tests.detectors.oracles:Fails' failed after training" in w for w in results["warnings"])
    assert results["analysis"] and (out / "report.html").is_file() and not (out / "checkpoint").exists()
    page = (out / "report.html").read_text()
    assert "<th>error</th>" in page and "ValueError: Expected some clean dev inputs" in page
    compared = tmp_path / "compared"
    assert main(["report", str(out), "--out", str(compared)]) == 0
    assert "| seed 0: ValueError: Expected some clean dev inputs" in (compared / "report.md").read_text()


def test_a_killed_run_resumes_with_other_detectors(tmp_path):
    """Detectors act after training: a run may resume with another `[detector]` (its other settings must
    still match)."""
    from freqlens.checkpoint import prepare_out, start_out

    config = ExperimentConfig.from_dict({"detector": {"name": ["strip", "rap"], "rap": {"trigger": "camera"}}})
    out = tmp_path / "run"
    start_out(out, config, identity={})
    prepare_out(out, ExperimentConfig.from_dict({"detector": {"name": "strip"}}), overwrite=False, resume=True)
    with pytest.raises(ValueError, match=r"train\.lr"):
        prepare_out(out, ExperimentConfig.from_dict({"train": {"lr": 1.0}}), overwrite=False, resume=True)


def test_an_infinite_score_is_flagged_and_only_nan_is_never_flagged():
    dev = [f"0 dev {i}" for i in range(10)]
    scores = {**{t: float(i) for i, t in enumerate(dev)}, "1 inf": np.inf, "1 nan": np.nan, "0 low": -np.inf}
    detector = _Constant(scores, frr=0.0)
    detector.calibrate(_Fixed(), dev, np.zeros(10))
    assert detector.threshold == 9.0
    assert detector.flag(_Fixed(), ["1 inf", "1 nan", "0 low"]).tolist() == [True, False, False]


def test_report_settings_of_detectors_a_run_did_not_apply_are_not_differences():
    from freqlens.compare import _unused_detector_settings_dropped

    config = {"detector.name": ["strip"], "detector.strip.repeat": 5, "detector.rap.trigger": "jj",
              "detector.onion.lm": "gpt2", "detector.frr": 0.01, "train.lr": 1e-3}
    assert _unused_detector_settings_dropped(config) == {"detector.name": ["strip"], "detector.strip.repeat": 5,
                                                         "detector.frr": 0.01, "train.lr": 1e-3}
