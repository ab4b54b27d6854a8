"""The vLLM generation backend: its requests are built and checked without vLLM; the engine
itself is exercised only where vLLM and CUDA exist (skipped otherwise, with the reason)."""

from __future__ import annotations

import importlib.util
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from pvutils import backends, evaluation, models, plans, vectors
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


class RecordingLLM:
    """Records what `VLLMChat` sends to a `vllm.LLM` (prompts, request parameters, the
    weights handed to the engine's model, cache resets), in order. It generates nothing:
    its replies are placeholders that only show where each request's text lands."""

    def __init__(self):
        self.log: list[tuple[str, object]] = []

    def generate(self, prompts, params, use_tqdm=True):
        self.log.append(("generate", (list(prompts), list(params), use_tqdm)))
        return [SimpleNamespace(outputs=[SimpleNamespace(text=f" request {i} \n")])
                for i in range(len(prompts))]

    def apply_model(self, func):
        return [func(self)]  # vLLM calls func on the engine's model: here, this recorder

    def load_weights(self, weights):
        self.log.append(("load_weights", {n: (t.clone(), t.data_ptr()) for n, t in weights}))

    def reset_prefix_cache(self):
        self.log.append(("reset_prefix_cache", None))

    def calls(self, what: str) -> list:
        return [arg for name, arg in self.log if name == what]


def test_engine_requests_are_the_transformers_arguments(tiny_chat_model):
    _, tok = tiny_chat_model
    llm = RecordingLLM()
    out = backends.VLLMChat(llm, dict).chat(tok, CONVOS, max_new_tokens=12, temperature=0.6,
                                            top_p=0.9, seed=4)
    assert out == ["request 0", "request 1"]  # one stripped string per conversation, in order
    [(prompts, params, use_tqdm)] = llm.calls("generate")
    assert prompts == models.chat_prompts(tok, CONVOS)  # the text transformers is given
    assert params == [backends.sampling_kwargs(12, 0.6, 0.9, 4, i) for i in range(2)]
    assert use_tqdm is False
    with pytest.raises(ValueError, match="no classifier-free guidance"):
        backends.VLLMChat(llm, dict).chat(tok, CONVOS, negative_conversations=CONVOS,
                                          guidance_scale=3.0)


def test_merged_weights_reach_the_engine_in_place(tiny_chat_model):
    model, _ = tiny_chat_model
    llm = RecordingLLM()
    engine = backends.VLLMChat(llm, dict)
    gen = torch.Generator().manual_seed(0)
    phi = {n: 0.01 * torch.randn(p.shape, generator=gen) for n, p in model.named_parameters()}
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    with applied(model, [phi], [0.5]):
        assert engine.load_weights(model) is engine
        live = {n: p.data_ptr() for n, p in model.named_parameters()}
    assert [name for name, _ in llm.log] == ["load_weights", "reset_prefix_cache"]
    [sent] = llm.calls("load_weights")
    assert set(sent) == set(base)
    for n, (t, ptr) in sent.items():
        assert ptr == live[n]  # the merged parameter itself: no copy, no file
        torch.testing.assert_close(t, base[n] + 0.5 * phi[n], rtol=0, atol=1e-6)


def test_vllm_without_apply_model_is_a_clear_error(tiny_chat_model):
    model, _ = tiny_chat_model
    with pytest.raises(RuntimeError, match="no LLM.apply_model"):
        backends.VLLMChat(SimpleNamespace(), dict).load_weights(model)


def test_generator_is_the_model_or_one_engine_fed_each_call(tiny_chat_model):
    model, _ = tiny_chat_model
    assert backends.generator(get_profile("cpu"), model) is model
    started = []

    def start(name, dtype, seed):
        started.append((name, dtype, seed))
        return backends.VLLMChat(RecordingLLM(), dict)

    P = get_profile("cpu", generation_backend="vllm", model="tiny-for-generator-test")
    try:
        first = backends.generator(P, model, start)
        assert backends.generator(P, model, start) is first  # one engine per process
        assert started == [("tiny-for-generator-test", "float32", 0)]
        assert len(first.llm.calls("load_weights")) == 2  # the weights, at every call
        other = backends.generator(P.replace(model="another-base"), model, start)
        assert other is not first and len(started) == 2
    finally:
        backends.use_engine(P, None)
    bad = SimpleNamespace(generation_backend="tgi")
    with pytest.raises(ValueError, match="unknown generation_backend 'tgi'"):
        backends.generator(bad, model)
    with pytest.raises(ValueError, match="generation_backend='tgi' has unknown value"):
        get_profile("cpu", generation_backend="tgi")


def test_self_descriptions_ask_the_prompt_with_the_interview_sampling(tiny_chat_model):
    from pvutils.linguistics import SELF_DESCRIPTION_PROMPT

    model, tok = tiny_chat_model
    P = get_profile("smoke", generation_backend="vllm", model="tiny-for-self-description")
    llm = RecordingLLM()
    backends.use_engine(P, backends.VLLMChat(llm, dict))
    try:
        texts = backends.self_descriptions(model, tok, P, n=3)
    finally:
        backends.use_engine(P, None)
    assert texts == ["request 0", "request 1", "request 2"]
    [(prompts, params, _)] = llm.calls("generate")
    assert prompts == models.chat_prompts(tok, [[{"role": "user",
                                                  "content": SELF_DESCRIPTION_PROMPT}]] * 3)
    assert params == [backends.sampling_kwargs(P.eval_max_new_tokens, P.eval_temperature, 1.0,
                                               P.seed, i) for i in range(3)]
    local = backends.self_descriptions(model, tok, P.replace(generation_backend="transformers"),
                                       n=2)
    assert len(local) == 2 and all(isinstance(t, str) for t in local)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error of a machine without CUDA")
def test_vllm_without_cuda_is_a_clear_error():
    with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
        backends.VLLMChat.start("smollm2-135m-instruct")


@pytest.fixture
def saved_tiny(tiny_chat_model, tmp_path):
    model, tok = tiny_chat_model
    model.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    return str(tmp_path / "model")


def test_interview_sweep_on_vllm_sends_each_points_merged_weights(tiny_chat_model, saved_tiny,
                                                                   isolated_home):
    """The interview sweep with generation_backend="vllm": per point, the point's merged
    weights go to the engine before its interview's requests (the transformers sampling
    settings), and the table has the transformers backend's rows and columns."""
    model, tok = tiny_chat_model
    gen = torch.Generator().manual_seed(0)
    phi = {n: 0.05 * torch.randn(p.shape, generator=gen) for n, p in model.named_parameters()}
    vecs = {"extraversion_high": str(vectors.save_vector(
        phi, isolated_home / "xh.safetensors", {"condition": "extraversion_high"}))}
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    P = get_profile("smoke", model=saved_tiny, interview_alphas=(1.5,))
    on_vllm = P.replace(generation_backend="vllm")
    llm = RecordingLLM()
    backends.use_engine(on_vllm, backends.VLLMChat(llm, dict))
    try:
        table = plans.interview_sweep(model, tok, vecs, on_vllm, ["persona"])
    finally:
        backends.use_engine(on_vllm, None)
    local = plans.interview_sweep(model, tok, vecs, P, ["persona"])
    label = ["condition", "alpha", "trait", "level", "judge"]
    assert list(table.columns) == list(local.columns)
    pd.testing.assert_frame_equal(table[label], local[label])
    # base point (alpha 0), then extraversion_high at 1.5: weights, reset, requests, each
    assert [name for name, _ in llm.log] == ["load_weights", "reset_prefix_cache",
                                             "generate"] * 2
    for sent, alpha in zip(llm.calls("load_weights"), (0.0, 1.5)):
        for n, (t, _) in sent.items():
            torch.testing.assert_close(t, base[n] + alpha * phi[n], rtol=1e-6, atol=1e-6)
    script = evaluation.interview_script(["extraversion"])
    convos = [[{"role": "system", "content": script[0]}, {"role": "user", "content": it.question}]
              for it in script[1]]
    for prompts, params, _ in llm.calls("generate"):
        assert prompts == models.chat_prompts(tok, convos)
        assert params == [backends.sampling_kwargs(P.eval_max_new_tokens, P.eval_temperature,
                                                   1.0, P.seed, i) for i in range(len(convos))]


def tiny_vllm_model(make_tiny_llama, tok, root):
    """A tiny random Llama vLLM's attention kernels take (head size 64), saved with `tok`."""
    model = make_tiny_llama(vocab_size=len(tok), hidden_size=128, intermediate_size=256,
                            num_attention_heads=2, num_key_value_heads=1)
    model.save_pretrained(root)
    tok.save_pretrained(root)
    return model


@pytest.mark.skipif(not (HAS_VLLM and torch.cuda.is_available()),
                    reason="needs vLLM and a CUDA GPU (vLLM is not installable on CPU)")
def test_vllm_greedy_replies_equal_transformers(tiny_chat_model, tiny_llama_factory, tmp_path):
    _, tok = tiny_chat_model
    model = tiny_vllm_model(tiny_llama_factory, tok, tmp_path).to("cuda")
    engine = backends.VLLMChat.start(str(tmp_path), dtype="float32", gpu_memory_utilization=0.2,
                                     max_model_len=256)
    want = models.chat(model, tok, CONVOS, max_new_tokens=8, progress=False)
    assert models.chat(engine, tok, CONVOS, max_new_tokens=8) == want
    with applied(model, [{n: 0.01 * torch.ones_like(p) for n, p in model.named_parameters()}],
                 [1.0]):
        merged = models.chat(model, tok, CONVOS, max_new_tokens=8, progress=False)
        assert models.chat(engine.load_weights(model), tok, CONVOS, max_new_tokens=8) == merged
    assert models.chat(engine.load_weights(model), tok, CONVOS, max_new_tokens=8) == want
