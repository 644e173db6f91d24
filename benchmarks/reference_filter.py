"""Could the clean reference set find StyleBkd's and SynBkd's poisoned examples, where learning order cannot?

A probe for the gap that issue 15 leaves open (docs/defenses.md, "Measured"):
no filter in freqlens finds the poisoned examples of StyleBkd and SynBkd,
because those backdoors are not learned first. The one signal left that does
not depend on learning order is the label: a model trained on the 256 clean
reference examples alone (as ``reference-only`` trains) disagrees with a
poisoned example whose label was flipped to the target. For each attack, on
the example config (``analysis/sst2-<attack>.toml``: all-MiniLM-L6-v2, 2,000
training examples, 10% poisoned, seed as given):

1. train a model on the reference set (16 epochs; ``split_reference``, seed
   0, as the defenses draw it), take every training example's eval-mode loss
   on its own label, and score flagging the highest-loss ``rate`` share
   against the poison flags (precision / recall);
2. the best such a filter could do: drop exactly the poisoned examples the
   reference model disagrees with (loss above ln 2, i.e. it predicts another
   class; no clean example dropped), train as vanilla on the rest, and
   measure CACC, ASR, false-trigger rate and net backdoor effect.

Appends one JSON line per attack to
``benchmarks/results/reference_filter.jsonl`` and writes
``benchmarks/results/reference_filter.md``.

Usage (from the repository root; a benchmark, not a test; about 3 minutes per
attack on 2 CPU cores)::

    python benchmarks/reference_filter.py --data ../shared/data/sst-2 --attacks stylebkd synbkd
    python benchmarks/reference_filter.py --analyse
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
RECORDS = ROOT / "benchmarks" / "results" / "reference_filter.jsonl"
RATES = (0.1, 0.2, 0.3)
sys.path.insert(0, str(Path(__file__).resolve().parent))


def measure(attack: str, data: str | None, seed: int, reference_size: int, reference_epochs: int) -> dict:
    from filter_signals import example_setup

    from freqlens.data.splits import encode, split_reference
    from freqlens.defenses.abl import per_example_losses
    from freqlens.defenses.filtering import subset
    from freqlens.metrics import evaluate_backdoor
    from freqlens.models import predict_proba
    from freqlens.training import train

    began = time.perf_counter()
    config, dataset, model, encodings, labels, tokenizer = example_setup(attack, data, seed)
    initial = copy.deepcopy(model.state_dict())
    _, reference = split_reference(dataset, reference_size, seed=0)
    train(model, encode(tokenizer, reference, config.model.max_length), np.asarray(reference.labels),
          replace(config.train, epochs=reference_epochs), progress=False)
    losses = per_example_losses(model, encodings, labels)
    poison = np.asarray(dataset.train.poison, dtype=bool)
    order = np.argsort(-losses, kind="stable")
    rates = {}
    for rate in RATES:
        flagged = np.zeros(len(losses), dtype=bool)
        flagged[order[:int(round(rate * len(losses)))]] = True
        hits = int((flagged & poison).sum())
        rates[str(rate)] = {"precision": round(hits / flagged.sum(), 3), "recall": round(hits / poison.sum(), 3)}
    disagreed = poison & (losses > np.log(2))  # the poisoned examples the reference model labels otherwise
    model.load_state_dict(initial)
    rows = np.flatnonzero(~disagreed)
    train(model, subset(encodings, rows), torch.as_tensor(labels[rows]), config.train, progress=False)
    metrics = evaluate_backdoor(lambda split: predict_proba(model, encode(tokenizer, split, config.model.max_length)),
                                dataset)
    return {"attack": attack, "seed": seed, "reference_size": reference_size, "reference_epochs": reference_epochs,
            "training_examples": int(len(labels)), "poisoned": int(poison.sum()),
            "clean_disagreed": int((~poison & (losses > np.log(2))).sum()), "poisoned_disagreed": int(disagreed.sum()),
            "rates": rates, **{k: round(float(metrics[k]), 3) for k in
                               ("cacc", "asr", "false_trigger_rate", "net_backdoor_effect")},
            "seconds": round(time.perf_counter() - began, 1), "machine": platform.machine()}


def analyse() -> Path:
    records = [json.loads(line) for line in RECORDS.read_text().splitlines() if line.strip()]
    lines = [
        "# The reference set as a filter: StyleBkd and SynBkd",
        "",
        "Command: `python benchmarks/reference_filter.py --data ../shared/data/sst-2 --attacks stylebkd synbkd`  ",
        f"Machine: CPU ({platform.machine()}), 2 cores",
        "",
        "all-MiniLM-L6-v2, the example configs (2,000 training examples, 200 poisoned, mix/0.1: part of them "
        "flipped to the target, the rest already of it). A model trained on the clean reference set alone scores "
        "every training example by its loss on its own label. *rate r*: precision / recall of flagging the highest-"
        "loss share r. *disagreed*: training examples the reference model puts in another class (poisoned / clean). "
        "*drop the disagreed poisons*: the best this filter could do, every poisoned example it disagrees with "
        "removed and no clean one, then vanilla training: CACC / ASR / false-trigger / net.",
        "",
        "| attack | seed | " + " | ".join(f"rate {r}" for r in RATES)
        + " | disagreed (poisoned / clean) | drop the disagreed poisons | s |",
        "|---" * (5 + len(RATES)) + "|",
    ]
    for r in records:
        cells = [f"{r['rates'][str(rate)]['precision']:.2f} / {r['rates'][str(rate)]['recall']:.2f}" for rate in RATES]
        lines.append(f"| {r['attack']} | {r['seed']} | " + " | ".join(cells)
                     + f" | {r['poisoned_disagreed']} of {r['poisoned']} / {r['clean_disagreed']} | "
                     f"{r['cacc']:.3f} / {r['asr']:.3f} / {r['false_trigger_rate']:.3f} / "
                     f"{r['net_backdoor_effect']:.3f} | {r['seconds']:.0f} |")
    path = RECORDS.with_suffix(".md")
    path.write_text("\n".join(lines) + "\n")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--attacks", nargs="+", default=["stylebkd", "synbkd"],
                        choices=["badnets", "addsent", "stylebkd", "synbkd"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reference-size", type=int, default=256)
    parser.add_argument("--reference-epochs", type=int, default=16)
    parser.add_argument("--data", default="", help="folder holding <attack>/ (default: the configs' data.path)")
    parser.add_argument("--analyse", action="store_true", help="only tabulate the recorded measurements")
    args = parser.parse_args()
    if not args.analyse:
        from filter_signals import append_records

        append_records(RECORDS, (measure(attack, args.data or None, args.seed, args.reference_size,
                                         args.reference_epochs) for attack in args.attacks))
    print(analyse().read_text())


if __name__ == "__main__":
    main()
