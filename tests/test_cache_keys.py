"""Cache keys are derived, not hand-listed: every Profile field and every notebook parameter,
changed alone, gives a new key (or new points) to exactly the stages that read it.

The tables below are the specification: a field added to Profile without a line here, or a
stage that starts reading a field it does not declare, fails a test.
"""

from __future__ import annotations

import ast
import importlib
import os
import pkgutil

import pandas as pd
import pytest

import pvutils
from pvutils import (
    analysis,
    bench,
    blocks,
    book,
    cache,
    calibrate,
    character,
    components,
    data,
    harness,
    linguistics,
    lowrank,
    mixer,
    models,
    plans,
    plusminus,
    seeds,
    similarity,
    steering,
    sweeps,
    training,
    validity,
)
from pvutils.bfi import ITEMS_BY_NUMBER
from pvutils.personas import split_condition
from pvutils.profiles import CONDITIONS, field_names, get_profile

BASE = get_profile("smoke")
DOMAIN = f"domain_{character.DEFAULT_CHARACTER}"
TRANSFER = ["extraversion_high", "extraversion_low", "agreeableness_low"]  # 04's default

# one valid new value per field
MUTATIONS = {
    "name": "mine", "seed": 1, "model": "other-model", "dtype": "bfloat16", "device": "cuda",
    "data_source": "big5chat", "big5chat_path": "b5.csv", "n_dialogues": 5,
    "guidance_gamma": 3.0, "gen_temperature": 0.9, "gen_top_p": 0.8, "gen_max_new_tokens": 21,
    "gen_batch_size": 16, "train_epochs": 2.0, "train_batch_size": 2, "grad_accum": 2,
    "learning_rate": 1e-4, "lr_scheduler": "cosine", "max_length": 64, "use_lora": True,
    "bf16": True, "gradient_checkpointing": True, "measure": "interview",
    "judge": "embedding", "judge_model": "gpt-4o-mini", "n_samples": 2,
    "eval_temperature": 0.7, "eval_max_new_tokens": 17, "eval_batch_size": 8,
    "alphas": (0.5, 1.0), "interview_alphas": (1.0, 2.0), "composition_alphas": (0.3,),
    "conditions": CONDITIONS[1:], "sweep_conditions": ("extraversion_high",),
    "composition_traits": ("extraversion",), "composition_methods": ("TA",),
    "ties_density": 0.5, "dare_drop_rate": 0.3, "npti_gammas": (2.0,),
    "transfer_alphas": (0.0, 0.5), "transfer_betas": (1.0,), "layerwise_alphas": (2.0,),
    "n_heldout": 5, "contrast_pairs": 2, "p2_seeds": 2,
    "launcher": "accelerate", "accelerate_config": "configs/other.yaml", "save_steps": 5,
    "generation_backend": "vllm", "language": "ko",
    "n_prompts": 3, "quality_filter": "none", "padding_free": True, "heldout_fraction": 0.25,
    "early_stopping_patience": 1, "keep_best": False, "train_objective": "dpo",
    "dpo_beta": 0.5,
    "linguistic_alphas": (1.0,), "linguistic_samples": 3, "linguistic_max_new_tokens": 30,
    "seed_study_conditions": ("openness_low",), "seed_study_seeds": (0, 4),
    "component_conditions": ("openness_high",),
    "composition_fraction": "half",
}
# fields whose mutation is only valid beside another value, set on both sides of the check
CONTEXT = {"dpo_beta": {"train_objective": "dpo"}, "composition_fraction": {
    "composition_traits": ("extraversion", "agreeableness", "openness"),
    "conditions": ("extraversion_high", "extraversion_low", "agreeableness_high",
                   "agreeableness_low", "openness_high", "openness_low")}}

VECTOR_SWEEPS = {"rq1-contrast", "rq1-interview", "rq2-composition", "rq3-negation",
                 "rq4-transfer", "layerwise", "layer-blocks", "validity-ipip", "linguistic",
                 "plusminus"}  # they apply trained vectors
# chapter 06: the stages that apply vectors (or their low-rank copies), and those that read
# the trait data through the steering directions
CH06_VECTOR = {"dose-vector", "capability-vector", "dial-check", "lowrank", "dose-lowrank",
               "mixer", "steering-bridge"}
CH06_STEERING = {"steering-directions", "steering-layers", "dose-steering",
                 "capability-steering", "steering-bridge"}
CH06_CONTRAST = {"steering-layers", "dose-off", "dose-vector", "dose-steering", "dose-NPTI",
                 "dose-P2", "dose-lowrank", "dial-check", "mixer"}  # they read contrast_pairs
CH06 = CH06_VECTOR | CH06_STEERING | CH06_CONTRAST | {f"capability-{d}"
                                                     for d in ("off", "NPTI", "P2")}
# a new vector is a new input of every vector sweep, of the components and the cosine table
# made from the vectors, of 01's example replies and of the seed study's fine-tunes (the
# same recipe under other seeds)
TRAINING = {"vectors", "components", "seed-study", "cosines",
            "greedy-replies"} | VECTOR_SWEEPS | CH06_VECTOR
EVERY = {"data", "rq1-p2", "rq1-npti"} | TRAINING | CH06
DATA = {"data"} | TRAINING | CH06_STEERING
# the swept vectors choose the points of every chapter-06 stage but the base model's (the
# dials off) and those keyed by trait (smoke's mutation keeps extraversion)
CH06_SWEPT = CH06 - {"steering-directions", "steering-layers", "dose-off", "capability-off"}

# field -> the stages whose key (or point set) it changes
READERS = {
    "name": set(), "measure": set(),  # a label, and a field only the `score` command reads
    "model": EVERY, "dtype": EVERY, "device": EVERY,
    "seed": DATA - {"seed-study"},  # the study names its seeds
    **dict.fromkeys(["data_source", "big5chat_path", "n_dialogues", "guidance_gamma",
                     "gen_temperature", "gen_top_p", "gen_max_new_tokens", "gen_batch_size",
                     "n_prompts", "quality_filter"],
                    DATA),
    **dict.fromkeys(["train_epochs", "train_batch_size", "grad_accum", "learning_rate",
                     "lr_scheduler", "max_length", "use_lora", "bf16",
                     "gradient_checkpointing", "padding_free", "heldout_fraction",
                     "early_stopping_patience", "keep_best", "train_objective", "dpo_beta"],
                    TRAINING),
    # the mean and 02's cosine table are over the trained ones
    "conditions": {"data", "vectors", "components", "cosines"},
    "component_conditions": {"component-parts"},
    "seed_study_conditions": {"seed-study"}, "seed_study_seeds": {"seed-study"},
    "judge": {"rq1-interview"}, "judge_model": {"rq1-interview"},
    "n_samples": {"rq1-interview", "rq3-negation", "plusminus"},
    "eval_temperature": {"rq1-interview", "rq3-negation", "linguistic", "plusminus"},
    "eval_max_new_tokens": {"rq1-interview", "rq3-negation", "rq4-transfer", "mixer",
                            "plusminus", "greedy-replies"},  # 01's example: twice as long
    "eval_batch_size": {"rq1-interview", "rq3-negation", "rq4-transfer", "linguistic",
                        "plusminus"},
    "contrast_pairs": {"rq1-contrast", "rq1-p2", "rq1-npti", "rq2-composition",
                       "rq3-negation", "rq4-transfer", "validity-ipip", "layer-blocks",
                       "plusminus"} | CH06_CONTRAST,
    # 06: the vector dial's strengths, so the dialled alphas and the low-rank strength
    "alphas": {"rq1-contrast", "dose-vector", "capability-vector", "dial-check",
               "dose-lowrank"},
    "interview_alphas": {"rq1-interview", "validity-ipip"},
    "npti_gammas": {"rq1-npti", "dose-NPTI", "capability-NPTI"}, "p2_seeds": {"rq1-p2"},
    "composition_alphas": {"rq2-composition"}, "composition_traits": {"rq2-composition"},
    "composition_methods": {"rq2-composition"}, "ties_density": {"rq2-composition"},
    "composition_fraction": {"rq2-composition"},
    "dare_drop_rate": {"rq2-composition"},
    "sweep_conditions": {"rq1-contrast", "rq1-interview", "rq1-p2", "rq1-npti",
                         "rq3-negation", "rq4-transfer", "layerwise", "layer-blocks",
                         "validity-ipip", "linguistic", "plusminus"} | CH06_SWEPT,
    "transfer_alphas": {"rq4-transfer"}, "transfer_betas": {"rq4-transfer"},
    "layerwise_alphas": {"layerwise"}, "n_heldout": {"rq4-transfer", "layerwise"},
    # how a run is launched and checkpointed changes no result (the launch plan reads them)
    "launcher": set(), "accelerate_config": set(),
    # vLLM samples with other random streams than transformers: the interviews' texts differ
    "generation_backend": {"rq1-interview", "rq3-negation"},
    "save_steps": TRAINING,  # read by the fine-tune (its checkpoints), so part of its key
    "language": {"rq1-interview", "rq3-negation", "plusminus"},
    **dict.fromkeys(["linguistic_alphas", "linguistic_samples", "linguistic_max_new_tokens"],
                    {"linguistic"}),
}

# notebook parameters that are not Profile fields -> the stages they reach
PAGE_ONLY = {"profile": "selects the profile", "seed": None, "density": None}
NOTEBOOK_INPUTS = {"judges": ["embedding"], "transfer_conditions": ["agreeableness_low"],
                   # the replies printed in 00 (demo) and 01 (the example at three α)
                   "max_new_tokens": 12, "example_condition": "extraversion_low",
                   "example_question": "How do you spend a free evening?",
                   # chapter 06's own settings (`bench.bench_settings`)
                   "steering_coefficients": [1.0], "steering_probe": 1.0,
                   "steering_layer_step": 4, "p2_intensities": [1, 3], "n_questions": 5,
                   "ranks": [16], "mixer_alphas": [2.0], "dial_targets": [3.1],
                   "bridge_chats": 2}
NOTEBOOK_READERS = {"judges": {"rq1-interview"}, "transfer_conditions": {"rq4-transfer"},
                    **dict.fromkeys(["max_new_tokens", "example_condition",
                                     "example_question"], {"greedy-replies"}),
                    "steering_coefficients": {"dose-steering", "capability-steering"},
                    "steering_probe": {"steering-layers"},
                    "steering_layer_step": {"steering-layers"},
                    "p2_intensities": {"dose-P2", "capability-P2"},
                    "n_questions": {f"capability-{d}" for d in ("off", "vector", "steering",
                                                                 "NPTI", "P2")},
                    "ranks": {"lowrank", "dose-lowrank"}, "mixer_alphas": {"mixer"},
                    "dial_targets": {"dial-check"}, "bridge_chats": {"steering-bridge"}}
N_LAYERS = 30  # the embedded model's depth (the layer sweep's points depend on it)


def _linear_dose(conditions, strengths) -> pd.DataFrame:
    """A vector dose table rising 0.5 per unit strength toward each condition's pole, as
    the dial check's input (its points are the alphas dialled on the dose)."""
    rows = []
    for c in conditions:
        trait, level = split_condition(c)
        for s in strengths:
            score = 3.0 + (0.5 if level == "high" else -0.5) * s
            items = {str(n): (6 - score if it.reverse else score) if it.dimension == trait
                     else 3.0 for n, it in ITEMS_BY_NUMBER.items()}
            rows.append({"method": "vector", "condition": c, "strength": s, "items": items})
    return pd.DataFrame(rows)


def chapter06(P, swept, ids, dial_targets=None, **given) -> dict[str, object]:
    """Chapter 06's plans as the notebook builds them (the chosen layer fixed at 0), with
    the full settings (smoke's own compare only the first vector)."""
    S = bench.bench_settings("cpu", **given)
    traits = list(dict.fromkeys(split_condition(c)[0] for c in swept))
    directions = {t: steering.direction_file(P, t).parent.name for t in traits}
    ids = {**ids, **{f"direction:{t}": k for t, k in directions.items()}}
    pairs = [(c, r) for c in swept for r in S.ranks]
    ids.update({f"{c}@r{r}": lowrank.lowrank_key(ids[c], r) for c, r in pairs})
    dose = _linear_dose(swept, [0.0, *P.alphas])
    questions = data.heldout_prompts()[:S.mixer_questions]
    plans = {}
    for name, plan in bench.bench_plans(P, S, swept, layer=0).items():
        plans[name], off = harness.split_off(plan)  # the dials off: one shared base point
        plans[off[0].name] = off
    plans |= {
        "steering-layers": steering.layer_plan(
            P, traits, steering.probe_layers(N_LAYERS, S.steering_layer_step), S.steering_probe),
        "dial-check": calibrate.dial_check_plan(P, calibrate.dial_table(dose, dial_targets,
                                                                        n_boot=20)),
        "dose-lowrank": bench.lowrank_plan(P, pairs),
        "mixer": mixer.mixer_plan(P, mixer.default_mixes(swept, P.conditions),
                                  S.mixer_alphas, questions),
        "steering-bridge": steering.bridge_plan(P, swept, S.bridge_chats),
    }
    out = {name: (stage.key(P, *extra), [sweeps.point_key(p, ids) for p in points])
           for name, (stage, points, extra) in plans.items()}
    return {**out, "steering-directions": directions,
            "lowrank": {pair: ids[f"{pair[0]}@r{pair[1]}"] for pair in pairs}}


def _default(notebook: str, name: str):
    return ast.literal_eval(book.notebook_parameters(book.NOTEBOOK_DIR / notebook)[name])


DEMO_TOKENS = _default("00_setup.ipynb", "max_new_tokens")
EXAMPLE = (_default("01_rq1_scaling.ipynb", "example_condition"),
           _default("01_rq1_scaling.ipynb", "example_question"))
DEMO = [[{"role": "user", "content": "Tell me a little about yourself."}]]


def replies(P, swept, ids, max_new_tokens=DEMO_TOKENS, example_condition=EXAMPLE[0],
            example_question=EXAMPLE[1]) -> tuple[str, list[str]]:
    """The greedy-replies stage as 00 (the base's demo) and 01 (the example vector at α 0,
    1, 2) build it; 01 shows its example condition if it is swept, else the first swept."""
    shown = example_condition if example_condition in swept else swept[0]
    stage, demo, _ = analysis.replies_plan(P, DEMO, max_new_tokens)
    _, example, _ = analysis.replies_plan(P, [analysis.example_conversation(example_question)],
                                          P.eval_max_new_tokens * 2, (0.0, 1.0, 2.0))
    return stage.key(P), [sweeps.point_key(p, {"vector": ids[shown]})
                          for p in [*demo, *example]]


def signatures(P, judges=None, transfer_conditions=TRANSFER, max_new_tokens=DEMO_TOKENS,
               example_condition=EXAMPLE[0], example_question=EXAMPLE[1],
               **ch06) -> dict[str, object]:
    """Every stage's key and point keys, as the chapters would compute them for `P`."""
    ids = {c: training.train_key(P, c) for c in P.conditions}
    ids["domain"] = training.train_key(P, DOMAIN)
    swept = [c for c in P.conditions if c in P.sweep_conditions]
    stage_plans = {
        "rq1-contrast": plans.rq1_plan(P, swept),
        "rq1-interview": plans.interview_plan(P, swept, judges),
        "rq1-p2": plans.p2_plan(P, swept), "rq1-npti": plans.npti_plan(P, swept),
        "rq2-composition": plans.composition_plan(P),
        "rq3-negation": plans.negation_plan(P, swept),
        "rq4-transfer": plans.transfer_plan(P, [c for c in transfer_conditions
                                                 if c in P.sweep_conditions]),
        "layerwise": plans.layerwise_plan(P, swept),
        "layer-blocks": blocks.blocks_plan(P, swept, n_layers=30),
        "validity-ipip": validity.ipip_plan(P, swept),
    }
    assert set(stage_plans) == set(plans.PLANS) | set(validity.PLANS) | set(blocks.PLANS)
    stage_plans["linguistic"] = linguistics.linguistic_plan(P, swept)  # chapter 07's, beside them
    out = {name: (stage.key(P, *extra), [sweeps.point_key(p, ids) for p in points])
           for name, (stage, points, extra) in stage_plans.items()}
    out.update(chapter06(P, swept, ids, **ch06))
    stage, points, extra = plusminus.plusminus_plan(P, plusminus.own_traits(swept))
    out["plusminus"] = (stage.key(P, *extra), [sweeps.point_key(p, ids) for p in points])
    out["components"] = components.components_key({c: ids[c] for c in P.conditions})
    out["cosines"] = similarity.cosines_key([(c, ids[c]) for c in P.conditions], "model")  # 02
    out["greedy-replies"] = replies(P, swept, ids, max_new_tokens, example_condition,
                                    example_question)
    out["component-parts"] = components.part_names(P.component_conditions, P.conditions)
    out["seed-study"] = {(s, c): training.train_key(Q, c)
                         for s, Q in seeds.seed_profiles(P).items() for c in Q.conditions}
    out["data"] = {c: data.data_key(P, c) for c in [*P.conditions, DOMAIN]}
    out["vectors"] = {c: training.train_key(P, c) for c in [*P.conditions, DOMAIN]}
    return out


def _changed(a: dict, b: dict) -> set[str]:
    return {stage for stage in a if a[stage] != b[stage]}


def test_every_field_has_a_mutation_and_a_reader_line():
    assert set(MUTATIONS) == set(field_names()) == set(READERS)


@pytest.mark.parametrize("field", sorted(MUTATIONS))
def test_a_field_changes_exactly_the_stages_that_read_it(field):
    base = BASE.replace(**CONTEXT.get(field, {}))
    changed = _changed(signatures(base), signatures(base.replace(**{field: MUTATIONS[field]})))
    assert changed == READERS[field], field


@pytest.mark.parametrize("param", sorted(NOTEBOOK_INPUTS))
def test_a_notebook_input_changes_exactly_its_stages(param):
    changed = _changed(signatures(BASE), signatures(BASE, **{param: NOTEBOOK_INPUTS[param]}))
    assert changed == NOTEBOOK_READERS[param]


def test_every_notebook_parameter_is_a_field_or_listed_here():
    fields = set(field_names())
    for nb in book.notebooks():
        params = set(book.notebook_parameters(nb))
        assert "profile" in params, nb.name
        unlisted = params - fields - set(PAGE_ONLY) - set(NOTEBOOK_INPUTS)
        assert not unlisted, f"{nb.name}: {unlisted}"


def test_a_stage_reads_only_what_it_declares():
    view = plans.RQ1.view(BASE)
    assert view.contrast_pairs == BASE.contrast_pairs and view.name == "smoke"
    with pytest.raises(cache.UndeclaredField, match="rq1-contrast.*n_samples"):
        _ = view.n_samples
    # a fine-tune makes its own data, so it may read the data stage's fields too
    assert training.VECTORS.view(BASE).gen_batch_size == BASE.gen_batch_size


def test_the_code_version_is_part_of_the_key():
    def one():
        return 1

    def two():
        return 2

    a, b = cache.Stage("s", ("seed",), code=(one,)), cache.Stage("s", ("seed",), code=(two,))
    assert a.key(BASE) != b.key(BASE) and a.key(BASE) == a.key(BASE.replace(n_samples=3))


def test_file_identity_is_content_or_producer_key_never_mtime(tmp_path):
    f, g = tmp_path / "a.bin", tmp_path / "b.bin"
    f.write_bytes(b"phi")
    g.write_bytes(b"phi")
    first = cache.identity(f)
    os.utime(f, ns=(1, 1))
    assert cache.identity(f) == first == cache.identity(g)
    g.write_bytes(b"psi")
    assert cache.identity(g) != first
    f.with_suffix(".json").write_text('{"key": "made-by-abc"}')
    assert cache.identity(f) == "made-by-abc"


def test_changed_training_parameters_train_beside_the_default_vectors(isolated_home):
    a = training.vector_path(BASE, "extraversion_high")
    b = training.vector_path(BASE.replace(learning_rate=1e-3), "extraversion_high")
    assert a != b and a.parent.parent == b.parent.parent == isolated_home / "vectors"


def test_the_half_fraction_reuses_the_full_designs_cached_points():
    """RQ2's half fraction is a grid choice, not a key: same stage key, half of the full
    design's point keys (so a later full run computes only the other half)."""
    full_profile = BASE.replace(**CONTEXT["composition_fraction"])
    key, full = signatures(full_profile)["rq2-composition"]
    half_key, half = signatures(full_profile.replace(composition_fraction="half"))[
        "rq2-composition"]
    assert half_key == key and set(half) < set(full) and 2 * len(half) == len(full)


# the stages whose points generate text: their keys carry the sampler's source
# (`models.GENERATION_CODE`), so a change to how text is sampled recomputes them
GENERATING = {"data", "rq1-interview", "rq3-negation", "rq4-transfer", "persona-shift",
              "linguistic", "mixer", "greedy-replies", "plusminus", "capability-off",
              "capability-vector", "capability-steering", "capability-NPTI", "capability-P2"}


def _all_stages() -> dict[str, cache.Stage]:
    found = {}
    for info in pkgutil.walk_packages(pvutils.__path__, "pvutils."):
        for value in vars(importlib.import_module(info.name)).values():
            for stage in (value.values() if isinstance(value, dict) else [value]):
                if isinstance(stage, cache.Stage):
                    found[stage.name] = stage
    return found


def test_exactly_the_generating_stages_are_keyed_by_the_sampler():
    stages = _all_stages()
    assert GENERATING <= set(stages)
    keyed = {name for name, s in stages.items() if set(models.GENERATION_CODE) <= set(s.code)}
    assert keyed == GENERATING
