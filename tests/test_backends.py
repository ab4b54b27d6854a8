"""The vLLM generation backend: its requests are built and checked without vLLM; the engine
itself is exercised only where vLLM and CUDA exist (skipped otherwise, with the reason)."""

from __future__ import annotations

import importlib.util
from types import SimpleNamespace

import pytest
import torch

from pvutils import backends, evaluation, models
from pvutils.merging import applied
from pvutils.profiles import get_profile

HAS_VLLM = importlib.util.find_spec("vllm") is not None
CONVOS = [[{"role": "system", "content": "You are a real person."},
           {"role": "user", "content": "Are you talkative?"}],
          [{"role": "user", "content": "Tell me about yourself."}]]


def test_sampling_fields_mean_what_the_transformers_arguments_mean():
    p = get_profile("paper")
    sampled = backends.sampling_kwargs(p.eval_max_new_tokens, p.eval_temperature, 0.9, p.seed, 0)
    assert sampled == {"max_tokens": 256, "temperature": 0.6, "top_p": 0.9, "seed": 0,
                       "skip_special_tokens": True}
    greedy = backends.sampling_kwargs(40, 0.0, 0.9, seed=3, index=0)
    assert (greedy["temperature"], greedy["top_p"]) == (0.0, 1.0)  # greedy: no nucleus


def test_each_request_has_its_own_reproducible_seed():
    seeds = [backends.sampling_kwargs(8, 0.6, 1.0, seed=7, index=i)["seed"] for i in range(220)]
    assert len(set(seeds)) == 220  # 5 repeats x 44 questions: no two draws share a seed
    assert seeds == [backends.sampling_kwargs(8, 0.6, 1.0, seed=7, index=i)["seed"]
                     for i in range(220)]
    assert backends.sampling_kwargs(8, 0.6, 1.0, seed=8, index=0)["seed"] not in seeds


@pytest.mark.skipif(not HAS_VLLM, reason="vLLM is not installed (it needs CUDA); the fields "
                                         "are checked against its SamplingParams where it is")
def test_sampling_fields_are_vllm_sampling_params():
    from vllm import SamplingParams

    kw = backends.sampling_kwargs(32, 0.6, 0.9, seed=1, index=2)
    params = SamplingParams(**kw)
    assert all(getattr(params, k) == v for k, v in kw.items())


def test_prompts_are_the_chat_templates_generation_prompts(tiny_qwen2_chat_model):
    _, tok = tiny_qwen2_chat_model
    texts = models.chat_prompts(tok, CONVOS)
    for text, convo in zip(texts, CONVOS):
        want = tok.apply_chat_template(convo, tokenize=True, add_generation_prompt=True,
                                       return_dict=False)
        assert tok(text, add_special_tokens=False)["input_ids"] == list(want)
        assert text.endswith("<|im_start|>assistant\n")


def test_replies_are_the_first_completion_stripped():
    outs = [SimpleNamespace(outputs=[SimpleNamespace(text=" Yes, a lot. \n")]),
            SimpleNamespace(outputs=[SimpleNamespace(text="I am Ann.")])]
    assert backends.replies(outs) == ["Yes, a lot.", "I am Ann."]


def test_weights_sent_to_the_engine_are_the_merged_ones(tiny_qwen2_chat_model, tmp_path):
    model, _ = tiny_qwen2_chat_model
    model.save_pretrained(tmp_path)
    from safetensors import safe_open

    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        checkpoint_names = set(f.keys())
    phi = {n: torch.ones_like(p) for n, p in model.named_parameters()}
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    with applied(model, [phi], [0.5]):
        sent = dict(backends.named_weights(model))
        assert set(sent) == checkpoint_names  # vLLM's load_weights reads checkpoint names
        for n, t in sent.items():
            torch.testing.assert_close(t, base[n] + 0.5, rtol=0, atol=1e-6)


class RecordingEngine:
    """A stand-in engine object: records the arguments `models.chat` hands to an engine."""

    def __init__(self):
        self.calls = []

    def chat(self, tokenizer, conversations, **sampling):
        self.calls.append(sampling)
        return [f"reply {i}" for i in range(len(conversations))]


def test_models_chat_hands_engines_the_same_arguments(tiny_chat_model):
    _, tok = tiny_chat_model
    engine = RecordingEngine()
    out = models.chat(engine, tok, CONVOS, max_new_tokens=12, temperature=0.6, top_p=0.9, seed=4)
    assert out == ["reply 0", "reply 1"]
    assert engine.calls == [{"max_new_tokens": 12, "temperature": 0.6, "top_p": 0.9, "seed": 4,
                             "negative_conversations": None, "guidance_scale": 1.0}]
    table = evaluation.interview(engine, tok, n_samples=1, max_new_tokens=8, progress=False,
                                 dimensions=["extraversion"])
    assert list(table["answer"]) == [f"reply {i}" for i in range(8)]  # in question order


def test_backend_choice_is_checked_and_transformers_is_the_model_itself(tiny_chat_model):
    model, _ = tiny_chat_model
    assert backends.chat_engine(get_profile("cpu"), model) is model
    with pytest.raises(ValueError, match="generation_backend='tgi' has unknown value"):
        backends.chat_engine(get_profile("cpu", generation_backend="tgi"), model)


@pytest.mark.skipif(not (HAS_VLLM and torch.cuda.is_available()),
                    reason="needs vLLM and a CUDA GPU")
def test_vllm_greedy_replies_equal_transformers(tiny_chat_model, tmp_path):
    model, tok = tiny_chat_model
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    engine = backends.VLLMChat(str(tmp_path), dtype="float32", gpu_memory_utilization=0.2)
    want = models.chat(model.to("cuda"), tok, CONVOS, max_new_tokens=8, progress=False)
    assert models.chat(engine, tok, CONVOS, max_new_tokens=8) == want
    with applied(model, [{n: 0.01 * torch.ones_like(p) for n, p in model.named_parameters()}],
                 [1.0]):
        merged = models.chat(model, tok, CONVOS, max_new_tokens=8, progress=False)
        assert models.chat(engine.load_weights(model), tok, CONVOS, max_new_tokens=8) == merged
