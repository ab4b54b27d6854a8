"""Profiles: one place for every knob, overridable by name."""

import pytest

from pvutils import CONDITIONS
from pvutils.profiles import PROFILES, get_profile


def test_three_profiles_exist_and_cpu_is_the_embedded_default():
    assert set(PROFILES) == {"smoke", "cpu", "paper", "paper-qwen"}
    assert get_profile("cpu").model == "smollm2-135m-instruct"
    assert get_profile("paper").model == "meta-llama/Llama-3.1-8B-Instruct"


def test_cpu_profile_sweeps_the_papers_alpha_grid():
    alphas = get_profile("cpu").alphas
    assert len(alphas) == 20 and alphas[0] == 0.1 and alphas[-1] == 2.0
    assert len(CONDITIONS) == 10


def test_override_and_none_means_keep():
    p = get_profile("smoke", n_dialogues=3, model=None)
    assert p.n_dialogues == 3 and p.model == PROFILES["smoke"].model


def test_unknown_profile_field_or_condition_is_an_error():
    with pytest.raises(ValueError, match="unknown profile 'gpu'"):
        get_profile("gpu")
    with pytest.raises(ValueError, match="unknown profile field"):
        get_profile("cpu", n_dialogs=3)
    with pytest.raises(ValueError, match="unknown condition"):
        get_profile("cpu", conditions=["extraversion_medium"])
