"""The paper's two base-model architectures, Llama-3.1 and Qwen2.5, on tiny random models.

Each test runs once per architecture: a tiny random `LlamaForCausalLM` and a tiny random
`Qwen2ForCausalLM` (biases on q/k/v, which Llama lacks), both paired with the embedded
model's ChatML tokenizer (Qwen2.5-Instruct's turn format). What must hold on both before a
GPU-day is spent: the chat template, the loss mask, extraction, merging, the in-place apply
and the likelihood engine.
"""

from __future__ import annotations

import copy

import datasets
import pytest
import torch

from pvutils import evaluation, models, training, vectors
from pvutils.merging import applied, merge_deltas
from pvutils.profiles import get_profile

ARCHS = {"llama": "tiny_chat_model", "qwen2": "tiny_qwen2_chat_model"}


@pytest.fixture(params=list(ARCHS))
def arch_model(request):
    model, tok = request.getfixturevalue(ARCHS[request.param])
    return request.param, model, tok


def perturbed(model, seed: int, scale: float = 0.01):
    """A 'fine-tuned' copy: every parameter moved by seeded noise."""
    out = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in out.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))
    return out


def test_architecture_is_the_papers(arch_model):
    arch, model, _ = arch_model
    assert type(model).__name__ == {"llama": "LlamaForCausalLM",
                                    "qwen2": "Qwen2ForCausalLM"}[arch]
    names = dict(model.named_parameters())
    has_qkv_bias = "model.layers.0.self_attn.q_proj.bias" in names
    assert has_qkv_bias == (arch == "qwen2")


def test_chat_template_renders_chatml_turns_and_generation_runs(arch_model):
    _, model, tok = arch_model
    convo = [{"role": "system", "content": "You are a person."},
             {"role": "user", "content": "Are you talkative?"}]
    text = tok.apply_chat_template(convo, tokenize=False, add_generation_prompt=True)
    assert text.index("<|im_start|>system\nYou are a person.<|im_end|>") \
        < text.index("<|im_start|>user\nAre you talkative?<|im_end|>")
    assert text.endswith("<|im_start|>assistant\n")
    replies = models.chat(model, tok, [convo, convo[1:]], max_new_tokens=4, temperature=0.6,
                          progress=False)
    assert len(replies) == 2 and all(isinstance(r, str) for r in replies)


def test_loss_mask_is_on_the_assistant_turn_only(arch_model, tmp_path):
    _, model, tok = arch_model
    answer = "Lovely, thanks for asking!"
    rows = datasets.Dataset.from_list([{"messages": [
        {"role": "user", "content": "How was your day?"},
        {"role": "assistant", "content": answer}]}])
    trainer = training.build_trainer(get_profile("smoke"), copy.deepcopy(model), tok, rows,
                                     tmp_path)
    batch = trainer.data_collator([trainer.train_dataset[0]])
    ids, labels = batch["input_ids"][0], batch["labels"][0]
    prompt = tok.apply_chat_template(rows[0]["messages"][:1], tokenize=False,
                                     add_generation_prompt=True)
    n_prompt = len(tok(prompt, add_special_tokens=False)["input_ids"])
    assert (labels[:n_prompt] == -100).all() and (labels[n_prompt:] != -100).all()
    assert tok.decode(ids[n_prompt:]).startswith(answer)


def test_extracted_vector_is_finetuned_minus_base(arch_model, tmp_path):
    _, model, _ = arch_model
    tuned = perturbed(model, seed=1)
    model.save_pretrained(tmp_path / "base")
    tuned.save_pretrained(tmp_path / "tuned")
    out = vectors.extract_vector(tmp_path / "base", tmp_path / "tuned", tmp_path / "v.safetensors")
    phi = vectors.load_vector(out)
    base, ft = dict(model.named_parameters()), dict(tuned.named_parameters())
    assert set(phi) == set(base)
    for name, delta in phi.items():
        torch.testing.assert_close(delta, ft[name].detach() - base[name].detach(),
                                   rtol=0, atol=1e-7)


@pytest.mark.parametrize("method,params", [("task_arithmetic", {}),
                                           ("ties", {"density": 0.5})])
def test_in_place_merge_sets_the_merge_and_restores_bitwise(arch_model, method, params):
    _, model, _ = arch_model
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    tuned = [dict(perturbed(model, seed=s).named_parameters()) for s in (2, 3)]
    phis = [{n: t[n].detach() - base[n] for n in base} for t in tuned]
    if method == "task_arithmetic":  # the reference formula: θ + Σ α φ
        want = {n: base[n] + 0.5 * phis[0][n] - 1.0 * phis[1][n] for n in base}
    else:  # θ + the functional merge of each tensor's deltas (per-tensor trim)
        want = {n: base[n] + merge_deltas([phis[0][n], phis[1][n]], [0.5, -1.0], method=method,
                                          **params) for n in base}
    with applied(model, phis, [0.5, -1.0], method=method, **params):
        merged = {n: p.detach().clone() for n, p in model.named_parameters()}
    for n, p in model.named_parameters():
        assert torch.equal(p.detach(), base[n]), n  # bitwise restore
    for n in base:
        torch.testing.assert_close(merged[n], want[n], rtol=0, atol=1e-6)


def plain_answer_logprob(model, tok, system, question, answer) -> float:
    """Mean log p of the assistant turn's tokens, from one full forward pass."""
    convo = ([{"role": "system", "content": system}] if system else []) + \
        [{"role": "user", "content": question}]
    prompt = tok.apply_chat_template(convo, tokenize=False, add_generation_prompt=True)
    full = tok.apply_chat_template(convo + [{"role": "assistant", "content": answer}],
                                   tokenize=False).rstrip()
    ids = tok(full, return_tensors="pt", add_special_tokens=False).input_ids
    start = len(tok(prompt, add_special_tokens=False).input_ids)
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0].float(), -1)
    return logp[start - 1 : -1].gather(1, ids[0, start:, None]).mean().item()


@pytest.mark.parametrize("share_prefix", [True, False])
def test_likelihood_engine_matches_the_plain_definition(arch_model, share_prefix):
    _, model, tok = arch_model
    pairs = [("Are you talkative?", "Yes, I love to talk."), ("Are you talkative?", "No."),
             ("Do you worry a lot?", "Hardly ever; I stay calm.")]
    got = evaluation.answer_logprobs(model, tok, "You are a person.", pairs, batch_size=2,
                                     share_prefix=share_prefix)
    want = [plain_answer_logprob(model, tok, "You are a person.", q, a) for q, a in pairs]
    assert got.tolist() == pytest.approx(want, abs=1e-4)
