"""One table of probe-set roles: recording, the analysis' joint view and the figures' colours read it."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.colors import to_hex

from freqlens import analyse, plots
from freqlens.data.splits import Split
from freqlens.recording import ROLES, ProbeSet
from freqlens.recording.plan import _optional_sets, _probe_roles, build_probe_sets
from freqlens.recording.probes import PROBE_ROLES, ProbeRole, joint_roles, role_colour
from tests.synthetic import make_trajectory

PARAPHRASE = ProbeRole("paraphrase", "dev_paraphrase", "#CC79A7", joint=False, optional=True,
                       description="the backdoor examples paraphrased, with the target label")


def tokenizer(texts, *, padding, truncation, max_length, return_tensors):
    """A stand-in tokenizer: one id per text, repeated to ``max_length`` (padding to one length)."""
    ids = torch.tensor([[1 + len(t) % 5] * max_length for t in texts])
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _split(prefix: str, n: int, label: int | None = None, poison: bool = False) -> Split:
    labels = np.full(n, label) if label is not None else np.arange(n) % 2
    return Split([f"{prefix} {i}" for i in range(n)], labels, poison=np.full(n, poison))


def _dataset(control: bool = True, **extra):
    return SimpleNamespace(dev_clean=_split("clean", 6), dev_poison=_split("cf poison", 5, 1, True),
                           dev_control=_split("poison", 5) if control else None, **extra)


def test_the_built_in_roles():
    assert ROLES == ("clean", "backdoor", "control") == tuple(PROBE_ROLES)
    assert {r.name: r.split for r in PROBE_ROLES.values()} == {
        "clean": "dev_clean", "backdoor": "dev_poison", "control": "dev_control"}
    assert joint_roles() == ("clean", "backdoor")
    assert [r.optional for r in PROBE_ROLES.values()] == [False, False, True]
    assert [role_colour(r) for r in ROLES] == ["#0072B2", "#D55E00", "#009E73"]  # Okabe-Ito
    assert role_colour("unknown") is None and role_colour(None) is None


@pytest.mark.parametrize(("control", "max_sets", "names"), [
    (True, None, ["clean", "backdoor", "control"]),
    (True, 2, ["clean", "backdoor"]),  # the budget drops the optional control set
    (False, None, ["clean", "backdoor"]),  # no control split: no control set
])
def test_probe_sets_are_taken_from_each_roles_split_in_table_order(control, max_sets, names):
    dataset = _dataset(control)
    sets = build_probe_sets(dataset, tokenizer, size=4, max_length=3, max_sets=max_sets)
    assert [s.name for s in sets] == [s.role for s in sets] == names
    for probe in sets:
        split = getattr(dataset, PROBE_ROLES[probe.name].split)
        assert probe.texts == split.texts[:4] and probe.labels.tolist() == split.labels[:4].tolist()
        assert probe.poison.tolist() == split.poison[:4].tolist() and probe.encodings["input_ids"].shape == (4, 3)
    assert _optional_sets(_probe_roles(dataset)) == (1 if control else 0)


def test_a_new_role_is_one_row_of_the_table(monkeypatch):
    monkeypatch.setitem(PROBE_ROLES, "paraphrase", PARAPHRASE)
    dataset = _dataset(dev_paraphrase=_split("paraphrased", 5, 1, True))
    sets = build_probe_sets(dataset, tokenizer, size=3, max_length=2)
    assert [s.role for s in sets] == ["clean", "backdoor", "control", "paraphrase"]
    assert sets[-1].texts == ["paraphrased 0", "paraphrased 1", "paraphrased 2"]
    assert _optional_sets(_probe_roles(dataset)) == 2  # control and paraphrase may be left out, last first
    assert _optional_sets(_probe_roles(_dataset())) == 1  # a dataset without the split records no such set
    assert ProbeSet("p", {"input_ids": torch.ones(2, 3)}, [0, 1], role="paraphrase").role == "paraphrase"

    trajectory = make_trajectory()  # its third set now has the new role: coloured by it, not in the joint view
    trajectory.meta["probe_sets"]["control"]["role"] = "paraphrase"
    analysis = analyse(trajectory, num_widths=3, bootstrap=0)
    assert analysis.roles["paraphrase"] == "control" and list(analysis.curves["joint"]) == ["clean", "backdoor"]
    fig = plots.plot_error_curves(analysis, view="separate")
    colours = {line.get_label(): to_hex(line.get_color()) for line in fig.axes[0].lines if line.get_label()[0] != "_"}
    assert colours["control low"] == "#cc79a7" and colours["clean low"] == "#0072b2"
    plt.close(fig)


def test_an_unknown_role_names_the_roles_of_the_table(monkeypatch):
    with pytest.raises(ValueError, match=r"probe set `role` to be one of \('clean', 'backdoor', 'control'\) or "
                                         r"None but got 'paraphrase'"):
        ProbeSet("p", {"input_ids": torch.ones(2, 3)}, [0, 1], role="paraphrase")


@pytest.mark.parametrize(("change", "match"), [
    ({"name": "two words"}, r"probe role `name` to be an identifier but got 'two words'"),
    ({"split": ""}, r"probe role `split` to be an identifier"),
    ({"colour": ""}, r"`colour` of probe role 'paraphrase' to be a non-empty string"),
    ({"joint": "yes"}, r"`joint` of probe role 'paraphrase' to be true or false but got 'yes'"),
])
def test_a_bad_role_row_names_the_field(change, match):
    with pytest.raises((ValueError, TypeError), match=match):
        dataclasses.replace(PARAPHRASE, **change)


def test_the_joint_view_is_the_tables_joint_roles(monkeypatch):
    default = analyse(make_trajectory(), num_widths=3, bootstrap=0)
    assert list(default.curves["joint"]) == ["clean", "backdoor"] and default.modes.n == 60
    monkeypatch.setitem(PROBE_ROLES, "control", dataclasses.replace(PROBE_ROLES["control"], joint=True))
    joined = analyse(make_trajectory(), num_widths=3, bootstrap=0)
    assert list(joined.curves["joint"]) == ["clean", "backdoor", "control"]
    assert set(joined.modes.errors) == {"clean", "backdoor", "control"} and joined.modes.n == 90
    assert next(iter(joined.static_spectra.values())).n == 90
    monkeypatch.setitem(PROBE_ROLES, "control", dataclasses.replace(PROBE_ROLES["control"], joint=False))
    monkeypatch.setitem(PROBE_ROLES, "backdoor", dataclasses.replace(PROBE_ROLES["backdoor"], joint=False))
    alone = analyse(make_trajectory(), num_widths=3, bootstrap=0)  # the joint roles are clean alone: no pair
    assert list(alone.curves) == ["separate"] and alone.modes is None


def _colours(fig) -> set[str]:
    """Every colour a figure's lines and titles are drawn in."""
    found = {to_hex(line.get_color()) for ax in fig.axes for line in ax.lines}
    return found | {to_hex(ax.title.get_color()) for ax in fig.axes if ax.get_title()}


@pytest.mark.parametrize("draw", [
    plots.plot_error_curves, plots.plot_convergence_spectrum, plots.plot_frequency_ratios,
    plots.plot_speed_spectrum, plots.plot_static_spectrum, plots.plot_mode_heatmap,
], ids=lambda f: f.__name__)
def test_every_figure_colours_a_role_from_the_table(monkeypatch, draw):
    analysis = analyse(make_trajectory(), num_widths=3, bootstrap=0)
    before = draw(analysis)
    assert "#0072b2" in _colours(before)  # the clean role's colour
    plt.close(before)
    monkeypatch.setitem(PROBE_ROLES, "clean", dataclasses.replace(PROBE_ROLES["clean"], colour="#123456"))
    after = draw(analysis)
    assert "#123456" in _colours(after) and "#0072b2" not in _colours(after)
    plt.close(after)
