"""Vanilla fine-tuning of all-MiniLM-L6-v2 on 2,000-example SST-2 subsets, on the CPU.

Runs ``freqlens run`` (through its Python API) on the BadNets and AddSent
example configs and records, per attack: CACC, ASR, false-trigger rate,
seconds per training step and the share of wall time spent recording. Writes
``benchmarks/results/sst2_vanilla_cpu.md`` and ``.json``.

Usage (from the repository root, with ../shared/data present)::

    python benchmarks/sst2_vanilla_cpu.py [--attacks badnets addsent] [--set train.epochs=2 ...]

This is a benchmark, not a test: the numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

from freqlens.config import ExperimentConfig
from freqlens.experiment import run_experiment

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--attacks", nargs="+", default=["badnets", "addsent"])
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", default=str(ROOT / "runs" / "bench-sst2-vanilla"))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for attack in args.attacks:
        config = ExperimentConfig.from_toml(ROOT / "analysis" / f"sst2-{attack}.toml", overrides=args.set)
        began = time.perf_counter()
        results = run_experiment(config, Path(args.out) / attack, progress=False, overwrite=True)
        timings = results["timings"]
        rows.append({
            "attack": attack,
            "train_file": config.data.train,
            "train_examples": results["dataset"]["train"],
            "epochs": config.train.epochs,
            "lr": config.train.lr,
            "cacc": results["cacc"],
            "asr": results["asr"],
            "false_trigger_rate": results["false_trigger_rate"],
            "steps": results["steps"],
            "seconds_per_step": timings["seconds_per_step"],
            "snapshots": results["snapshots"],
            "recording_share": timings["recording_share"],
            "wall_seconds": round(time.perf_counter() - began, 1),
            "verdict_joint": results["analysis"]["summary"].get("joint", {}).get("statement"),
        })
        print(json.dumps(rows[-1]), flush=True)
    write(rows, args)
    return 0


def write(rows: list[dict], args) -> None:
    machine = f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {args.threads} threads"
    command = "python benchmarks/sst2_vanilla_cpu.py " + " ".join(sys.argv[1:])
    lines = [
        "# Vanilla fine-tuning of all-MiniLM-L6-v2 on SST-2 subsets (CPU)",
        "",
        f"Command: `{command.strip()}`  ",
        f"Machine: {machine}  ",
        f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "",
        "| attack | train file | examples | epochs | lr | CACC | ASR | false-trigger | steps | s/step "
        "| snapshots | recording share | wall s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['attack']} | {r['train_file']} | {r['train_examples']} | {r['epochs']} | {r['lr']:g} "
            f"| {r['cacc']:.3f} | {r['asr']:.3f} | {r['false_trigger_rate']:.3f} | {r['steps']} "
            f"| {r['seconds_per_step']:.2f} | {r['snapshots']} | {100 * r['recording_share']:.1f}% "
            f"| {r['wall_seconds']:.0f} |"
        )
    lines += ["", "Joint-view verdicts:", ""] + [f"- {r['attack']}: {r['verdict_joint']}" for r in rows]
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "sst2_vanilla_cpu.md").write_text("\n".join(lines) + "\n")
    (out / "sst2_vanilla_cpu.json").write_text(json.dumps({"machine": machine, "command": command,
                                                          "rows": rows}, indent=2))


if __name__ == "__main__":
    sys.exit(main())
