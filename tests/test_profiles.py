"""Profiles: one place for every knob, overridable by name, every value checked."""


import pytest

from pvutils import CONDITIONS
from pvutils.profiles import PROFILES, Profile, get_profile


def test_three_profiles_exist_and_cpu_is_the_embedded_default():
    assert set(PROFILES) == {"smoke", "cpu", "paper", "paper-qwen"}
    assert get_profile("cpu").model == "smollm2-135m-instruct"
    assert get_profile("paper").model == "meta-llama/Llama-3.1-8B-Instruct"


def test_paper_profile_sweeps_the_papers_alpha_grid_and_cpu_a_subset_of_it():
    alphas = get_profile("paper").alphas
    assert len(alphas) == 20 and alphas[0] == 0.1 and alphas[-1] == 2.0
    assert set(get_profile("cpu").alphas) <= set(alphas) and max(get_profile("cpu").alphas) == 2.0
    assert len(CONDITIONS) == 10


def test_override_and_none_means_keep():
    p = get_profile("smoke", n_dialogues=3, model=None)
    assert p.n_dialogues == 3 and p.model == PROFILES["smoke"].model


def test_lists_become_tuples_and_ints_floats():
    p = get_profile("cpu", alphas=[1, 2], sweep_conditions=["openness_low"])
    assert p.alphas == (1.0, 2.0) and isinstance(p.alphas[0], float)
    assert p.sweep_conditions == ("openness_low",)


def test_unknown_profile_field_or_condition_is_an_error():
    with pytest.raises(ValueError, match="unknown profile 'gpu'"):
        get_profile("gpu")
    with pytest.raises(ValueError, match="unknown profile field"):
        get_profile("cpu", n_dialogs=3)
    with pytest.raises(ValueError, match="unknown condition"):
        get_profile("cpu", conditions=["extraversion_medium"])


@pytest.mark.parametrize(("override", "message"), [
    ({"alphas": "abc"}, r"alphas='abc' is not a list of float"),
    ({"alphas": ["x"]}, r"alphas='x' is not of type float"),
    ({"ties_density": 7}, r"ties_density=7.0 is out of range \(0.0, 1.0\]"),
    ({"dtype": "int8"}, r"dtype='int8' has unknown value.*'bfloat16'"),
    ({"n_samples": 0}, r"n_samples=0 is out of range \[1, inf\)"),
    ({"n_samples": 1.5}, r"n_samples=1.5 is not of type int"),
    ({"use_lora": "yes"}, r"use_lora='yes' is not of type bool"),
    ({"composition_traits": ["charm"]}, r"composition_traits.*unknown value"),
    ({"composition_methods": ["SLERP"]}, r"unknown value.*TIES\+DARE"),
    ({"composition_fraction": "quarter"}, r"composition_fraction.*unknown value"),
    ({"composition_fraction": "half", "composition_traits": ["openness", "neuroticism"]},
     r"composition_fraction='half' needs at least 3 composition_traits"),
    ({"sweep_conditions": []}, r"sweep_conditions=\[\] is empty"),
    ({"device": "tpu"}, r"device='tpu' is not a device"),
    ({"learning_rate": 0.0}, r"learning_rate=0.0 is out of range \(0.0, inf\)"),
    ({"alphas": [float("nan")]}, r"is not a finite number"),
])
def test_bad_values_are_one_line_errors_naming_the_field(override, message):
    with pytest.raises(ValueError, match=message) as err:
        get_profile("smoke", **override)
    assert "\n" not in str(err.value) and "profile 'smoke'" in str(err.value)


def test_profiles_are_checked_when_made_not_only_when_overridden():
    with pytest.raises(ValueError, match="gen_top_p=2.0 is out of range"):
        Profile(name="mine", gen_top_p=2.0)
