"""The Ray sweep on a local Ray instance: the same table and the same cache as the local loop."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from pvutils import analysis, distributed, vectors
from pvutils.profiles import get_profile

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
    """A tiny random Llama with the ChatML tokenizer on disk, and four random vectors."""
    model, tok = tiny_chat_model
    root = tmp_path_factory.mktemp("ray-grid")
    model.save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    gen = torch.Generator().manual_seed(0)
    paths = {}
    for cond in CONDITIONS:
        phi = {n: 0.05 * torch.randn(p.shape, generator=gen)
               for n, p in model.named_parameters()}
        paths[cond] = vectors.save_vector(phi, root / f"{cond}.safetensors", {"condition": cond})
    return root / "model", {c: str(p) for c, p in paths.items()}


def local_model(model_dir):
    from pvutils import models

    return models.load_model(model_dir), models.load_tokenizer(model_dir)


def test_rq1_on_ray_gives_the_local_table_and_cache(local_ray, grid_inputs, tmp_path):
    model_dir, vecs = grid_inputs
    alphas = [1.5]
    local = analysis.vector_sweep(*local_model(model_dir), vecs, alphas, n_pairs=1)
    cache = tmp_path / "rq1.json"
    evaluate = distributed.ContrastPoint(str(model_dir), vecs, n_pairs=1)
    on_ray = distributed.run_sweep_ray(distributed.vector_points(vecs, alphas), evaluate, cache,
                                       num_workers=1)
    assert len(on_ray) == 2 + len(CONDITIONS) * len(alphas)  # the base once per trait
    pd.testing.assert_frame_equal(on_ray, local, rtol=1e-6)
    assert on_ray["score"].nunique() > 2  # the vectors do move the scores

    def never(point):
        raise AssertionError(f"{point} should have come from the Ray run's cache")

    pd.testing.assert_frame_equal(analysis.run_sweep(distributed.vector_points(vecs, alphas),
                                                     never, cache), local, rtol=1e-6)


def test_rq2_on_ray_gives_the_local_table(local_ray, grid_inputs):
    model_dir, vecs = grid_inputs
    # TIES+DARE: random masks (seeded per tensor name, so equal in every worker) and TIES
    methods = analysis.merge_methods(get_profile("smoke", composition_methods=["TIES+DARE"]))
    profiles = analysis.trait_profiles(["extraversion", "agreeableness"])
    local = analysis.composition_sweep(*local_model(model_dir), vecs, profiles, [0.3], methods,
                                       n_pairs=1)
    evaluate = distributed.CompositionPoint(str(model_dir), vecs, n_pairs=1, profiles=profiles,
                                            methods=methods)
    rows = distributed.run_points(distributed.composition_points(profiles, [0.3], methods),
                                  evaluate, num_workers=1)
    assert len(rows) == len(methods) * len(profiles)
    pd.testing.assert_frame_equal(pd.DataFrame(rows), local, rtol=1e-6)


def test_an_evaluator_ships_names_not_a_loaded_model(grid_inputs):
    import pickle

    model_dir, vecs = grid_inputs
    evaluate = distributed.ContrastPoint(str(model_dir), vecs, n_pairs=1)
    evaluate.loaded()
    assert pickle.loads(pickle.dumps(evaluate))._loaded is None
