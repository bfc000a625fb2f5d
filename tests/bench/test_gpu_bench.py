"""``ramstrans bench gpu``: the GPU benchmark's code runs end to end at the tiny size on the CPU (every row present,
ratios finite), a run cut by its budget keeps the rows it finished, and the sync counter counts a deliberate host read
(on CUDA only)."""

import json
import math

import pytest
import torch

from ramstrans.bench import gpu
from ramstrans.cli import main

ROWS = ["train_batch2", "inference_batch2", "syncs", "compile_and_checkpointing", "proposal", "loader", "onnxruntime"]


def test_tiny_cpu_run_has_every_row_with_finite_ratios(tmp_path, capsys):
    out = tmp_path / "gpu.json"
    assert main(["bench", "gpu", "--device", "cpu", "--tiny", "--train-check", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert list(r["rows"]) == [*ROWS, "train_check"]
    assert not [k for k, v in r["rows"].items() if "error" in v or "skipped" in v]
    train = r["rows"]["train_batch2"]
    assert all(math.isfinite(train[k]) and train[k] > 0 for k in ("single_over_timm", "two_scale_over_two_timm"))
    assert math.isfinite(r["rows"]["proposal"]["speedup"]) and r["rows"]["syncs"]["syncs_per_two_scale_step"] is None
    assert r["rows"]["train_check"]["pass"] is True
    assert r["rows"]["train_check"]["items"]["resume_and_extend"]["final_step"] == 6
    assert r["environment"]["torch"] == torch.__version__ and r["command"].startswith("ramstrans bench gpu")


def test_a_run_cut_by_its_budget_keeps_its_finished_rows(tmp_path, monkeypatch):
    # a clock that passes the budget once the first row has been measured
    ticks = iter([0.0, 0.0, 0.0, 0.5, 10.0] + [100.0] * 50)
    monkeypatch.setattr(gpu, "_clock", lambda: next(ticks))
    r = gpu.bench_gpu("cpu", budget_s=5.0, out=str(tmp_path / "cut.json"), tiny=True)
    stored = json.loads((tmp_path / "cut.json").read_text())
    assert stored["rows"] == r["rows"]  # the file holds what the run returned, row by row
    assert "images_per_s" in r["rows"]["train_batch2"]
    assert all("budget" in r["rows"][k]["skipped"] for k in ROWS[1:])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the sync debug mode exists on CUDA only")
def test_the_sync_counter_counts_a_deliberate_host_read():
    x = torch.ones(4, device="cuda")
    assert gpu.count_syncs(lambda: (x * 2).sum(), torch.device("cuda")) == 0
    assert gpu.count_syncs(lambda: (x * 2).sum().item(), torch.device("cuda")) == 1


def test_bench_gpu_without_cuda_is_one_sentence(capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert main(["bench", "gpu"]) == 2
    assert "no CUDA device here" in capsys.readouterr().err
