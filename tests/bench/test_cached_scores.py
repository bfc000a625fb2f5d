"""``cached_scores``, which every accuracy bench scores its runs with: ``score`` gets the run's evaluations by name,
each equal to the ``run_eval`` it stands for, and a second call reads the cache instead of evaluating again."""

import json
import shutil

import pytest

from ramstrans.bench.demo import cached_scores
from ramstrans.inference.evaluate import run_eval
from ramstrans.registry import EvalRequest


def test_score_gets_the_named_evaluations_and_a_second_call_reads_the_cache(trained, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    out = cached_scores(run, "scores.json", "test", lambda **evals: evals, shift=("blur",))
    ckpt = str(run / "checkpoint.pth")
    expected = {
        name: run_eval(EvalRequest(ckpt, num_workers=0, shift=shift), scales=scales, show_progress=False)
        for name, scales, shift in (("single", 1, ()), ("fused", 2, ()), ("shifted", 1, ("blur",)))
    }
    assert out == expected
    assert (out["shifted"]["shift"], out["fused"]["scales"]) == (["blur"], 2)
    assert json.loads((run / "scores.json").read_text()) == out
    again = cached_scores(run, "scores.json", "test", lambda **_: pytest.fail("a cached run was evaluated again"))
    assert again == out
