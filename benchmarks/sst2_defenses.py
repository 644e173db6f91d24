"""Every defense against every attack on SST-2 with all-MiniLM-L6-v2: one table.

Each (attack, defense, seed) is one ``freqlens run`` of the example config
``analysis/sst2-<attack>.toml`` with ``defense.name`` set, in its own process
(``--parallel`` of them at a time: several MiniLM runs share one GPU well).
Two budgets:

- ``paper``: the full training set (6,920 examples), 10 epochs, train.lr 2e-5
  (adapter defenses on MiniLM default to 5e-4, see ``freqlens.defenses.registry``);
  meant for a GPU.
- ``cpu``: the example configs as they are (2,000 examples, 2 epochs, lr 4e-5).

The defenses are every registered one (:data:`freqlens.defenses.DEFENSES`, in
registration order): a new defense is benchmarked without editing this file.

Writes ``benchmarks/results/sst2_defenses_<budget>.md`` and ``.csv`` with the
command, the machine that tabulated it and the device each run recorded. Run
folders live in ``runs/bench-sst2-defenses-<budget><suffix>/`` (``--out``). A
run whose ``results.json`` exists is not run again (delete its folder to redo
it), so an interrupted benchmark resumes; a stored run counts only if its
recorded config agrees with the table's settings (budget, ``--set``, seed,
defense and its ``@`` settings: :func:`mismatch`), else it is neither
tabulated nor archived, and the table says why. Each
run's ``results.json`` (about 70 KB) is also copied to
``benchmarks/results/runs/<budget><suffix>/<attack>-<defense>-s<seed>.json``,
which is committed: a run found there is not run again either (delete both
to redo it), and the tables can be rebuilt on a fresh clone with
``--no-run``. Runs with other settings (``--set``) belong under their own
``--suffix``: a stored run of other settings is never run over (the table
lists it under "Not run" and says so); with
``--no-run`` the table is made from the ``results.json`` files already there
(those of earlier freqlens versions too: a field they lack is "–"). The
Markdown file holds two tables: one row per run (CACC, ASR, false-trigger rate,
net backdoor effect, the clean examples the defense used, the training
examples it removed and their detection precision / recall / F1, ...), then
the layout of the papers' main comparison: defenses as rows, attacks as
columns, CACC / ASR / net per cell, mean ± sample standard deviation over the
seeds where there are several.

``--detectors strip rap`` applies those inference-time detectors after each
training run (``detector.name``); each adds a row ``<defense> + <detector>``
with CACC / ASR / net after it filtered the test inputs and its FRR / FAR. A
run kept without a detector asked for is run again with it (the same
training: detectors do not change it). A run that fails (e.g. ONION without
its language model offline) is listed under "Not run" with its log's last line,
kept beside the archived runs (``<run>.failed.txt``) so that ``--no-run`` lists
it again; an earlier result of the same run still gives its rows.

Usage (from the repository root)::

    python benchmarks/sst2_defenses.py --budget paper --parallel 8 \\
        --model .device/minilm --data .device/sst-2
    python benchmarks/sst2_defenses.py --budget cpu --attacks addsent --defenses vanilla muscle
    python benchmarks/sst2_defenses.py --budget cpu --defenses vanilla early-loss --detectors strip rap

This is a benchmark, not a test: the numbers depend on the machine and seed.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import platform
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from freqlens.defenses import (
    DEFENSES,  # every registered defense, in registration order (a live view)
)
from freqlens.detectors import DETECTORS

ROOT = Path(__file__).resolve().parents[1]
ATTACKS = ("badnets", "addsent", "synbkd", "stylebkd")
BUDGETS = {
    "paper": ["data.max_train=100000", "data.max_eval=100000", "train.epochs=10", "train.lr=2e-5"],
    # the example configs' own values, stated so that a stored run of other settings is told apart
    "cpu": ["data.max_train=2000", "data.max_eval=400", "train.epochs=2", "train.lr=4e-5"],
}
COLUMNS = ("attack", "defense", "seed", "cacc", "asr", "false_trigger_rate", "net_backdoor_effect", "frr", "far",
           "clean_examples", "removed", "precision", "recall", "f1", "best_epoch", "lr", "trainable_parameters",
           "backdoor_first_joint", "backdoor_first_separate",
           "speed_first_widths", "speed_first_modes", "recording_share", "seconds", "device")


def defense_variant(text: str) -> str:
    """``name`` or ``name@key=value,key=value`` (defense settings as keys under ``defense.``, e.g.
    ``muscle@reference_size=512,ga.mu=0.2``), checked against the registered defenses."""
    name = text.partition("@")[0]
    if name not in DEFENSES:
        raise argparse.ArgumentTypeError(f"expected one of {tuple(DEFENSES)}, optionally with @key=value,..., "
                                         f"got {text!r}")
    return text


def variant_settings(defense: str) -> list[str]:
    """The ``key=value`` items of a defense variant's ``@`` part, split at the commas outside brackets,
    braces and quotes (``mslr@mslr.bands=[1,2],mslr.rank=2`` -> ``["mslr.bands=[1,2]", "mslr.rank=2"]``)."""
    settings = defense.partition("@")[2]
    items, depth, quote, start = [], 0, "", 0
    for i, char in enumerate(settings):
        if quote:
            quote = "" if char == quote else quote
        elif char in "\"'":
            quote = char
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
        elif char == "," and depth == 0:
            items.append(settings[start:i])
            start = i + 1
    items.append(settings[start:])
    return [item for item in items if item.strip()]


def override(text: str) -> str:
    """A ``--set`` item, checked as ``freqlens run --set`` reads it (``section.key=value``)."""
    from freqlens.settings import apply_override

    try:
        apply_override({}, text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def run_name(defense: str) -> str:
    """The run folder's name for a defense variant: ``muscle@ga.subspace=4,ga.pure=true`` ->
    ``muscle_ga_subspace4_ga_puretrue`` (the dot of a nested key as an underscore, as the flat keys of
    earlier versions were named, so that their results are found again). Keys are stripped and a quoted
    string is taken as its text, so that ``first_size = "all"`` and ``first_size=all`` name one run;
    other values stay as written (``lr=5e-4``); a character that cannot be in a folder name becomes ``-``."""
    from freqlens.settings import parse_value

    name = defense.partition("@")[0]
    items = []
    for key, _, text in (item.partition("=") for item in variant_settings(defense)):
        value = parse_value(text)  # a quoted string as its text; anything else as written
        items.append(key.strip().replace(".", "_") + (value if isinstance(value, str) else text.strip()))
    return re.sub(r"[^\w.+-]", "-", "_".join([name, *items]))  # a folder name, never a path


def run_one(attack: str, defense: str, seed: int, args) -> tuple[list[dict], str | None]:
    """Run (or find) one (attack, defense, seed): its rows (:func:`rows_of`), and why it failed (the last
    line of its log) or None. A run found here or in the archive is not run again unless it lacks a
    detector of ``--detectors``: then the same training runs again with them applied after it."""
    name, _, settings = defense.partition("@")
    out = Path(args.out) / f"{attack}-{run_name(defense)}-s{seed}"
    results = out / "results.json"
    kept = archived(args) / f"{out.name}.json"  # committed: rebuilds the table
    failed = kept.parent / f"{out.name}.failed.txt"  # committed too: why the last try of it failed
    expected = settings_of(defense, seed, args)
    found, stored, refused = None, None, {}  # refused: stored file -> why it does not count
    for candidate in (results, kept):  # a stored run counts only if it was made with this table's settings
        if not candidate.is_file():
            continue
        content = json.loads(candidate.read_text())
        if not isinstance(content, dict) or not isinstance(content.get("config"), dict) or not content["config"]:
            refused[candidate] = f"{candidate} records no config, so its settings cannot be told (not used)"
            continue
        differs = mismatch(content, expected)
        if differs is None:
            if found is None:
                found, stored = candidate, content
        else:
            refused[candidate] = f"{candidate} {differs} (not used)"
    for why in refused.values():
        print(f"{attack} {defense} seed {seed}: {why}", file=sys.stderr)
    if stored is not None:
        missing = missing_detectors(stored, args.detectors)
        if args.no_run or not missing:
            notes = []
            if kept in refused:  # the run folder's run is tabulated; the archive (committed) keeps its own
                notes.append(refused[kept] + ": the archive keeps it (not copied over); give this table its own "
                             "--suffix")
            elif found == results:
                kept.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(results, kept)
            if missing and failed.is_file():
                notes.append(failed.read_text().strip())
            elif missing:
                notes.append(f"its results.json has no {', '.join(missing)} (the run was made without it)")
            return rows_of(attack, defense, seed, stored, args.detectors), "; ".join(notes) or None
    if args.no_run:
        why = failed.read_text().strip() if failed.is_file() else None
        return [], "; ".join([*refused.values(), *([why] if why else [])]) or None
    if refused:  # running would write over a stored run of other settings (in the archive: a committed one)
        why = ("; ".join(refused.values()) + ": not run over it; give a table of other settings its own "
               "--suffix, or delete the stored run to redo it")
        return (rows_of(attack, defense, seed, stored, args.detectors) if stored is not None else []), why
    out.mkdir(parents=True, exist_ok=True)
    overrides = list(expected)
    if args.detectors:
        overrides.append(f"detector.name={','.join(args.detectors)}")
    if args.model:
        overrides.append(f"model.name={args.model}")
    if args.data:
        overrides.append(f"data.path={Path(args.data) / attack}")
    command = [sys.executable, "-m", "freqlens.cli", "run", str(ROOT / "analysis" / f"sst2-{attack}.toml"),
               "--out", str(out), "--no-progress", "--overwrite"]
    for item in overrides:
        command += ["--set", item]
    began = time.perf_counter()
    with open(out / "log.txt", "w") as log:
        code = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    print(f"{attack:9s} {defense:15s} seed {seed}: exit {code} after {time.perf_counter() - began:.0f} s",
          flush=True)
    if code != 0 or not results.is_file():  # a refused run leaves an earlier results.json as it was
        lines = [line for line in (out / "log.txt").read_text().splitlines() if line.strip()]
        why = (f"exit {code}" + (f" (detectors {', '.join(args.detectors)})" if args.detectors else "")
               + f": {lines[-1].strip() if lines else 'no output'}")
        failed.parent.mkdir(parents=True, exist_ok=True)
        failed.write_text(why + "\n")
        return (rows_of(attack, defense, seed, stored, args.detectors) if stored is not None else []), why
    kept.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(results, kept)
    failed.unlink(missing_ok=True)
    return rows_of(attack, defense, seed, json.loads(results.read_text()), args.detectors), None


def settings_of(defense: str, seed: int, args) -> list[str]:
    """The ``key=value`` settings a run of this table is made with (the budget's, the defense and its
    ``@`` settings, the seed, ``--set``; later ones win), which a stored run must have been made with
    to count (:func:`mismatch`). ``model.name`` and ``data.path`` are not among them: the same weights
    and data sit at other paths on another machine."""
    name = defense.partition("@")[0]
    return [*BUDGETS[args.budget], f"defense.name={name}", f"train.seed={seed}", *args.set,
            *(f"defense.{item.strip()}" for item in variant_settings(defense))]


def mismatch(results: dict, expected: list[str]) -> str | None:
    """Why a stored ``results.json`` was not made with the settings ``expected`` (``key=value`` as
    ``--set`` takes them, the last of a key winning), e.g. ``"has train.epochs=2, not 10"``; None where
    it agrees. The stored config is first read as its freqlens ran it
    (:meth:`freqlens.config.ExperimentConfig.upgrade`: flat keys nested, a default that changed since
    written in as it was then); ``expected`` is parsed as ``--set`` parses it
    (:func:`freqlens.settings.apply_override`: TOML values, keys stripped, flat defense keys nested).
    Each key of ``expected`` must agree, and so must every setting of the stored ``[defense]`` that
    ``expected`` leaves at today's default (a run made before a default changed is not today's
    default). A key the stored run did not record is read at today's default (where the defense says
    its default changed, at the earlier one); a section it did not record at all cannot disagree.
    Numbers compare as numbers (``4e-5`` = ``4e-05``), everything else exactly (``"All"`` is not
    ``"all"``)."""
    from freqlens.config import ExperimentConfig
    from freqlens.defenses.registry import DefenseConfig, nest_flat_keys
    from freqlens.settings import apply_override, build, format_value

    config = results.get("config") if isinstance(results, dict) else None
    stored = ExperimentConfig.upgrade(config if isinstance(config, dict) else {})
    wanted: dict = {}
    for item in expected:
        apply_override(wanted, item)
    if isinstance(wanted.get("defense"), dict):
        wanted["defense"] = nest_flat_keys(wanted["defense"])
    for key, want in _leaves(wanted):
        value = _at(stored, key)
        if value is not _MISSING and not _same(value, want):
            return f"has {key}={format_value(value)}, not {format_value(want)}"
    defense = stored.get("defense")
    if isinstance(defense, dict) and defense.get("name") in DEFENSES and "defense" in wanted:
        try:  # today's defaults for what `expected` leaves unset
            today = json.loads(json.dumps(dataclasses.asdict(build(DefenseConfig, wanted["defense"], "defense")),
                                          default=str))
        except (ValueError, TypeError) as error:
            return f"cannot be compared: {error}"
        for key, want in _leaves({"defense": today}):
            value = _at(stored, key)
            if value is not _MISSING and not _same(value, want):
                return f"has {key}={format_value(value)}, not today's default {format_value(want)}"
    return None


def _leaves(table: dict, prefix: str = ""):
    """``(dotted key, value)`` for every value of the nested ``table`` that is not a table."""
    for key, value in table.items():
        if isinstance(value, dict) and value:
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _at(config: dict, key: str):
    """The value at dotted ``key`` of ``config``, or ``_MISSING``."""
    value = config
    for part in key.split("."):
        value = value.get(part, _MISSING) if isinstance(value, dict) else _MISSING
    return value


def _same(value, want) -> bool:
    """Numbers as numbers (not booleans), lists item by item, everything else exactly."""
    def number(x):
        return isinstance(x, (int, float)) and not isinstance(x, bool)
    if isinstance(value, bool) or isinstance(want, bool):  # true is not 1
        return isinstance(value, bool) and isinstance(want, bool) and value == want
    if number(value) and number(want):
        return bool(np.isclose(float(value), float(want), rtol=1e-9, atol=0.0, equal_nan=True))
    if isinstance(value, (list, tuple)) and isinstance(want, (list, tuple)):
        return len(value) == len(want) and all(_same(a, b) for a, b in zip(value, want))
    return value == want


_MISSING = object()


def missing_detectors(results: dict, detectors: list[str]) -> list[str]:
    """The detectors of ``detectors`` that a run's ``results.json`` did not apply."""
    return [d for d in detectors if d not in (results.get("detectors") or {})]


def rows_of(attack: str, defense: str, seed: int, r: dict, detectors: list[str] | None = None) -> list[dict]:
    """The run's row (:func:`row`), then one row per inference-time detector it applied after training
    (those of ``detectors`` only, when given), named ``<defense> + <detector>``: CACC, ASR, false-trigger
    rate and net after the detector filtered (or repaired) the test inputs, and its FRR and FAR; the
    training-side columns are the run's. A detector that failed (``error``) has no row."""
    own = row(attack, defense, seed, r)
    rows = [own]
    for name, d in (r.get("detectors") or {}).items():
        if (detectors and name not in detectors) or not isinstance(d, dict) or d.get("error"):
            continue
        rows.append({**own, "defense": f"{defense} + {name}", "cacc": d.get("cacc"), "asr": d.get("asr"),
                     "false_trigger_rate": d.get("false_trigger_rate"),
                     "net_backdoor_effect": d.get("net_backdoor_effect"), "frr": d.get("frr"), "far": d.get("far"),
                     "seconds": d.get("seconds")})
    return rows


def archived(args) -> Path:
    """Where each run's results.json is kept in the repository: one folder per budget and ``--suffix``
    (a table made with other settings, e.g. ``--set data.max_train=...``, takes its own suffix, so that
    its runs are neither found in nor mixed with another table's)."""
    return ROOT / "benchmarks" / "results" / "runs" / f"{args.budget}{args.suffix}"


def row(attack: str, defense: str, seed: int, r: dict) -> dict:
    """One run's row (:data:`COLUMNS`) from its ``results.json`` ``r``. ``clean_examples`` (the clean
    reference examples the defense used), ``removed`` (training examples a filtering defense dropped)
    and its detection ``precision``, ``recall`` and ``f1`` against the poison flags come from
    ``r["defense"]``; None where the run did not record them (an earlier freqlens, a defense that
    removes nothing)."""
    summary = r["analysis"]["summary"]
    done = r.get("defense") or {}
    detection = done.get("detection") or {}
    return {
        "attack": attack, "defense": defense, "seed": seed,
        "cacc": r["cacc"], "asr": r["asr"], "false_trigger_rate": r["false_trigger_rate"],
        "net_backdoor_effect": r["asr"] - r["false_trigger_rate"], "frr": None, "far": None,
        "clean_examples": done.get("clean_examples"), "removed": done.get("removed"),
        "precision": detection.get("precision"), "recall": detection.get("recall"), "f1": detection.get("f1"),
        "best_epoch": done.get("best_epoch"), "lr": done.get("lr"),
        "trainable_parameters": done.get("trainable_parameters"),
        "backdoor_first_joint": summary.get("joint", {}).get("counts", {}).get("backdoor first", 0),
        "backdoor_first_separate": summary.get("separate", {}).get("counts", {}).get("backdoor first", 0),
        "speed_first_widths": _speed_first(summary, "low"),
        "speed_first_modes": _speed_first(summary, "modes"),
        "recording_share": r["timings"]["recording_share"],
        "seconds": r["timings"].get("total_seconds"),
        "device": _device(r),
    }


def _device(r: dict) -> str | None:
    """The device a run's results.json says it ran on, shortened (``cuda:0 (NVIDIA H200)`` -> ``NVIDIA
    H200``, ``cpu`` -> ``CPU``); None for a run of a freqlens that did not record it."""
    environment = r.get("environment")
    device = environment.get("device") if isinstance(environment, dict) else None
    if not device or not isinstance(device, str):
        return None
    kind, bracket, named = device.partition("(")
    if bracket and named.endswith(")"):  # only the outer bracket: "cuda:0 (GPU (MIG 1g))" -> "GPU (MIG 1g)"
        named = named[:-1]
    return (named.strip() if bracket else kind.strip().upper()) or device


def _speed_first(summary: dict, family: str) -> str:
    """``"k/K"``: widths or eigenmode bands where the backdoor was learned faster with a 95% interval
    that excludes a tie (joint view); ``"–"`` for a run analysed before intervals existed."""
    counts = summary.get("joint", {}).get("speed_counts", {}).get(family)
    return "–" if not counts else f"{counts.get('backdoor first', 0)}/{sum(counts.values())}"


def machine() -> str:
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({platform.processor() or platform.machine()})"
    return f"{device}; torch {torch.__version__}; Python {platform.python_version()}; {platform.platform()}"


def fmt(value) -> str:
    """A Markdown table cell: floats to 3 decimals, "–" for a missing value, ``|`` escaped in text."""
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value).replace("|", "\\|")


def _number(value, spec: str) -> str:
    """``value`` with the format ``spec``; "–" where it was not recorded."""
    return "–" if value is None else format(value, spec)


def runs_table(rows: list[dict]) -> list[str]:
    """The Markdown table of the runs, one row each (:data:`COLUMNS`); "–" where a run lacks a value."""
    lines = [
        "| attack | defense | seed | CACC | ASR | false-trigger | net | FRR | FAR | clean | removed | precision | "
        "recall | F1 | best epoch | lr | trainable | first (joint/sep.) | faster (widths) | faster (modes) | "
        "recording | s | device |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {fmt(r['attack'])} | {fmt(r['defense'])}{' †' if r.get('source') else ''} | {r['seed']} | "
            f"{fmt(r['cacc'])} | "
            f"{fmt(r['asr'])} | "
            f"{fmt(r['false_trigger_rate'])} | {fmt(r['net_backdoor_effect'])} | {fmt(r.get('frr'))} | "
            f"{fmt(r.get('far'))} | {fmt(r.get('clean_examples'))} | "
            f"{fmt(r.get('removed'))} | {fmt(r.get('precision'))} | {fmt(r.get('recall'))} | {fmt(r.get('f1'))} | "
            f"{fmt(r['best_epoch'])} | {_number(r['lr'], 'g')} | {_number(r['trainable_parameters'], ',')} | "
            f"{r['backdoor_first_joint']}/{r['backdoor_first_separate']} | {r.get('speed_first_widths', '–')} | "
            f"{r.get('speed_first_modes', '–')} | {_number(r['recording_share'], '.1%')} | {fmt(r['seconds'])} | "
            f"{fmt(r.get('device'))} |"
        )
    return lines


def _mean_sd(values: list[float | None]) -> str:
    """``0.812`` for one value, ``0.812 ± 0.010`` (sample standard deviation) for several, ``(n=k)`` where
    only k of the runs measured it (None or NaN: e.g. a detector's ASR on an empty split); "–" for none."""
    measured = [v for v in values if v is not None and np.isfinite(v)]
    part = "" if len(measured) == len(values) else f" (n={len(measured)})"
    if not measured:
        return "–"
    if len(measured) == 1:
        return f"{measured[0]:.3f}{part}"
    return f"{np.mean(measured):.3f} ± {np.std(measured, ddof=1):.3f}{part}"


def paper_table(rows: list[dict]) -> list[str]:
    """The layout of the papers' main comparison, as Markdown: one row per defense (in the order
    the rows first name it), one column per attack (in :data:`ATTACKS` order, those with a run),
    each cell ``CACC / ASR / net`` over the seeds run (mean ± sample standard deviation where there
    are several; the ``seeds`` column says how many per attack); ``clean`` is the clean examples the
    defense used ("–" where no run recorded it). "–" for an attack the defense was not run on."""
    attacks = [a for a in ATTACKS if any(r["attack"] == a for r in rows)]
    attacks += list(dict.fromkeys(r["attack"] for r in rows if r["attack"] not in attacks))
    defenses = list(dict.fromkeys(r["defense"] for r in rows))
    lines = ["| defense | clean | seeds | " + " | ".join(map(fmt, attacks)) + " |", "|---" * (3 + len(attacks)) + "|"]
    for defense in defenses:
        mine = [r for r in rows if r["defense"] == defense]
        clean = sorted({r["clean_examples"] for r in mine if r.get("clean_examples") is not None})
        counts, cells = [], []
        for attack in attacks:
            runs = [r for r in mine if r["attack"] == attack]
            counts.append(str(len(runs)))
            cells.append(" / ".join(_mean_sd([r[m] for r in runs]) for m in ("cacc", "asr", "net_backdoor_effect"))
                         if runs else "–")
        run = {c for c in counts if c != "0"}  # one count for every attack run: said once
        seeds = run.pop() if len(run) == 1 else "/".join(counts)
        lines.append(f"| {fmt(defense)} | {', '.join(f'{c:g}' for c in clean) or '–'} | {seeds} | "
                     + " | ".join(cells) + " |")
    return lines


def write_table(rows: list[dict], args, command: str, seconds: float, failures: list[str] = ()) -> Path:
    results = ROOT / "benchmarks" / "results"
    results.mkdir(parents=True, exist_ok=True)
    stem = results / f"sst2_defenses_{args.budget}{args.suffix}"
    with open(stem.with_suffix(".csv"), "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    lines = [
        f"# SST-2, all-MiniLM-L6-v2: defenses side by side ({args.budget} budget)",
        "",
        f"Command: `{command}`  ",
        f"Tabulated on: {machine()}  ",
        f"Runs made on: {', '.join(sorted({fmt(r.get('device')) for r in rows if r.get('device')})) or '–'} "
        "(the device column; – = a run of a freqlens that did not record its device)  ",
        ("Tabulated from the stored runs (`--no-run`): the same command without `--no-run` makes the runs "
         "(with `--detectors` for the `<defense> + <detector>` rows); their times are the `s` column."
         if args.no_run else
         f"Wall time of the benchmark: {seconds / 60:.1f} min ({args.parallel} runs at a time)."),
        "",
        "net = ASR − false-trigger rate; clean = clean examples the defense used (its reference set); removed, "
        "precision, recall, F1 = training examples a filtering defense removed, and how well they match the "
        "poisoned ones; first = widths where the backdoor's low-frequency "
        "error converged before the clean set's (joint / separate view); faster (widths, modes) = widths and "
        "eigenmode bands where the backdoor's learning speed was higher with a 95% bootstrap interval "
        "excluding a tie (joint view); best epoch = the epoch kept by clean-dev selection (defended runs); "
        "– = not recorded by the run (an earlier freqlens, a defense that removes nothing).",
        *([f"† = a row of an earlier table ({', '.join(sorted({r['source'] for r in rows if r.get('source')}))}, "
           "`--include`), the same settings run by an earlier freqlens."] if any(r.get("source") for r in rows)
          else []),
        "FRR, FAR (rows `<defense> + <detector>`): the inference-time detector applied after that training "
        "run, its false rejection rate on clean test inputs and false acceptance rate on triggered ones; "
        "CACC, ASR, false-trigger and net of such a row are after it filtered (or repaired) the test inputs, "
        "a rejected input counting as neither correct nor the target (OpenBackdoor's measure).",
        *([""] + [f"Not run: {why}" + "  " for why in failures] if failures else []),
        "",
        *runs_table(rows),
        "",
        "## Defenses x attacks",
        "",
        "Each cell: CACC / ASR / net, the mean ± sample standard deviation over the seeds where there are "
        "several (seeds: how many; per attack where they differ).",
        "",
        *paper_table(rows),
    ]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    return stem.with_suffix(".md")


def included_rows(paths: list[str]) -> list[dict]:
    """The rows of earlier tables (this script's CSV files), numbers parsed, "" as None, the seed an int;
    each row's ``source`` names its file (the Markdown table marks such rows)."""
    rows = []
    for path in paths:
        with open(path, newline="") as file:
            for raw in csv.DictReader(file):
                row = {key: _parsed(raw.get(key, "")) for key in COLUMNS}
                row["attack"], row["defense"] = raw["attack"], raw["defense"]
                row["seed"] = int(raw["seed"])
                row["source"] = Path(path).name
                rows.append(row)
    return rows


def _parsed(text: str):
    if text in ("", None):
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", choices=sorted(BUDGETS), default="cpu")
    parser.add_argument("--attacks", nargs="+", default=list(ATTACKS), choices=ATTACKS)
    parser.add_argument("--defenses", nargs="+", default=list(DEFENSES), type=defense_variant,
                        help="defense names, each optionally with settings: muscle@reference_size=512,ga.mu=0.2")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--parallel", type=int, default=1, help="runs at a time")
    parser.add_argument("--model", default="", help="model.name override (e.g. .device/minilm)")
    parser.add_argument("--data", default="", help="folder holding <attack>/ (default: the configs' data.path)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", type=override,
                        help="more config overrides")
    parser.add_argument("--out", default="",
                        help="folder of the run folders (default: runs/bench-sst2-defenses-<budget><suffix>)")
    parser.add_argument("--suffix", default="", help="appended to the result file names")
    parser.add_argument("--no-run", action="store_true", help="only tabulate the runs already finished")
    parser.add_argument("--detectors", nargs="+", default=[], choices=list(DETECTORS),
                        help="inference-time detectors to apply after each training run (rows <defense> + <detector>)")
    parser.add_argument("--include", nargs="+", default=[], metavar="CSV",
                        help="earlier tables (this script's .csv) whose rows fill in runs not found here")
    args = parser.parse_args()
    from freqlens.settings import apply_override

    names: dict[str, str] = {}
    for defense in args.defenses:  # every setting of a run together, as `freqlens run --set` will read them
        try:
            scratch: dict = {}
            for item in settings_of(defense, 0, args):
                apply_override(scratch, item)
        except ValueError as error:
            parser.error(f"argument --defenses / --set: {defense!r}: {error}")
        other = names.setdefault(run_name(defense), defense)
        if other != defense:
            parser.error(f"argument --defenses: {other!r} and {defense!r} are the same run "
                         f"({run_name(defense)}); give it once")
    args.out = args.out or str(ROOT / "runs" / f"bench-sst2-defenses-{args.budget}{args.suffix}")
    command = "python benchmarks/sst2_defenses.py " + " ".join(sys.argv[1:])
    jobs = [(a, d, s) for s in args.seeds for a in args.attacks for d in args.defenses]
    began = time.perf_counter()
    with ThreadPoolExecutor(max_workers=args.parallel) as pool:
        done = list(pool.map(lambda job: run_one(*job, args), jobs))
    rows = [r for found, _ in done for r in found]
    failures = [f"{attack} {defense} seed {seed}: {why}" for (attack, defense, seed), (_, why) in zip(jobs, done) if why]
    found = {(r["attack"], r["defense"], r["seed"]) for r in rows}
    earlier = [r for r in included_rows(args.include)
               if (r["attack"], r["defense"], r["seed"]) in set(jobs) - found]
    rows += earlier
    order = {d: i for i, d in enumerate(args.defenses)}
    detectors = {d: i for i, d in enumerate(dict.fromkeys(["", *args.detectors]
                                                         + [r["defense"].partition(" + ")[2] for r in rows]))}

    def rank(r: dict) -> tuple:  # defense, then its detectors' rows, then attack, seed
        base, _, detector = r["defense"].partition(" + ")
        return order.get(base, len(order)), detectors[detector], args.attacks.index(r["attack"]), r["seed"]

    rows.sort(key=rank)
    path = write_table(rows, args, command, time.perf_counter() - began, failures)
    print(path.read_text())
    if failures and not args.no_run:
        print(f"{len(failures)} run(s) failed; see their log.txt under {args.out}", file=sys.stderr)
    return 1 if failures and not args.no_run else 0  # --no-run lists earlier failures, it has none of its own


if __name__ == "__main__":
    sys.exit(main())
