"""Generation backends: transformers (the default) or vLLM, same sampling, same replies.

`models.chat` is the one entry point. Given a transformers model it generates itself; given
a `VLLMChat` it hands over the same arguments, and the engine returns the same thing: one
stripped reply string per conversation, in order. So the interview, the "tell me about
yourself" texts and every sweep pick a backend by which object they pass, chosen once by
`profile.generation_backend` (`chat_engine`).

Merged weights reach vLLM without writing a model: the sweep keeps merging in place into
the transformers model (`merging.applied`), and `VLLMChat.load_weights(model)` copies its
current parameters into the running engine, the way TRL's GRPO trainer syncs vLLM in
"colocate" mode (`llm_engine.model_executor.driver_worker.model_runner.model.load_weights`,
with vLLM's in-process `external_launcher` executor). One device-to-device copy per sweep
point (16 GB for an 8B model in bf16) instead of writing 16 GB and restarting vLLM.

vLLM needs CUDA; nothing here imports it until a `VLLMChat` is built.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

import torch

from .models import chat_prompts, load_model, resolve_model_dir

BACKENDS = ("transformers", "vllm")


def sampling_kwargs(max_new_tokens: int, temperature: float, top_p: float, seed: int,
                    index: int) -> dict:
    """vLLM `SamplingParams` fields that mean what `models.chat`'s arguments mean.

    Greedy when temperature is 0 (vLLM's own convention; top-p then off); otherwise
    temperature and nucleus sampling with no top-k, like transformers with `top_k=None`.
    Each request gets its own seed: the interview asks the same question `n_samples` times
    in one call, and one shared seed would make vLLM return the same answer each time.
    """
    greedy = temperature <= 0
    return {"max_tokens": max_new_tokens, "temperature": 0.0 if greedy else float(temperature),
            "top_p": 1.0 if greedy else float(top_p), "seed": seed * 1_000_003 + index,
            "skip_special_tokens": True}


def replies(outputs) -> list[str]:
    """vLLM `RequestOutput`s -> the first completion's text of each, stripped (as transformers)."""
    return [out.outputs[0].text.strip() for out in outputs]


def named_weights(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """The model's current parameters under their checkpoint names (what vLLM's
    `load_weights` reads); tied weights once."""
    for name, param in model.named_parameters():
        yield name, param.detach()


class VLLMChat:
    """A vLLM engine behind `models.chat`'s interface (sampling as `sampling_kwargs`)."""

    def __init__(self, model: str, dtype: str = "bfloat16", seed: int = 0,
                 gpu_memory_utilization: float = 0.45, max_model_len: int = 4096, **llm_kwargs):
        from vllm import LLM  # optional: CUDA machines only

        for var, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1",
                           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29533"}.items():
            os.environ.setdefault(var, value)  # external_launcher: one in-process worker
        self.llm = LLM(model=resolve_model_dir(model), dtype=dtype, seed=seed,
                       gpu_memory_utilization=gpu_memory_utilization,
                       max_model_len=max_model_len,
                       distributed_executor_backend="external_launcher", **llm_kwargs)

    def chat(self, tokenizer, conversations: Sequence[Sequence[dict]], max_new_tokens: int = 64,
             temperature: float = 0.0, top_p: float = 1.0, seed: int = 0,
             negative_conversations=None, guidance_scale: float = 1.0) -> list[str]:
        from vllm import SamplingParams

        if negative_conversations is not None and guidance_scale != 1.0:
            raise ValueError("vLLM has no classifier-free guidance: generate guided trait data "
                             "with the transformers backend")
        params = [SamplingParams(**sampling_kwargs(max_new_tokens, temperature, top_p, seed, i))
                  for i in range(len(conversations))]
        outputs = self.llm.generate(chat_prompts(tokenizer, conversations), params,
                                    use_tqdm=False)
        return replies(outputs)

    def load_weights(self, model: torch.nn.Module) -> VLLMChat:
        """Copy `model`'s current (e.g. merged in place) weights into the engine."""
        engine_model = self.llm.llm_engine.model_executor.driver_worker.model_runner.model
        engine_model.load_weights(named_weights(model))
        self.llm.reset_prefix_cache()  # cached KV blocks were computed with the old weights
        return self


def chat_engine(profile, model: torch.nn.Module | None = None):
    """What to pass to `models.chat` under `profile.generation_backend`: the transformers
    model itself, or a vLLM engine holding the same weights (the profile's model, then
    `model`'s current weights if given)."""
    if profile.generation_backend not in BACKENDS:
        raise ValueError(f"unknown generation_backend {profile.generation_backend!r}; "
                         f"choose one of {list(BACKENDS)}")
    if profile.generation_backend == "transformers":
        return model if model is not None else load_model(profile.model, profile.dtype,
                                                          profile.device)
    engine = VLLMChat(profile.model, dtype=profile.dtype, seed=profile.seed)
    return engine.load_weights(model) if model is not None else engine
