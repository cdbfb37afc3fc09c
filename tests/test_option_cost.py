"""``python -m research bench --options``: every row of the cost table builds and times its step (issue 21)."""
import math

import numpy as np
import pytest
import torch

from models import build_segmenter
from research import option_cost
from research.bench import BenchSetup, measure
from research.cli import main
from wilss.config import UpdateConfig
from wilss.masked_update import MaskedUpdate
from wilss.runtime import PLAIN

CFG = UpdateConfig(epochs=3, warmup_epochs=1, batch_size=4, crop_size=32, localizer_channels=8)


@pytest.fixture(scope="module")
def base(tagged_world32):
    torch.manual_seed(0)
    model = build_segmenter(arch="tiny", num_classes=3, width=8, head_channels=16).eval()
    return BenchSetup("test", "tiny, 32 px", model, tagged_world32, 1, CFG)


@pytest.mark.parametrize("row", list(option_cost.ROWS))
def test_every_row_times_its_own_step(base, row):
    setup = option_cost.row_setup(row, base, replay_steps=1)
    m = measure(setup, PLAIN, path=row, iterations=2, warmup=0, device="cpu")
    assert len(m.seconds) == 2 and all(s > 0 for s in m.seconds) and m.peak_bytes > 0
    assert (m.replay_seconds > 0) == (row == "hrhf")   # the inversion is timed apart, not as iterations
    if row == "mib":
        assert setup.step is MaskedUpdate and setup.dataset[0][1].shape == (32, 32)
        labels = np.unique(np.concatenate([setup.dataset.load(i)[1].ravel() for i in range(8)]))
        assert set(labels.tolist()) == {0, 3}   # background and the new class (id 3 = num_old)
    options = {"ilt": setup.cfg.output_distillation, "freeze-encoder": setup.cfg.freeze_encoder,
               "slic": setup.cfg.region_prior == "slic", "hrhf": setup.cfg.replay_images}
    assert options.get(row, True)


def test_rows_arg_keeps_the_table_order_and_refuses_unknown_rows():
    assert option_cost.rows_arg("mib, wilss") == ("wilss", "mib")
    for bad in ("wilss,wilss", "mib,unicorn", ""):
        with pytest.raises(Exception, match="--rows takes"):
            option_cost.rows_arg(bad)


def table_rows(text: str) -> dict[str, tuple[float, float]]:
    """Row name -> (ms/iter, peak MiB) of the printed table."""
    rows = {}
    for line in text.splitlines():
        name = line.split(" ", 1)[0]
        if name in option_cost.ROWS or name == "offline-total":
            numbers = line[16 + 45:].split()
            rows[name] = float(numbers[0]), float(numbers[2])
    return rows


@pytest.mark.slow
def test_the_command_prints_one_table_with_a_row_a_process(capsys):
    assert main(["bench", "--options", "--rows", "ilt,wilss", "--iterations", "2", "--warmup", "1",
                 "--batch-size", "2", "--crop-size", "32"]) == 0
    out = capsys.readouterr().out
    rows = table_rows(out)
    assert list(rows) == ["wilss", "ilt"], out
    for ms, mib in rows.values():
        assert math.isfinite(ms) and ms > 0 and math.isfinite(mib) and mib > 0
    assert "x WILSS" in out and "each row in its own process" in out


def test_rows_without_options_are_refused(capsys):
    assert main(["bench", "--rows", "wilss"]) == 2
    assert "give --options with them" in capsys.readouterr().err


def test_every_bench_configuration_has_its_defaults():
    from research.bench import CONFIGS
    from research.cli_perf import DEFAULTS
    assert set(DEFAULTS) == set(CONFIGS)
