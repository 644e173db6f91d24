"""`model.name` that cannot be loaded: say what is missing, at once.

A local folder that does not exist used to give a hub "repo id" error, and an
unknown hub name with the network off retried for 52 s. Now a name that looks
like a path must be a folder, and a hub id that is not in the local cache
fails before any download is tried when the hub is switched off or out of
reach. The tests make every network and loading call fail loudly, so a test
passes only if none was attempted.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import transformers

import freqlens.models.loading as experiment
from freqlens.models.loading import ModelConfig, load_model


def _config(name: str) -> ModelConfig:
    return ModelConfig(name=name, device="cpu")


@pytest.fixture
def nothing_loads(monkeypatch):
    """Every from_pretrained and every hub request raises: what passes never tried them."""
    import huggingface_hub.utils

    def fail(*args, **kwargs):
        raise AssertionError("a model load or network request was attempted")

    for cls in (transformers.AutoTokenizer, transformers.AutoConfig,
                transformers.AutoModelForSequenceClassification):
        monkeypatch.setattr(cls, "from_pretrained", fail)
    monkeypatch.setattr(huggingface_hub.utils, "get_session", fail)
    return fail


@pytest.mark.parametrize("name", ["./no/such/model", "../no-such-model", "~/no-such-freqlens-model",
                                  "models/for/no/one"])
def test_a_missing_local_folder_names_model_name_and_the_path(name, tmp_path, monkeypatch, nothing_loads):
    monkeypatch.chdir(tmp_path)
    resolved = Path(os.path.abspath(Path(name).expanduser()))
    with pytest.raises(ValueError) as caught:
        load_model(_config(name))
    message = str(caught.value)
    assert f"`model.name` {name!r}" in message and str(resolved) in message and "does not exist" in message


def test_an_absolute_missing_folder_and_a_file_are_named(tmp_path, nothing_loads):
    with pytest.raises(ValueError, match=rf"`model.name` .*{tmp_path / 'gone'} does not exist"):
        load_model(_config(str(tmp_path / "gone")))
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(ValueError, match=r"is a file, not a folder"):
        load_model(_config(str(tmp_path / "weights.bin")))


@pytest.mark.parametrize("variable", ["HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"])
def test_an_uncached_hub_id_offline_fails_at_once(variable, monkeypatch, nothing_loads):
    monkeypatch.setenv(variable, "1")
    monkeypatch.setattr(experiment, "_hub_reachable", nothing_loads)  # offline: not even probed
    with pytest.raises(ValueError) as caught:
        load_model(_config("nobody-freqlens/no-such-model"))
    message = str(caught.value)
    assert "`model.name` 'nobody-freqlens/no-such-model'" in message
    assert "not in the cache" in message and "network is off" in message


def test_an_uncached_hub_id_with_an_unreachable_hub_fails_at_once(monkeypatch, nothing_loads):
    monkeypatch.setattr(experiment, "_hub_offline", lambda: False)
    probes = []
    monkeypatch.setattr(experiment, "_hub_reachable", lambda: probes.append(1) or False)
    with pytest.raises(ValueError, match=r"`model.name` 'nobody-freqlens/no-such-model'.*not in the cache.*"
                                         r"cannot be reached"):
        load_model(_config("nobody-freqlens/no-such-model"))
    assert probes == [1]  # one quick probe, no retries


def test_a_cached_hub_id_with_an_unreachable_hub_loads_from_the_cache(monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(experiment, "_hub_offline", lambda: False)
    monkeypatch.setattr(experiment, "_hub_reachable", lambda: False)
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda repo, name: "/cache/config.json")
    assert experiment._model_source("org/model") == ("org/model", {"local_files_only": True})


def test_the_hub_probe_is_one_short_request(monkeypatch):
    import huggingface_hub.utils

    calls = []

    class Session:
        def head(self, url, timeout):
            calls.append((url, timeout))
            raise ConnectionError("no route to host")

    monkeypatch.setattr(huggingface_hub.utils, "get_session", lambda: Session())
    assert experiment._hub_reachable() is False
    assert len(calls) == 1 and calls[0][1] <= 5


def test_hub_ids_and_paths_are_told_apart():
    for name in ("bert-base-uncased", "prajjwal1/bert-tiny", "sentence-transformers/all-MiniLM-L6-v2"):
        assert not experiment._looks_like_path(name)
    for name in ("./model", "../model", "/abs/model", "~/model", "runs/x/model", "."):
        assert experiment._looks_like_path(name)


def test_an_existing_relative_folder_loads(tmp_path, monkeypatch):
    """A folder named without ./ that exists is local (not sent to the hub)."""
    from tests.models import save_tiny_bert

    save_tiny_bert(tmp_path / "tiny", layers=1)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(experiment, "_hub_reachable", lambda: pytest.fail("the hub was probed for a folder"))
    _, model = load_model(_config("tiny"))
    assert model.config.hidden_size == 32
