"""The trait mixer: precomputed answers over a grid of (vector, α) and two-trait mixes,
shown with sliders on a plain HTML/JS page that works offline (no server, no CDN).

`mixer_sweep` is a cached stage (`mixer`, run by `sweeps.run_sweep`) that records, at every
grid point, the embedded model's greedy answers to a few held-out questions and the
likelihood-contrast score of each trait in the mix; `mixer_html` renders only what that
sweep measured. The page is a fragment (one <div> and one <script>) so a notebook can
display it in the book, or `write_mixer_page` can wrap it as a standalone file.
"""

from __future__ import annotations

import contextlib
import html
import itertools
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from .artifacts import atomic_path, fingerprint
from .cache import Stage
from .evaluation import REAL_PERSON_PROMPT, contrast_scores
from .merging import applied
from .models import GENERATION_CODE, chat, trim_to_sentence
from .personas import split_condition
from .plans import CONTRAST
from .sweeps import Plan, run_sweep


def default_mixes(vectors: Sequence[str], available: Sequence[str],
                  partners: Sequence[str] = ("agreeableness_high", "neuroticism_low")
                  ) -> dict[str, list[str]]:
    """Each swept vector alone, plus the first one mixed with the first available partner
    of another trait (none if no such vector was trained)."""
    mixes = {c: [c] for c in vectors}
    traits = {split_condition(c)[0] for c in vectors}
    partner = next((c for c in partners if c in available
                    and split_condition(c)[0] not in traits), None)
    if partner and vectors:
        mixes[f"{vectors[0]} + {partner}"] = [vectors[0], partner]
    return mixes


def mixer_points(mixes: Mapping[str, Sequence[str]], alphas: Sequence[float]) -> list[dict]:
    """Every grid point: each mix (name -> its vectors' conditions) at every combination of
    `alphas`, one α per vector (α = 0 everywhere is the base model)."""
    points = []
    for name, conditions in mixes.items():
        for combo in itertools.product(sorted({0.0, *map(float, alphas)}), repeat=len(conditions)):
            points.append({"mix": name, "conditions": list(conditions), "alphas": list(combo),
                           "_uses": list(conditions)})
    return points


def mixer_point(model, tokenizer, vectors: Mapping[str, Any], questions: Sequence[str],
                point: Mapping[str, Any], max_new_tokens: int = 40,
                n_pairs: int | None = None) -> dict[str, Any]:
    """At one grid point: greedy answers to `questions` and the contrast score of each
    trait in the mix."""
    convos = [[{"role": "system", "content": REAL_PERSON_PROMPT},
               {"role": "user", "content": q}] for q in questions]
    traits = list(dict.fromkeys(split_condition(c)[0] for c in point["conditions"]))
    on = [(vectors[c], a) for c, a in zip(point["conditions"], point["alphas"], strict=True)
          if a != 0]  # α = 0 adds nothing: not even read
    with applied(model, [v for v, _ in on], [a for _, a in on], reuse_buffers=True) if on \
            else contextlib.nullcontext(model):
        replies = chat(model, tokenizer, convos, max_new_tokens=max_new_tokens,
                       temperature=0.0, batch_size=len(convos), progress=False)
        scores = contrast_scores(model, tokenizer, traits, n_pairs=n_pairs)
    return {"questions": list(questions), "answers": [trim_to_sentence(r) for r in replies],
            "scores": scores}


MIXER = Stage("mixer", (*CONTRAST, "eval_max_new_tokens"), grid=("sweep_conditions",),
              code=(mixer_point, *GENERATION_CODE))


def mixer_plan(profile, mixes: Mapping[str, Sequence[str]], alphas: Sequence[float],
               questions: Sequence[str]) -> Plan:
    """The mixer's grid; the questions are part of its key."""
    return MIXER, mixer_points(mixes, alphas), (list(questions),)


def mixer_sweep(model, tokenizer, vectors: Mapping[str, Any], mixes: Mapping[str, Sequence[str]],
                alphas: Sequence[float], questions: Sequence[str], profile) -> pd.DataFrame:
    """Answers (at most the profile's `eval_max_new_tokens` tokens) and trait scores at
    every mixer grid point.

    Rows: mix, conditions, alphas, questions, answers (one per question), scores (trait -> 1-5).
    """
    P = MIXER.view(profile)
    used = {c: vectors[c] for m in mixes.values() for c in m}
    return run_sweep(mixer_plan(P, mixes, alphas, questions), P,
                     lambda point: mixer_point(model, tokenizer, used, questions, point,
                                               P.eval_max_new_tokens, P.contrast_pairs),
                     inputs=used)


def mixer_data(table: pd.DataFrame) -> dict:
    """The page's data: per mix its conditions, α grid and points (answers, scores)."""
    mixes: dict[str, dict] = {}
    for row in table.itertuples(index=False):
        mix = mixes.setdefault(row.mix, {"conditions": list(row.conditions), "points": {}})
        mix["points"][",".join(f"{a:g}" for a in row.alphas)] = {
            "answers": list(row.answers), "scores": {k: round(v, 3) for k, v in row.scores.items()}}
        mix.setdefault("questions", list(row.questions))
    for mix in mixes.values():
        keys = [list(map(float, k.split(","))) for k in mix["points"]]
        mix["alphas"] = [sorted({k[i] for k in keys}) for i in range(len(mix["conditions"]))]
    return mixes


_SCRIPT = """
(function () {
  var root = document.getElementById("%(id)s");
  var data = JSON.parse(root.querySelector("script[type='application/json']").textContent);
  var mixSel = root.querySelector(".mix"), qSel = root.querySelector(".question");
  var sliders = root.querySelector(".sliders"), out = root.querySelector(".answer");
  var score = root.querySelector(".score");
  function fmt(a) { return String(Number(a)); }
  function build() {
    var mix = data[mixSel.value];
    sliders.innerHTML = ""; qSel.innerHTML = "";
    mix.questions.forEach(function (q, i) { qSel.add(new Option(q, i)); });
    mix.conditions.forEach(function (c, i) {
      var label = document.createElement("label"), input = document.createElement("input");
      var shown = document.createElement("span");
      input.type = "range"; input.min = 0; input.max = mix.alphas[i].length - 1; input.step = 1;
      input.value = mix.alphas[i].indexOf(0); input.dataset.index = i; input.className = "alpha";
      input.setAttribute("aria-label", "alpha of " + c);
      input.addEventListener("input", show);
      label.textContent = c + " \\u03b1 = "; label.appendChild(shown); label.appendChild(input);
      sliders.appendChild(label);
    });
    show();
  }
  function show() {
    var mix = data[mixSel.value], key = [];
    sliders.querySelectorAll("input").forEach(function (input, i) {
      var a = mix.alphas[i][Number(input.value)];
      input.previousSibling.textContent = fmt(a) + " ";
      key.push(fmt(a));
    });
    var point = mix.points[key.join(",")];
    out.textContent = point ? point.answers[Number(qSel.value)] : "(not measured)";
    score.textContent = point ? Object.keys(point.scores).map(function (t) {
      return t + " " + point.scores[t].toFixed(2); }).join(", ") : "";
  }
  Object.keys(data).forEach(function (m) { mixSel.add(new Option(m, m)); });
  mixSel.addEventListener("change", build); qSel.addEventListener("change", show);
  build();
})();
"""


def inline_code(text: str) -> str:
    """Escaped HTML of a one-line caption with its markdown `code` spans as <code> (the
    figure captions' only markup; a markdown renderer for one span kind is not needed)."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


def mixer_html(table: pd.DataFrame, caption: str = "") -> str:
    """The mixer as an HTML fragment: pick a vector or mix, move its α sliders, read the
    answer and the measured trait score (contrast BFI, 1-5)."""
    data = mixer_data(table)
    uid = "mixer-" + fingerprint(data)
    payload = json.dumps(data).replace("</", "<\\/")
    return (
        f'<div id="{uid}" class="trait-mixer" style="border:1px solid #ccc;padding:1em">\n'
        f'<p>{inline_code(caption)}</p>\n'
        '<p><label>vector or mix <select class="mix"></select></label></p>\n'
        '<div class="sliders" style="display:grid;gap:.4em"></div>\n'
        '<p><label>question <select class="question"></select></label></p>\n'
        '<blockquote class="answer" style="min-height:3em"></blockquote>\n'
        '<p>measured score: <b class="score"></b></p>\n'
        f'<script type="application/json">{payload}</script>\n'
        f"<script>{_SCRIPT % {'id': uid}}</script>\n</div>\n"
    )


def write_mixer_page(table: pd.DataFrame, path: str | Path, title: str = "Trait mixer",
                     caption: str = "") -> Path:
    """A standalone offline page holding the mixer."""
    page = (f"<!doctype html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}"
            f"</title></head>\n<body><h1>{html.escape(title)}</h1>\n"
            f"{mixer_html(table, caption)}</body></html>\n")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        Path(tmp).write_text(page, encoding="utf-8")
    return path
