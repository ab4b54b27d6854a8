"""Interview and judge prompts per language (`resources/prompts_<language>.json`).

RQ4 moves a personality vector into a Korean-language model; measuring it there means
interviewing in Korean and asking the judge in Korean. One file per language holds every
text of the protocol: the interviewee's system prompt, the 44 BFI questions, the judge's
instructions, its transcript labels and the five dimensions' names and descriptions. The
judge's reply format (JSON with `analysis` and `result`) is the same in every language.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources

from .bfi import BFI_ITEMS, DIMENSION_DESCRIPTIONS
from .bundled import resource
from .profiles import TRAITS


@dataclass(frozen=True)
class Prompts:
    language: str
    real_person_prompt: str
    questions: dict[int, str]  # BFI item number -> the interview question
    judge_system_prompt: str  # with {dimension} and {description}
    judge_intro: str
    interviewer: str
    participant: str
    dimension_names: dict[str, str]
    dimension_descriptions: dict[str, str]


def languages() -> list[str]:
    """English (the protocol's own resources) and the languages that have a prompt file."""
    folder = resources.files("pvutils").joinpath("resources")
    return sorted({"en"} | {p.name[len("prompts_"):-len(".json")] for p in folder.iterdir()
                            if p.name.startswith("prompts_") and p.name.endswith(".json")})


def _english() -> dict:
    """The English protocol, from the resources the interview and judge read (one copy)."""
    judge = resource("judge")
    return {"language": "en", "real_person_prompt": resource("interview")["system_prompt"],
            "questions": {it.number: it.question for it in BFI_ITEMS},
            "judge_system_prompt": judge["system_prompt"], "judge_intro": judge["user_header"],
            "interviewer": "Interviewer", "participant": "Participant",
            "dimension_names": {t: t for t in TRAITS},
            "dimension_descriptions": dict(DIMENSION_DESCRIPTIONS)}


@cache
def load_prompts(language: str = "en") -> Prompts:
    """The prompts of one language; a missing language or a gap in its file is named."""
    if language not in languages():
        raise ValueError(f"no prompts for language {language!r}; available: {languages()} "
                         f"(add pvutils/resources/prompts_{language}.json)")
    name = f"resources/prompts_{language}.json"
    raw = _english() if language == "en" else json.loads(
        resources.files("pvutils").joinpath(name).read_text(encoding="utf-8"))
    prompts = Prompts(
        language=raw["language"], real_person_prompt=raw["real_person_prompt"],
        questions={int(k): v for k, v in raw["questions"].items()},
        judge_system_prompt=raw["judge_system_prompt"], judge_intro=raw["judge_intro"],
        interviewer=raw["interviewer"], participant=raw["participant"],
        dimension_names=raw["dimension_names"],
        dimension_descriptions=raw["dimension_descriptions"])
    missing = sorted(set(range(1, 45)) - set(prompts.questions))
    gaps = [t for t in TRAITS if t not in prompts.dimension_names
            or t not in prompts.dimension_descriptions]
    if missing or gaps:
        raise ValueError(f"{name}: missing BFI question(s) {missing} / dimension(s) {gaps}")
    return prompts


def judge_messages(dimension: str, transcripts: Sequence[tuple[str, str]],
                   language: str = "en") -> list[dict]:
    """The judge's request in `language`: expert role, the dimension, all Q/A pairs."""
    p = load_prompts(language)
    if dimension not in p.dimension_descriptions:
        raise ValueError(f"unknown dimension {dimension!r}; dimensions: {list(TRAITS)}")
    lines = [f"{p.interviewer}: {q}\n{p.participant}: {a}" for q, a in transcripts]
    system = p.judge_system_prompt.format(dimension=p.dimension_names[dimension],
                                          description=p.dimension_descriptions[dimension])
    return [{"role": "system", "content": system},
            {"role": "user", "content": p.judge_intro + "\n\n" + "\n\n".join(lines)}]
