"""A saved defended model reloads as the same model, whatever the torch seed (issue 12, item 1).

The base checkpoints here are saved *without* a classification head (the bare
BertModel / RobertaModel / GPT2Model / LlamaModel, as all-MiniLM-L6-v2 is
published), so ``AutoModelForSequenceClassification.from_pretrained`` draws a
random head from the torch seed. The defended model is prepared on a base
loaded under one seed, trained, saved, and loaded back on a base loaded under
another seed: the logits must be the same to 1e-6, for every defense and
every family. The existing save/load tests built both models under the same
seed, which hid the fault.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from freqlens.defenses import DEFENSES, DefenseConfig, fit_defense, load_defended, prepare_model, save_defended
from freqlens.defenses.adapters import SETTINGS_FILE, WEIGHTS_FILE
from freqlens.training import TrainConfig

from .helpers import FAMILIES, build, inputs, labels, logits

SEED_A, SEED_B = 11, 12345
N, LENGTH = 8, 8
# small settings so every defense takes a few steps on 8 rows
SETTINGS = {"prefix": {"tokens": 2},
            "abl": {"isolation_rate": 0.25, "isolation_epochs": 1, "unlearn_epochs": 1, "budget": "shared"},
            "reference_size": 4}


def bare_model(family: str, *, pooler: bool = True):
    """The family's backbone without any head, built from the tiny config under a fixed seed."""
    from transformers import BertModel, GPT2Model, LlamaModel, RobertaModel

    config = build(family).config
    kind = {"bert": BertModel, "roberta": RobertaModel, "gpt2": GPT2Model, "llama": LlamaModel}[family]
    extra = {} if family in ("gpt2", "llama") else {"add_pooling_layer": pooler}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return kind(config, **extra)


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    """family -> folder of a head-less checkpoint (built once for the module)."""
    root = tmp_path_factory.mktemp("bases")
    folders = {}
    for family in FAMILIES:
        bare_model(family).save_pretrained(root / family)
        folders[family] = root / family
    bare_model("bert", pooler=False).save_pretrained(root / "bert-no-pooler")
    folders["bert-no-pooler"] = root / "bert-no-pooler"
    from transformers import BertForSequenceClassification

    config = build("bert").config
    config.num_labels = 3  # a head, but for another number of classes
    BertForSequenceClassification(config).save_pretrained(root / "bert-3-labels")
    folders["bert-3-labels"] = root / "bert-3-labels"
    return folders


# how each base is loaded: the 3-class head is replaced by a random 2-class one
LOAD = {"bert-3-labels": {"num_labels": 2, "ignore_mismatched_sizes": True}}


def from_pretrained(folder, seed: int, **kwargs):
    """``AutoModelForSequenceClassification.from_pretrained`` under ``seed`` (its missing weights are random)."""
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging

    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()  # "newly initialized" is what these tests are about
    try:
        torch.manual_seed(seed)
        return AutoModelForSequenceClassification.from_pretrained(str(folder), **LOAD.get(folder.name, {}),
                                                                  **kwargs)
    finally:
        logging.set_verbosity(verbosity)


def trained(folder, family: str, name: str):
    """A base loaded under SEED_A, prepared for ``name`` and trained two steps with fit_defense."""
    config = DefenseConfig(name=name, **SETTINGS)
    prepared = prepare_model(from_pretrained(folder, SEED_A), config, max_length=LENGTH)
    enc, y = inputs(family, n=N, length=LENGTH, seed=5), labels(N).numpy()
    reference = (inputs(family, n=4, length=LENGTH, seed=6), labels(4, seed=1).numpy())
    epochs = 3 if name == "abl" else 1  # ABL: isolation, training and unlearning epochs
    fit_defense(prepared.model, enc, y, config, TrainConfig(epochs=epochs, batch_size=4, lr=1e-2, seed=0),
                reference=reference, progress=False)
    return prepared


def assert_same(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.shape == expected.shape
    difference = (actual - expected).abs().max().item()
    assert difference <= 1e-6, f"logits differ by {difference}"
    assert torch.equal(actual.argmax(-1), expected.argmax(-1))


@pytest.mark.parametrize("family", FAMILIES)
def test_a_head_less_base_gets_a_seed_dependent_head(bases, family):
    """The premise: two from_pretrained calls under different seeds give different models."""
    probe = inputs(family, n=6, length=LENGTH, seed=9)
    a = logits(from_pretrained(bases[family], SEED_A), probe)
    b = logits(from_pretrained(bases[family], SEED_B), probe)
    assert (a - b).abs().max() > 1e-3


@pytest.mark.parametrize("folder", [*FAMILIES, "bert-no-pooler", "bert-3-labels"])
def test_the_weights_missing_from_the_checkpoint_are_the_ones_transformers_reports(bases, folder):
    """The independent reference: ``from_pretrained(..., output_loading_info=True)``: missing and mismatched keys."""
    from freqlens.defenses.adapters import weights_not_in_checkpoint

    model, info = from_pretrained(bases[folder], SEED_A, output_loading_info=True)
    random = set(info["missing_keys"]) | {key for key, *_ in info["mismatched_keys"]}
    assert random  # a head at least
    assert weights_not_in_checkpoint(model) == random


def assert_reloads(base, family: str, name: str, folder) -> None:
    """Train ``name`` on ``base`` (loaded under SEED_A), save it, reload it on the base loaded
    under SEED_B: the logits must be the same."""
    prepared = trained(base, family, name)
    probe = inputs(family, n=6, length=LENGTH, seed=9)
    expected = logits(prepared.model, probe)
    save_defended(prepared.model, folder, prepared.layout)
    loaded = load_defended(from_pretrained(base, SEED_B), folder)
    assert_same(logits(loaded, probe), expected)


@pytest.mark.parametrize("name", ["lora", "muscle"])
def test_a_head_of_another_shape_in_the_checkpoint_is_saved(bases, name, tmp_path):
    assert_reloads(bases["bert-3-labels"], "bert", name, tmp_path)


@pytest.mark.parametrize("name", DEFENSES)
@pytest.mark.parametrize("family", FAMILIES)
def test_a_saved_defended_model_reloads_identically_under_another_seed(bases, family, name, tmp_path):
    assert_reloads(bases[family], family, name, tmp_path)


@pytest.mark.parametrize("name", ["lora", "mslr", "prefix"])
def test_a_random_pooler_inside_the_backbone_is_saved_too(bases, name, tmp_path):
    """A checkpoint without BERT's pooler: the random weights are inside ``bert``, not only in the head."""
    assert_reloads(bases["bert-no-pooler"], "bert", name, tmp_path)


@pytest.mark.parametrize("family", FAMILIES)
def test_only_what_the_checkpoint_lacks_is_saved_besides_the_adapter(bases, family, tmp_path):
    """The backbone's frozen weights come from the checkpoint again; the head does not, so it is saved."""
    from safetensors.torch import load_file

    prepared = trained(bases[family], family, "lora")
    save_defended(prepared.model, tmp_path, prepared.layout)
    saved = set(load_file(str(tmp_path / WEIGHTS_FILE)))
    head = {"bert": {"classifier.weight", "classifier.bias"},
            "roberta": {"classifier.dense.weight", "classifier.dense.bias", "classifier.out_proj.weight",
                        "classifier.out_proj.bias"},
            "gpt2": {"score.weight"}, "llama": {"score.weight"}}[family]
    assert saved == head
    settings = json.loads((tmp_path / SETTINGS_FILE).read_text())
    assert sorted(settings["weights"]) == sorted(head)


@pytest.mark.parametrize("name, family, key", [
    ("lora", "bert", "classifier.weight"),
    ("muscle-paper", "roberta", "classifier.out_proj.bias"),
    ("mslr", "gpt2", "score.1.weight"),
    ("prefix", "llama", "score.weight"),
])
def test_load_refuses_a_save_that_lacks_a_required_weight(bases, name, family, key, tmp_path):
    from safetensors.torch import load_file, save_file

    prepared = trained(bases[family], family, name)
    save_defended(prepared.model, tmp_path, prepared.layout)
    state = load_file(str(tmp_path / WEIGHTS_FILE))
    del state[key]
    save_file(state, str(tmp_path / WEIGHTS_FILE))
    with pytest.raises(ValueError, match=rf"(?s){WEIGHTS_FILE}.*{key.replace('.', '[.]')}"):
        load_defended(from_pretrained(bases[family], SEED_B), tmp_path)


def test_load_refuses_a_whole_saved_model_that_lacks_a_weight(bases, tmp_path):
    """Full fine-tuning is saved by save_pretrained; a weight gone from it would be drawn at random."""
    from safetensors.torch import load_file, save_file

    prepared = trained(bases["roberta"], "roberta", "vanilla")
    save_defended(prepared.model, tmp_path, prepared.layout)
    state = load_file(str(tmp_path / "model.safetensors"))
    del state["classifier.out_proj.weight"]
    save_file(state, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"classifier[.]out_proj[.]weight"):
        load_defended(from_pretrained(bases["roberta"], SEED_B), tmp_path)


def test_load_refuses_a_save_without_the_random_head_even_without_a_list(bases, tmp_path):
    """A save whose settings list no weights (as saves before this check) is checked against the checkpoint."""
    from safetensors.torch import load_file, save_file

    prepared = trained(bases["bert"], "bert", "lora")
    save_defended(prepared.model, tmp_path, prepared.layout)
    settings = json.loads((tmp_path / SETTINGS_FILE).read_text())
    del settings["weights"]
    (tmp_path / SETTINGS_FILE).write_text(json.dumps(settings))
    state = load_file(str(tmp_path / WEIGHTS_FILE))
    save_file({k: v for k, v in state.items() if not k.startswith("classifier.")}, str(tmp_path / WEIGHTS_FILE))
    with pytest.raises(ValueError, match=r"classifier[.]bias.*classifier[.]weight"):
        load_defended(from_pretrained(bases["bert"], SEED_B), tmp_path)


def test_load_refuses_saved_weights_that_do_not_fit_the_base(bases, tmp_path):
    prepared = trained(bases["bert"], "bert", "lora")
    save_defended(prepared.model, tmp_path, prepared.layout)
    with pytest.raises(ValueError, match=r"fit RobertaForSequenceClassification.*classifier[.]weight \(saved \(2, 32\), "
                                         r"model has none\)"):
        load_defended(from_pretrained(bases["roberta"], SEED_B), tmp_path)


LOAD_IN_A_FRESH_PROCESS = textwrap.dedent("""
    import sys
    import torch
    from transformers import AutoModelForSequenceClassification
    from freqlens.defenses import load_defended

    base, saved, probe, out = sys.argv[1:5]
    torch.manual_seed(int(sys.argv[5]))
    model = load_defended(AutoModelForSequenceClassification.from_pretrained(base), saved)
    model.eval()
    with torch.no_grad():
        torch.save(model(**torch.load(probe)).logits, out)
""")


@pytest.mark.parametrize("family, name", [("bert", "lora")])  # a fresh interpreter costs ~10 s on 2 cores
def test_a_fresh_process_with_another_seed_loads_the_same_model(bases, family, name, tmp_path):
    prepared = trained(bases[family], family, name)
    probe = inputs(family, n=6, length=LENGTH, seed=9)
    expected = logits(prepared.model, probe)
    save_defended(prepared.model, tmp_path / "saved", prepared.layout)
    torch.save(probe, tmp_path / "probe.pt")
    script = tmp_path / "load.py"
    script.write_text(LOAD_IN_A_FRESH_PROCESS)
    done = subprocess.run([sys.executable, str(script), str(bases[family]), str(tmp_path / "saved"),
                           str(tmp_path / "probe.pt"), str(tmp_path / "logits.pt"), str(SEED_B)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    assert_same(torch.load(tmp_path / "logits.pt"), expected)
    assert np.isfinite(expected.numpy()).all()
