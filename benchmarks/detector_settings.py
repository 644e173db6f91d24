"""Which settings make STRIP and RAP work on all-MiniLM-L6-v2? Each variant applied to one trained model.

The measurement behind the detectors' defaults (docs/detectors.md). For each
attack, one vanilla fine-tuning of the example config
(``analysis/sst2-<attack>.toml``: 2,000 training examples, 2 epochs, seed 0,
no recording) is kept in ``runs/detector-settings/<attack>/model`` (not
committed; reused when it is there); then every variant of
:data:`VARIANTS` is applied to that one model with
:func:`freqlens.detectors.evaluate_detector`, so the variants differ in the
detector only. Writes ``benchmarks/results/detector_settings/<attack>.json``
(one entry per variant, with the model's own CACC / ASR) and
``benchmarks/results/detector_settings.md`` (all attacks found).

Usage (from the repository root; a benchmark, not a test)::

    python benchmarks/detector_settings.py --data ../shared/data/sst-2 --attacks badnets
    python benchmarks/detector_settings.py --tabulate
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "detector_settings"

#: name -> the [detector] table of the variant (frr 0.01 and every other default unless it says otherwise).
VARIANTS = {
    "strip": {"name": "strip"},
    "strip frr=0.05": {"name": "strip", "frr": 0.05},
    "rap": {"name": "rap"},
    "rap accumulate": {"name": "rap", "rap": {"accumulate": True}},
    "rap epochs=20": {"name": "rap", "rap": {"epochs": 20}},
    "rap lr=0.1": {"name": "rap", "rap": {"lr": 0.1}},
    "rap lr=1": {"name": "rap", "rap": {"lr": 1.0}},
    "rap accumulate epochs=20": {"name": "rap", "rap": {"accumulate": True, "epochs": 20}},
    "rap accumulate lr=0.1": {"name": "rap", "rap": {"accumulate": True, "lr": 0.1}},
    "rap all dev inputs": {"name": "rap", "rap": {"target_only": False}},
}


def trained(attack: str, data: str):
    """The vanilla model of ``attack``'s example config, trained once and kept; with its tokenizer and data."""
    from transformers import AutoModelForSequenceClassification

    from freqlens.config import ExperimentConfig
    from freqlens.data.experiment import load_experiment
    from freqlens.data.splits import encode
    from freqlens.models.loading import load_model
    from freqlens.training import seed_everything, train

    overrides = [f"data.path={Path(data) / attack}"] if data else []
    config = ExperimentConfig.from_toml(ROOT / "analysis" / f"sst2-{attack}.toml", overrides)
    seed_everything(config.train.seed)
    dataset = load_experiment(config.data, config.attack, seed=config.train.seed)
    tokenizer, model = load_model(config.model, num_classes=config.data.num_classes)
    kept = ROOT / "runs" / "detector-settings" / attack / "model"
    if (kept / "config.json").is_file():
        model = AutoModelForSequenceClassification.from_pretrained(kept)
    else:
        began = time.perf_counter()
        train(model, encode(tokenizer, dataset.train, config.model.max_length), dataset.train.labels, config.train,
              progress=False)
        print(f"{attack}: trained in {time.perf_counter() - began:.0f} s", flush=True)
        model.save_pretrained(kept)
    model.eval()
    return model, tokenizer, dataset, config


def measure(attack: str, data: str, variants: list[str]) -> dict:
    from freqlens.detectors import DetectorConfig, Victim, evaluate_detector, make_detectors
    from freqlens.metrics import evaluate_model

    model, tokenizer, dataset, config = trained(attack, data)
    own = evaluate_model(model, tokenizer, dataset, max_length=config.model.max_length)
    path = OUT / f"{attack}.json"
    found = json.loads(path.read_text()) if path.is_file() else {}
    found.update({"attack": attack, "model": config.model.name, "cacc": own["cacc"], "asr": own["asr"],
                  "false_trigger_rate": own["false_trigger_rate"], "machine": machine()})
    found.setdefault("variants", {})
    victim = Victim(model, tokenizer, config.model.max_length, target_label=dataset.target_label)
    for name in variants:
        (detector,) = make_detectors(DetectorConfig(**VARIANTS[name]), seed=config.train.seed)
        found["variants"][name] = evaluate_detector(detector, victim, dataset)
        print(f"{attack} {name}: " + ", ".join(f"{k} {found['variants'][name].get(k)}" for k in
                                               ("frr", "far", "cacc", "asr", "rap_success", "seconds")), flush=True)
        OUT.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(found, indent=1, default=float) + "\n")  # after each variant: a kill loses one
    return found


def machine() -> str:
    return f"CPU ({platform.machine()}), {torch.get_num_threads()} threads; torch {torch.__version__}"


def tabulate() -> Path:
    lines = ["# STRIP and RAP settings on all-MiniLM-L6-v2 (SST-2, CPU budget, one model per attack)", "",
             "Command: `python benchmarks/detector_settings.py --data ../shared/data/sst-2 --attacks <attack>`, "
             "then `--tabulate`. Each variant is applied to the same trained vanilla model (2,000 examples, "
             "2 epochs, seed 0); FRR on clean test inputs, FAR on triggered ones, CACC / ASR after detection "
             "(a rejected input is neither correct nor the target); rap_success = share of RAP's training "
             "inputs whose target-probability drop ended in [0.1, 0.3]; s = the variant's wall seconds on a shared "
             "2-core CPU (not a speed measure).", "",
             "| attack | model CACC / ASR | variant | FRR | FAR | CACC after | ASR after | rap_success | s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for path in sorted(OUT.glob("*.json")):
        found = json.loads(path.read_text())
        for name, v in found["variants"].items():
            cells = [v.get(k) for k in ("frr", "far", "cacc", "asr", "rap_success")]
            text = ["–" if c is None or not np.isfinite(c) else f"{c:.3f}" for c in cells]
            lines.append(f"| {found['attack']} | {found['cacc']:.3f} / {found['asr']:.3f} | {name} | "
                         + " | ".join(text) + f" | {v.get('seconds', 0):.0f} |")
    target = OUT.parent / "detector_settings.md"
    target.write_text("\n".join(lines) + "\n")
    return target


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--attacks", nargs="+", default=["badnets"], choices=["badnets", "addsent", "stylebkd",
                                                                              "synbkd"])
    parser.add_argument("--data", default="", help="folder holding <attack>/ (default: the configs' data.path)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--tabulate", action="store_true", help="only write the table from the kept results")
    args = parser.parse_args()
    if not args.tabulate:
        for attack in args.attacks:
            measure(attack, args.data, args.variants)
    print(tabulate().read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
