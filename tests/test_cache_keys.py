"""Cache keys are derived, not hand-listed: every Profile field and every notebook parameter,
changed alone, gives a new key (or new points) to exactly the stages that read it.

The tables below are the specification: a field added to Profile without a line here, or a
stage that starts reading a field it does not declare, fails a test.
"""

from __future__ import annotations

import os

import pytest

from pvutils import book, cache, components, data, plusminus, seeds, sweeps, training
from pvutils.profiles import CONDITIONS, field_names, get_profile

BASE = get_profile("smoke")
DOMAIN = f"domain_{training.DEFAULT_CHARACTER}"
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
    "seed_study_conditions": ("openness_low",), "seed_study_seeds": (0, 4),
    "component_conditions": ("openness_high",),
}

VECTOR_SWEEPS = {"rq1-contrast", "rq1-interview", "rq2-composition", "rq3-negation",
                 "rq4-transfer", "layerwise", "plusminus"}  # they apply trained vectors
# a new vector is a new input of every vector sweep, of the components made from the
# vectors, and of the seed study's fine-tunes (the same recipe under other seeds)
TRAINING = {"vectors", "components", "seed-study"} | VECTOR_SWEEPS
EVERY = {"data", "rq1-p2", "rq1-npti"} | TRAINING
DATA = {"data"} | TRAINING

# field -> the stages whose key (or point set) it changes
READERS = {
    "name": set(), "measure": set(),  # a label, and a field only the `score` command reads
    "model": EVERY, "dtype": EVERY, "device": EVERY,
    "seed": DATA - {"seed-study"},  # the study names its seeds
    **dict.fromkeys(["data_source", "big5chat_path", "n_dialogues", "guidance_gamma",
                     "gen_temperature", "gen_top_p", "gen_max_new_tokens", "gen_batch_size"],
                    DATA),
    **dict.fromkeys(["train_epochs", "train_batch_size", "grad_accum", "learning_rate",
                     "lr_scheduler", "max_length", "use_lora", "bf16",
                     "gradient_checkpointing"], TRAINING),
    "conditions": {"data", "vectors", "components"},  # the mean is over the trained ones
    "component_conditions": {"component-parts"},
    "seed_study_conditions": {"seed-study"}, "seed_study_seeds": {"seed-study"},
    "judge": {"rq1-interview"}, "judge_model": {"rq1-interview"},
    "n_samples": {"rq1-interview", "rq3-negation", "plusminus"},
    "eval_temperature": {"rq1-interview", "rq3-negation", "plusminus"},
    "eval_max_new_tokens": {"rq1-interview", "rq3-negation", "rq4-transfer", "plusminus"},
    "eval_batch_size": {"rq1-interview", "rq3-negation", "rq4-transfer", "plusminus"},
    "contrast_pairs": {"rq1-contrast", "rq1-p2", "rq1-npti", "rq2-composition",
                       "rq3-negation", "rq4-transfer", "plusminus"},
    "alphas": {"rq1-contrast"}, "interview_alphas": {"rq1-interview"},
    "npti_gammas": {"rq1-npti"}, "p2_seeds": {"rq1-p2"},
    "composition_alphas": {"rq2-composition"}, "composition_traits": {"rq2-composition"},
    "composition_methods": {"rq2-composition"}, "ties_density": {"rq2-composition"},
    "dare_drop_rate": {"rq2-composition"},
    "sweep_conditions": {"rq1-contrast", "rq1-interview", "rq1-p2", "rq1-npti",
                         "rq3-negation", "rq4-transfer", "layerwise", "plusminus"},
    "transfer_alphas": {"rq4-transfer"}, "transfer_betas": {"rq4-transfer"},
    "layerwise_alphas": {"layerwise"}, "n_heldout": {"rq4-transfer", "layerwise"},
    # how a run is launched and checkpointed changes no result (the launch plan reads them)
    "launcher": set(), "accelerate_config": set(), "generation_backend": set(),
    "save_steps": TRAINING,  # read by the fine-tune (its checkpoints), so part of its key
    "language": {"rq1-interview", "rq3-negation", "plusminus"},
}

# notebook parameters that are not Profile fields -> the stages they reach
PAGE_ONLY = {"profile": "selects the profile", "seed": None, "density": None,
             "max_new_tokens": None, "example_condition": None, "example_question": None,
             # chapter 06's own settings: its caches key them as inputs (pointcache)
             **dict.fromkeys(["steering_coefficients", "n_questions", "steering_layer_step",
                              "ranks", "steering_probe", "mixer_alphas", "p2_intensities",
                              "dial_targets"])}
NOTEBOOK_INPUTS = {"judges": ["embedding"], "transfer_conditions": ["agreeableness_low"]}
NOTEBOOK_READERS = {"judges": {"rq1-interview"}, "transfer_conditions": {"rq4-transfer"}}


def signatures(P, judges=None, transfer_conditions=TRANSFER) -> dict[str, object]:
    """Every stage's key and point keys, as the chapters would compute them for `P`."""
    ids = {c: training.train_key(P, c) for c in P.conditions}
    ids["domain"] = training.train_key(P, DOMAIN)
    swept = [c for c in P.conditions if c in P.sweep_conditions]
    plans = {
        "rq1-contrast": sweeps.rq1_plan(P, swept),
        "rq1-interview": sweeps.interview_plan(P, swept, judges),
        "rq1-p2": sweeps.p2_plan(P, swept), "rq1-npti": sweeps.npti_plan(P, swept),
        "rq2-composition": sweeps.composition_plan(P),
        "rq3-negation": sweeps.negation_plan(P, swept),
        "rq4-transfer": sweeps.transfer_plan(P, [c for c in transfer_conditions
                                                 if c in P.sweep_conditions]),
        "layerwise": sweeps.layerwise_plan(P, swept),
    }
    assert set(plans) == set(sweeps.PLANS)
    out = {name: (stage.key(P, *extra), [sweeps.point_key(p, ids) for p in points])
           for name, (stage, points, extra) in plans.items()}
    stage, points, extra = plusminus.plusminus_plan(P, plusminus.own_traits(swept))
    out["plusminus"] = (stage.key(P, *extra), [sweeps.point_key(p, ids) for p in points])
    out["components"] = components.components_key({c: ids[c] for c in P.conditions})
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
    changed = _changed(signatures(BASE), signatures(BASE.replace(**{field: MUTATIONS[field]})))
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
    view = sweeps.RQ1.view(BASE)
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
