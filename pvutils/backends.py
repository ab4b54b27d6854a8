"""Generation backends: transformers (the default) or vLLM, same sampling, same replies.

`models.chat` is the one entry point. Given a transformers model it generates itself; given
a `VLLMChat` it hands over the same arguments, and the engine returns the same thing: one
stripped reply string per conversation, in order. The interview and the "tell me about
yourself" texts choose by `profile.generation_backend` through `generator(profile, model)`:
the model itself, or this process's vLLM engine holding the model's current weights.

Merged weights reach vLLM without writing a model: the sweep keeps merging in place into
the transformers model (`merging.applied`), and `VLLMChat.load_weights(model)` hands its
current parameters to the running engine through vLLM's public `LLM.apply_model` (the
function runs on the engine's own model and calls its `load_weights`, as TRL's GRPO trainer
does in "colocate" mode). The engine uses vLLM's in-process `external_launcher` executor
(vLLM then turns its V1 multiprocessing off), so the tensors are never serialised: one
device-to-device copy per sweep point (16 GB for an 8B model in bf16) instead of writing
16 GB and restarting vLLM. Then `reset_prefix_cache`: cached prompt blocks were computed
with the old weights.

vLLM needs CUDA; nothing here imports it until `VLLMChat.start`.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from .models import chat, chat_prompts, resolve_model_dir

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


def _free_port() -> int:
    with socket.socket() as s:  # each engine its own rendezvous port (Ray runs several)
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class VLLMChat:
    """A vLLM engine behind `models.chat`'s interface (sampling as `sampling_kwargs`).

    `llm` is a `vllm.LLM` (built by `start`); `make_params` turns `sampling_kwargs` into
    its request parameters (`vllm.SamplingParams`)."""

    def __init__(self, llm: Any, make_params: Callable[..., Any]):
        self.llm, self.make_params = llm, make_params

    @classmethod
    def start(cls, model: str, dtype: str = "bfloat16", seed: int = 0,
              gpu_memory_utilization: float = 0.45, max_model_len: int = 4096,
              **llm_kwargs) -> VLLMChat:
        """A vLLM engine on `model` (a name or directory), in this process, on one GPU."""
        if not torch.cuda.is_available():
            raise RuntimeError("generation_backend='vllm' needs a CUDA GPU (none is visible); "
                               "use generation_backend='transformers'")
        for var, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1",
                           "MASTER_ADDR": "127.0.0.1"}.items():
            os.environ.setdefault(var, value)  # external_launcher: one in-process worker
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
        from vllm import LLM, SamplingParams  # optional: CUDA machines only

        llm = LLM(model=resolve_model_dir(model), dtype=dtype, seed=seed,
                  gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len,
                  distributed_executor_backend="external_launcher", **llm_kwargs)
        return cls(llm, SamplingParams)

    def chat(self, tokenizer, conversations: Sequence[Sequence[dict]], max_new_tokens: int = 64,
             temperature: float = 0.0, top_p: float = 1.0, seed: int = 0,
             negative_conversations=None, guidance_scale: float = 1.0) -> list[str]:
        if negative_conversations is not None and guidance_scale != 1.0:
            raise ValueError("vLLM has no classifier-free guidance: generate guided trait data "
                             "with the transformers backend")
        params = [self.make_params(**sampling_kwargs(max_new_tokens, temperature, top_p, seed,
                                                     i))
                  for i in range(len(conversations))]
        outputs = self.llm.generate(chat_prompts(tokenizer, conversations), params,
                                    use_tqdm=False)
        return replies(outputs)

    def load_weights(self, model: torch.nn.Module) -> VLLMChat:
        """Copy `model`'s current (e.g. merged in place) weights into the engine."""
        weights = list(named_weights(model))  # references, not copies
        if not hasattr(self.llm, "apply_model"):
            raise RuntimeError("this vLLM has no LLM.apply_model (in-place weight updates); "
                               "upgrade vLLM")
        self.llm.apply_model(lambda engine_model: _load(engine_model, weights))
        self.llm.reset_prefix_cache()  # cached KV blocks were computed with the old weights
        return self


def _load(engine_model, weights) -> None:
    engine_model.load_weights(iter(weights))  # returns nothing large across the rpc


_ENGINE: dict[tuple[str, str], VLLMChat] = {}  # one per process (per Ray actor): GPU memory


def use_engine(profile, engine: VLLMChat | None) -> None:
    """Make `engine` (e.g. one started with your own vLLM options, `VLLMChat(LLM(...),
    SamplingParams)`) this process's engine for `profile.model` and `profile.dtype`;
    None drops it."""
    _ENGINE.clear()
    if engine is not None:
        _ENGINE[(profile.model, profile.dtype)] = engine


def generator(profile, model: torch.nn.Module, start: Callable[..., VLLMChat] | None = None):
    """What the generations of a sweep point hand to `models.chat`, by
    `profile.generation_backend`: the transformers `model` itself, or this process's vLLM
    engine on `profile.model` (started once, by `start`, default `VLLMChat.start`) after
    `model`'s current weights were copied into it (one copy per call: call it once per
    point, inside the point's merge)."""
    backend = profile.generation_backend
    if backend not in BACKENDS:
        raise ValueError(f"unknown generation_backend {backend!r}; choose one of "
                         f"{list(BACKENDS)}")
    if backend == "transformers":
        return model
    key = (profile.model, profile.dtype)
    if key not in _ENGINE:  # a new base model replaces the old engine
        use_engine(profile, (start or VLLMChat.start)(profile.model, dtype=profile.dtype,
                                                      seed=profile.seed))
    return _ENGINE[key].load_weights(model)


def self_descriptions(model: torch.nn.Module, tokenizer, profile, n: int | None = None,
                      start: Callable[..., VLLMChat] | None = None) -> list[str]:
    """The "tell me about yourself" texts (the paper's LIWC-22 input, `pvutils.linguistics`):
    `n` (default `profile.n_samples`) replies to `linguistics.SELF_DESCRIPTION_PROMPT`, with
    the interview's sampling settings, on the profile's generation backend."""
    from .linguistics import SELF_DESCRIPTION_PROMPT  # empath/VADER: only for this text

    convos = [[{"role": "user", "content": SELF_DESCRIPTION_PROMPT}]] * (n or profile.n_samples)
    return chat(generator(profile, model, start), tokenizer, convos,
                max_new_tokens=profile.eval_max_new_tokens, temperature=profile.eval_temperature,
                top_p=1.0, seed=profile.seed, batch_size=profile.eval_batch_size,
                progress=False)
