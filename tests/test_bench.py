"""scripts/bench.py end to end on a tiny Glow: each phase in its own process, one JSON line."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "scripts" / "bench.py"
TINY = ["--config", "quickstart.yaml", "--set", "model.glow.levels=2", "--set", "model.glow.steps=1",
        "--set", "model.glow.hidden=8", "--batch", "4", "--repeats", "1", "--warmup", "1",
        "--min-time", "0", "--device", "cpu", "--threads", "1"]


def bench(*extra: str) -> dict:
    proc = subprocess.run([sys.executable, str(BENCH), *TINY, *extra], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])  # the last line is the JSON report
    assert "train images/s" in proc.stdout  # and the table came before it
    return report


def check_figures(r: dict) -> None:
    for key in ("train_images_per_s", "sample_images_per_s", "params", "forward_flops_per_image",
                "sample_flops_per_image", "train_peak_mem_mib", "sample_peak_mem_mib"):
        assert r[key] > 0, key
    assert r["train_peak_mem_mib"] >= r["train_base_mem_mib"]
    assert r["level_shapes"] == [[4, 4, 4], [8, 2, 2]]  # 1x8x8 squeezed, split, squeezed again


def test_bench_reports_nfgen_figures_as_one_json_line(tmp_path):
    out = tmp_path / "bench.json"
    r = bench("--json-out", str(out), "--rounds", "2")
    assert json.loads(out.read_text()) == r
    assert len(r["nfgen"]["train_images_per_s_repeats"]) == 2  # one repeat per round, pooled
    assert {k: r["shape"][k] for k in ("arch", "levels", "steps", "hidden", "image_shape", "batch", "n_bits",
                                        "coupling", "permutation")} == {
        "arch": "glow", "levels": 2, "steps": 1, "hidden": 8, "image_shape": [1, 8, 8], "batch": 4, "n_bits": 5,
        "coupling": "affine", "permutation": "conv1x1_lu"}
    assert r["normflows"] is None and r["ratios"] is None and r["threads"] == 1
    check_figures(r["nfgen"])
    assert r["nfgen"]["mem_kind"] == "rss"
    assert r["nfgen"]["train_saved_activations_mib"] > 0 and r["nfgen"]["train_updates_skipped"] == 0


def test_bench_compares_with_normflows_at_the_same_shape():
    pytest.importorskip("normflows")
    r = bench("--compare-normflows")
    check_figures(r["nfgen"])
    check_figures(r["normflows"])
    assert r["ratios"]["train_images_per_s"] == pytest.approx(
        r["nfgen"]["train_images_per_s"] / r["normflows"]["train_images_per_s"])


def test_bench_profiles_the_training_step_on_request():
    proc = subprocess.run([sys.executable, str(BENCH), *TINY, "--profile"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "profile of 5 nfgen training steps" in proc.stderr and "aten::" in proc.stderr


def test_flop_count_matches_torch_and_survives_a_denoising_step():
    """bench's FLOP counter counts what torch's FlopCounterMode counts, and also counts a
    generation-mode model's sampling, whose denoising step takes autograd.grad (which
    FlopCounterMode's module tracker refuses)."""
    import importlib.util

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from nfgen import build_model, load_config

    spec = importlib.util.spec_from_file_location("bench", BENCH)
    bench_module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(BENCH.parent))
    try:
        spec.loader.exec_module(bench_module)
    finally:
        sys.path.remove(str(BENCH.parent))
    a, b = torch.randn(3, 5), torch.randn(5, 7)
    with FlopCounterMode(display=False) as reference:
        a @ b
    with bench_module.FlopCount() as ours:
        a @ b
    assert ours.total == reference.get_total_flops() == 2 * 3 * 5 * 7
    cfg = load_config("tarflow_mnist_gen_cpu.yaml", ["data.dataset=folder", "data.labels=true", "model.image_shape=[1,8,8]",
                                                     "model.tarflow.width=8",
                                                     "model.tarflow.heads=1", "model.tarflow.blocks=1",
                                                     "model.tarflow.layers=1"])
    model = build_model(cfg).eval()
    labels = torch.zeros(2, dtype=torch.long)
    forward = bench_module.flops_per_image(lambda: model.log_density(torch.rand(2, 1, 8, 8), model.context(labels, 2)), 2)
    sampling = bench_module.flops_per_image(lambda: model.sample(2, labels=labels), 2)
    assert sampling > 2 * forward > 0  # an inverse pass, then a forward and a backward to denoise
