"""Make the instrument's figures (the learning-speed spectrum, the static target spectrum, the
eigenmode heat map) from real CPU runs on SST-2; one command for all of them.

    python benchmarks/sst2_defenses.py --budget cpu --attacks addsent \\
        --defenses vanilla lora muscle reference-only --seeds 0 1 --out runs/spectrum
    python benchmarks/sst2_defenses.py --budget cpu --attacks badnets stylebkd synbkd \\
        --defenses vanilla --seeds 0 --out runs/spectrum
    python figures/make_spectrum_figures.py runs/spectrum/*-s*

Writes into ``figures/spectrum/`` (PDF and PNG each), copies each run's
``results.json`` to ``figures/spectrum/data/``, writes ``numbers.json`` (the
numbers the README and docs quote, from the re-analysis) and rewrites
``figures/spectrum/README.md`` with the command and the source of every
figure. Every run is re-analysed by :func:`freqlens.compare.load_runs` with
its stored settings; the figures are drawn by the library's plot functions,
this script only chooses them.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from freqlens import plots  # noqa: E402
from freqlens.compare import configurations, groups, load_runs  # noqa: E402

HERE = Path(__file__).resolve().parent / "spectrum"
COMPARED = ("vanilla", "lora", "muscle", "reference-only")


def attack(group: str) -> str:
    """``sst-2/addsent (mix/0.1/train-poison.csv)`` -> ``addsent``."""
    return group.split(" ")[0].rstrip("/").split("/")[-1]


def _interval(estimate) -> list:
    return [float(np.asarray(estimate.estimate)), float(np.asarray(estimate.low)), float(np.asarray(estimate.high))]


def numbers(run) -> dict:
    """What the README quotes of one run: metrics, static low shares, verdict counts (joint view)."""
    a = run.analysis
    static = {space: {"clean": _interval(s.low_share["clean"]) if "clean" in s.low_share else None,
                      "backdoor": _interval(s.low_share["backdoor"]),
                      "difference": None if s.difference is None else _interval(s.difference)}
              for space, s in a.static_spectra.items()}
    verdicts = {family: v.outcomes for family, v in a.speed_verdicts.get("joint", {}).items()}
    return {"directory": str(run.directory), "seed": run.seed,
            **{k: run.metric(k) for k in ("cacc", "asr", "false_trigger_rate", "net_backdoor_effect")},
            "recording_share": run.results.get("timings", {}).get("recording_share"),
            "analysis_seconds": run.results.get("timings", {}).get("analysis_seconds"),
            "train_seconds": run.results.get("timings", {}).get("train_seconds"),
            "effective_neighbours": None if a.effective_neighbours is None else a.effective_neighbours.tolist(),
            "static": static, "verdicts": verdicts}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run directories of the SST-2 CPU benchmark")
    args = parser.parse_args()
    command = "python figures/make_spectrum_figures.py " + " ".join(args.runs)
    runs, problems = load_runs(args.runs)
    for problem in problems:
        print(f"left out {problem}", file=sys.stderr)
    shutil.rmtree(HERE / "data", ignore_errors=True)  # only the runs of this command
    (HERE / "data").mkdir(parents=True)
    entries, table = [], {}

    def save(fig, name: str, what: str, sources: list) -> None:
        plots.save_figure(fig, HERE / name)
        plt.close(fig)
        entries.append((name, what, sources))

    for run in runs:
        target = HERE / "data" / f"{run.directory.name}.json"  # e.g. addsent-vanilla-s0.json
        shutil.copy(run.directory / "results.json", target)
        run.results_copy = target.relative_to(HERE)
    for group, members in groups(runs).items():
        name = attack(group)
        table[name] = {}
        for label, repeats in configurations(members).items():
            table[name][label] = [numbers(r) for r in repeats]
        chosen = {label: [r.analysis for r in repeats] for label, repeats in configurations(members).items()
                  if repeats[0].defense in COMPARED}
        if len(chosen) > 1:
            save(plots.plot_speed_spectrum(chosen), f"sst2-{name}_speed_spectrum",
                 "learning-speed spectrum per eigenmode band, one line per defense (seeds: mean ± 1 sd; one "
                 "seed: its 95% bootstrap interval)", [r for r in members if r.defense in COMPARED])
            save(plots.plot_speed_spectrum(chosen, family="low"), f"sst2-{name}_speed_spectrum_widths",
                 "learning speed of the low-frequency error per filter width, one line per defense",
                 [r for r in members if r.defense in COMPARED])
        vanilla = next((r for r in members if r.defense == "vanilla" and r.seed == 0), None)
        if vanilla is not None:
            save(plots.plot_static_spectrum(vanilla.analysis), f"sst2-{name}_static_spectrum",
                 "static target spectrum per input space (before training)", [vanilla])
            save(plots.plot_mode_heatmap(vanilla.analysis), f"sst2-{name}_vanilla_mode_heatmap",
                 "error per eigenmode band over training, undefended", [vanilla])
    (HERE / "numbers.json").write_text(json.dumps({"command": command, "attacks": table}, indent=1) + "\n")
    lines = ["# Figures of the instrument (learning speeds, static spectra, eigenmodes)", "",
             "Every figure here comes from real CPU runs (all-MiniLM-L6-v2, SST-2, 2,000 training examples, "
             "2 epochs, 2 CPU cores, default `[record]` and `[analysis]` settings), re-analysed by "
             "`freqlens.compare.load_runs` with each run's stored settings and drawn by `freqlens.plots`; "
             "each is a PDF and a PNG. The runs come from the two `benchmarks/sst2_defenses.py` commands in "
             "the docstring of `figures/make_spectrum_figures.py`; the figures from:", "", f"    {command}", "",
             "The runs' `results.json` are in `data/`; `numbers.json` holds the numbers the README and "
             "`docs/spectrum.md` quote.", "",
             "| figure | what it shows | runs (results.json) |", "| --- | --- | --- |"]
    for name, what, sources in entries:
        files = ", ".join(f"`{r.results_copy}`" for r in sources[:8]) + (" ..." if len(sources) > 8 else "")
        lines.append(f"| `{name}.png` | {what} | {files} |")
    (HERE / "README.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
