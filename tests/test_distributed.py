"""The Ray grids on a local Ray instance: the local sweep's table, in the local sweep's cache."""

from __future__ import annotations

import pickle

import pandas as pd
import pytest
import torch

from pvutils import distributed, get_profile, models, plans, sweeps, vectors

ray = pytest.importorskip("ray", reason="the Ray path needs the optional extra: pip install .[ray]")

CONDITIONS = ("extraversion_high", "extraversion_low", "agreeableness_high", "agreeableness_low")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}})
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def grid_inputs(tiny_chat_model, tmp_path_factory):
    """A smoke profile on a tiny random Llama (the ChatML tokenizer) saved to disk, and four
    random vectors; RQ2 composes extraversion and agreeableness by TA and TIES+DARE."""
    model, tok = tiny_chat_model
    root = tmp_path_factory.mktemp("ray-grid")
    model.save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    gen = torch.Generator().manual_seed(0)
    paths = {}
    for cond in CONDITIONS:
        phi = {n: 0.05 * torch.randn(p.shape, generator=gen)
               for n, p in model.named_parameters()}
        paths[cond] = str(vectors.save_vector(phi, root / f"{cond}.safetensors",
                                              {"condition": cond}))
    profile = get_profile("smoke", model=str(root / "model"), alphas=(1.5,))
    return profile, paths


def never(point):
    raise AssertionError(f"{point} should have come from the Ray run's cache")


def local_table(sweep, profile, vecs, home, monkeypatch) -> pd.DataFrame:
    """The local driver's table, computed from scratch in its own artifacts dir."""
    monkeypatch.setenv("PVUTILS_HOME", str(home))
    return sweep(models.load_model(profile.model), models.load_tokenizer(profile.model), vecs,
                 profile)


def test_rq1_on_ray_is_the_local_table_and_cache(local_ray, grid_inputs, tmp_path, monkeypatch):
    profile, vecs = grid_inputs
    local = local_table(plans.vector_sweep, profile, vecs, tmp_path / "local", monkeypatch)
    plan = plans.rq1_plan(profile, vecs)
    # a killed grid resumes: a point already cached (here, the local one) is not sent again
    monkeypatch.setenv("PVUTILS_HOME", str(tmp_path / "ray"))
    kept, *computed = distributed.point_files(plan, profile, vecs)
    kept.parent.mkdir(parents=True)
    kept.write_text((tmp_path / "local" / kept.relative_to(tmp_path / "ray")).read_text())
    before = kept.stat().st_ino, kept.stat().st_mtime_ns
    on_ray = distributed.rq1_grid(profile, vecs, num_workers=1)
    assert (kept.stat().st_ino, kept.stat().st_mtime_ns) == before  # never rewritten
    assert all(f.exists() for f in computed)
    assert len(on_ray) == 2 + len(CONDITIONS)  # the base once per trait, one alpha
    assert on_ray["score"].nunique() > 2  # the vectors do move the scores
    pd.testing.assert_frame_equal(on_ray, local, rtol=1e-6)
    pd.testing.assert_frame_equal(sweeps.run_sweep(plan, profile, never, inputs=vecs), local,
                                  rtol=1e-6)


def test_rq2_on_ray_is_the_local_table_and_cache(local_ray, grid_inputs, tmp_path, monkeypatch):
    profile, vecs = grid_inputs  # TIES+DARE: random masks, seeded per tensor name
    local = local_table(plans.composition_sweep, profile, vecs, tmp_path / "local",
                        monkeypatch)
    monkeypatch.setenv("PVUTILS_HOME", str(tmp_path / "ray"))
    on_ray = distributed.rq2_grid(profile, vecs, num_workers=1)
    assert len(on_ray) == 2 * 4  # two methods x one alpha x 2^2 profiles
    pd.testing.assert_frame_equal(on_ray, local, rtol=1e-6)
    pd.testing.assert_frame_equal(
        sweeps.run_sweep(plans.composition_plan(profile), profile, never, inputs=vecs), local,
        rtol=1e-6)


def test_an_evaluator_ships_names_not_a_loaded_model(grid_inputs):
    profile, vecs = grid_inputs
    evaluate = distributed.ContrastPoint(plans.RQ1.view(profile), vecs)
    evaluate.loaded()
    shipped = pickle.loads(pickle.dumps(evaluate))
    assert shipped._loaded is None and shipped.profile == profile


def test_interviews_on_ray_are_the_local_table_and_cache(local_ray, grid_inputs, tmp_path,
                                                          monkeypatch):
    """RQ1's interview grid (sampled answers, the persona judge) on Ray: the local sweep's
    rows, scores and analyses, in the files the local sweep reads."""
    profile, vecs = grid_inputs
    profile = profile.replace(interview_alphas=(1.5,))
    judges = ["persona"]
    local = local_table(lambda m, t, v, p: plans.interview_sweep(m, t, v, p, judges), profile,
                        vecs, tmp_path / "local", monkeypatch)
    monkeypatch.setenv("PVUTILS_HOME", str(tmp_path / "ray"))
    on_ray = distributed.interview_grid(profile, vecs, num_workers=1, judges=judges)
    assert len(on_ray) == 2 + len(CONDITIONS)  # the base once per trait, one alpha, one judge
    assert on_ray["score"].nunique() > 1
    pd.testing.assert_frame_equal(on_ray, local, rtol=1e-6)
    plan = plans.interview_plan(profile, vecs, judges)
    assert all(f.exists() for f in distributed.point_files(plan, profile, vecs))
    pd.testing.assert_frame_equal(sweeps.run_sweep(plan, profile, never, inputs=vecs), local,
                                  rtol=1e-6)


def test_an_interview_evaluator_ships_no_judges(grid_inputs):
    profile, vecs = grid_inputs
    evaluate = distributed.InterviewPoint(plans.RQ1_INTERVIEW.view(profile), vecs,
                                          judges=("persona",))
    evaluate._judges["persona"] = object()  # what a worker holds after its first point
    shipped = pickle.loads(pickle.dumps(evaluate))
    assert shipped._judges == {} and shipped._loaded is None
    assert shipped.judges == ("persona",) and shipped.profile == profile


def test_the_interview_evaluator_gives_the_local_sweeps_rows(grid_inputs, tmp_path,
                                                             monkeypatch):
    """The evaluator each Ray actor runs, called here in-process point by point: the rows
    the local interview sweep caches for the same points (no Ray needed)."""
    profile, vecs = grid_inputs
    profile = profile.replace(interview_alphas=(1.5,))
    local = local_table(lambda m, t, v, p: plans.interview_sweep(m, t, v, p, ["persona"]),
                        profile, vecs, tmp_path / "local", monkeypatch)
    _, points, _ = plans.interview_plan(profile, vecs, ["persona"])
    evaluate = distributed.InterviewPoint(plans.RQ1_INTERVIEW.view(profile), vecs,
                                          judges=("persona",))
    rows = [{**{k: v for k, v in p.items() if not k.startswith("_")}, **r}
            for p in points for r in evaluate(p)]
    pd.testing.assert_frame_equal(pd.DataFrame(rows), local, rtol=1e-6)
