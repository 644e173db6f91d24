"""Make the figures of what each defense changes in what is learned (issue 15, item 7) from real CPU
runs on SST-2; one command for all of them.

    python benchmarks/sst2_defenses.py --budget cpu --attacks badnets addsent stylebkd synbkd \\
        --defenses vanilla reference-only muscle early-loss cube --seeds 0
    python figures/make_defense_figures.py runs/bench-sst2-defenses-cpu/*-s0

For each attack: the learning-speed spectrum of each defense beside vanilla's
(:func:`freqlens.plots.plot_speed_beside_baseline`, the figure the comparison
report of ``freqlens report`` draws as ``<group>_speed_vs_vanilla``). Writes
into ``figures/defenses/`` (PDF and PNG each), copies each run's
``results.json`` to ``figures/defenses/data/`` and rewrites
``figures/defenses/README.md`` with the command, the source of every figure
and each run's CACC / ASR / net. Every run is re-analysed by
:func:`freqlens.compare.load_runs` with its stored settings; this script only
chooses the figures.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from freqlens import plots  # noqa: E402
from freqlens.compare import configurations, groups, load_runs  # noqa: E402

HERE = Path(__file__).resolve().parent / "defenses"
SHOWN = ("vanilla", "reference-only", "muscle", "early-loss", "cube")  # in this order, vanilla the baseline


def attack(group: str) -> str:
    """``sst-2/addsent (mix/0.1/train-poison.csv)`` -> ``addsent``."""
    return group.split(" ")[0].rstrip("/").split("/")[-1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run directories of the SST-2 CPU benchmark")
    args = parser.parse_args()
    command = "python figures/make_defense_figures.py " + " ".join(args.runs)
    runs, problems = load_runs(args.runs)
    for problem in problems:
        print(f"left out {problem}", file=sys.stderr)
    shutil.rmtree(HERE / "data", ignore_errors=True)  # only the runs of this command
    (HERE / "data").mkdir(parents=True)
    entries, rows = [], []
    for group, members in sorted(groups(runs).items(), key=lambda item: attack(item[0])):
        name = attack(group)
        chosen = {label: repeats for label, repeats in configurations(members).items() if repeats[0].defense in SHOWN}
        order = sorted(chosen, key=lambda label: SHOWN.index(chosen[label][0].defense))
        if len(order) < 2 or chosen[order[0]][0].defense != "vanilla":
            print(f"{name}: no vanilla run and a defense beside it; no figure", file=sys.stderr)
            continue
        sources = [run for label in order for run in chosen[label]]
        for run in sources:
            target = HERE / "data" / f"{run.directory.name}.json"  # e.g. addsent-cube-s0.json
            shutil.copy(run.directory / "results.json", target)
            rows.append(f"| {name} | {run.label} | {run.seed} | {run.metric('cacc'):.3f} | {run.metric('asr'):.3f} "
                        f"| {run.metric('net_backdoor_effect'):.3f} | `data/{target.name}` |")
        fig = plots.plot_speed_beside_baseline({label: [r.analysis for r in chosen[label]] for label in order})
        fig.suptitle(f"SST-2 {name}: {fig.get_suptitle()}")  # the library's title, the attack named
        stem = f"sst2-{name}_speed_vs_vanilla"
        plots.save_figure(fig, HERE / stem)
        plt.close(fig)
        entries.append(f"| `{stem}.png` | {', '.join(order[1:])} beside vanilla |")
    lines = ["# What each defense changes in what is learned", "",
             "Real CPU runs (all-MiniLM-L6-v2, SST-2, 2,000 training examples, 2 epochs, seed 0, default "
             "`[record]` and `[analysis]` settings), re-analysed by `freqlens.compare.load_runs` and drawn by "
             "`freqlens.plots.plot_speed_beside_baseline`; each a PDF and a PNG. Each row of a figure: one "
             "defense's speed per eigenmode band (colour, its 95% bootstrap interval) over vanilla's (grey), "
             "backdoor probes left, clean probes right. The runs come from the benchmark command in the "
             "docstring of `figures/make_defense_figures.py` (`runs/bench-sst2-defenses/` is that "
             "benchmark's run folder from before run folders were named per budget); the figures from:", "", f"    {command}", "",
             "| figure | what it shows |", "| --- | --- |", *entries, "",
             "| attack | run | seed | CACC | ASR | net | results.json |", "|---|---|---|---|---|---|---|", *rows]
    (HERE / "README.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
