"""The optimised runtime computes the same update as the plain fp32 eager path; the bench reports sane figures."""
import argparse
import json

import numpy as np
import pytest
import torch

from models import build_segmenter
from research.bench import BenchSetup, Measurement, measure
from research.cli import main
from research.cli_perf import format_report, pooled
from wilss.config import UpdateConfig
from wilss.runtime import PLAIN, Precision, RuntimeConfig, optimised, resolve_dtype
from wilss.trainer import WeakUpdate
from wilss.training_data import TagDataset

CFG = UpdateConfig(epochs=3, warmup_epochs=1, batch_size=4, crop_size=32, localizer_channels=8)


@pytest.fixture(scope="module")
def dataset(tagged_world32):
    return tagged_world32


def losses_of(dataset, runtime, cfg=CFG):
    torch.manual_seed(0)
    base = build_segmenter(arch="tiny", num_classes=3, width=8, head_channels=16).eval()
    update = WeakUpdate(base, dataset, num_new=1, cfg=cfg, device="cpu", runtime=runtime)
    return [p.losses for p in update.run()], update


def test_optimised_cpu_path_matches_plain_fp32(dataset):
    plain, plain_update = losses_of(dataset, PLAIN)
    fast, fast_update = losses_of(dataset, optimised(torch.device("cpu")))
    assert fast_update.precision.dtype == torch.float32  # CPU: channels-last and inference_mode, no autocast
    assert [set(p) for p in fast] == [set(p) for p in plain] and len(plain) == 6
    for a, b in zip(plain, fast):  # six SGD steps: only float summation order differs
        for name in a:
            assert b[name] == pytest.approx(a[name], rel=1e-4, abs=1e-5), name
    for (name, p), q in zip(plain_update.model.state_dict().items(), fast_update.model.state_dict().values()):
        assert torch.allclose(p.float(), q.float(), rtol=1e-3, atol=1e-4), name
        assert q.is_contiguous()  # the result is handed back in the ordinary memory format


def test_bf16_autocast_path_runs_and_stays_close(dataset):
    """The CUDA recipe (autocast, old model in reduced precision) exercised on CPU with bf16, for two iterations."""
    cfg = UpdateConfig(epochs=2, warmup_epochs=1, batch_size=4, crop_size=32, localizer_channels=8)
    four = TagDataset(dataset.images[:4], dataset.targets[:4])  # one batch an epoch: two iterations in all
    plain, _ = losses_of(four, PLAIN, cfg)
    half, update = losses_of(four, RuntimeConfig(precision="bf16"), cfg)
    assert [set(p) for p in half] == [{"cls", "loc"}, {"cls", "loc", "seg"}]
    assert update.precision.dtype == torch.bfloat16 and update.precision.scaler is None
    for name, value in plain[0].items():  # the first iteration, before the paths' weights diverge
        assert half[0][name] == pytest.approx(value, rel=0.02, abs=0.01), name


def test_precision_resolution_and_fp16_scaler():
    cpu = torch.device("cpu")
    assert resolve_dtype("auto", cpu) == torch.float32
    assert resolve_dtype("fp16", cpu) == torch.float16 and resolve_dtype("fp32", cpu) == torch.float32
    assert Precision(RuntimeConfig(precision="fp16"), cpu).scaler is not None
    assert Precision(PLAIN, cpu).memory_format == torch.contiguous_format
    with pytest.raises(ValueError, match="precision"):
        RuntimeConfig(precision="int8")


def test_measure_counts_flops_and_times(dataset):
    torch.manual_seed(0)
    base = build_segmenter(arch="tiny", num_classes=3, width=8, head_channels=16).eval()
    setup = BenchSetup("t", "tiny", base, dataset, 1, CFG)
    m = measure(setup, PLAIN, path="plain", iterations=2, warmup=1, device="cpu", count_flops=True)
    assert len(m.seconds) == 2 and m.images_per_s > 0 and m.peak_bytes > 2**20
    # one iteration of this 8-image, 32 px setup is a few tens of MFLOP (old + new network, localizer, backward)
    assert 1e7 < m.flops < 1e9


def test_bench_cli_rejects_json_without_path(capsys):
    assert main(["bench", "--json"]) == 2
    assert "--path" in capsys.readouterr().err


def test_bench_one_path_as_json_on_the_demo(capsys):
    """The child process's job (cpu-default, shrunk to 4 images of 32 px): one JSON line with the figures."""
    assert main(["bench", "--path", "plain", "--json", "--iterations", "2", "--warmup", "0",
                 "--batch-size", "4", "--crop-size", "32"]) == 0
    values = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert values["path"] == "plain" and values["device"] == "cpu" and values["dtype"] == "float32"
    assert len(values["seconds"]) == 2 and values["batch_size"] == 4
    assert values["runtime"]["channels_last"] is False and values["flops"] > 1e8


@pytest.mark.parametrize("config", ["cpu-camvid", "cpu-camvid-tiny"])
def test_bench_camvid_configurations_run(capsys, config):
    """Both CamVid configurations build their network and step it (they once failed on a missing recipe)."""
    assert main(["bench", "--config", config, "--path", "plain", "--json", "--iterations", "1", "--warmup", "0",
                 "--batch-size", "2", "--crop-size", "32"]) == 0
    values = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert values["path"] == "plain" and len(values["seconds"]) == 1 and values["flops"] > 0


def test_report_pools_rounds_and_prints_the_ratio():
    def m(path, seconds, flops=None):
        return Measurement(path=path, runtime={"precision": "auto", "channels_last": path == "optimised",
                                               "compile": False, "num_workers": 8}, dtype="bfloat16",
                           device="cuda:0", batch_size=24, seconds=seconds, peak_bytes=2**30,
                           peak_kind="GPU max allocated", flops=flops)
    plain = pooled([m("plain", (0.4, 0.5), 1e14), m("plain", (0.6,))])
    fast = pooled([m("optimised", (0.2,)), m("optimised", (0.25, 0.3))])
    assert plain.seconds == (0.4, 0.5, 0.6) and plain.flops == 1e14 and fast.median_s == 0.25
    args = argparse.Namespace(config="gpu-r101", iterations=1, warmup=0, rounds=2, timing="processes")
    text = format_report(args, "r101", [fast, plain], 800.0)
    assert "speed-up of the optimised path (plain ms/iter / optimised ms/iter): 2.00x" in text
    assert "50.0%" in text  # 1e14 FLOP in 0.25 s = 400 TFLOP/s = 50 % of 800


@pytest.mark.filterwarnings("ignore:Detected call of:UserWarning")  # the scaler skipped a step
def test_fp16_path_scales_the_loss_and_skips_overflowing_steps(dataset):
    """The fp16 + GradScaler recipe (CUDA without bf16) exercised on CPU: the first step overflows at the initial
    scale 65536 and is skipped (weights unchanged, so iteration 2's l_CLS repeats iteration 1's); training goes on."""
    cfg = UpdateConfig(epochs=3, warmup_epochs=1, batch_size=4, crop_size=32, localizer_channels=8)
    four = TagDataset(dataset.images[:4], dataset.targets[:4])
    losses, update = losses_of(four, RuntimeConfig(precision="fp16"), cfg)
    assert update.precision.dtype == torch.float16 and update.precision.scaler.get_scale() < 65536.0
    assert len(losses) == 3 and all(np.isfinite(v) for p in losses for v in p.values())
    assert losses[1]["cls"] == losses[0]["cls"] and losses[2]["cls"] != losses[1]["cls"]
