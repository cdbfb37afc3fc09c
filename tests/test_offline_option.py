"""The offline pipeline as a user's option of the update (``wilss.methods``): through the service (what the app
calls) and ``add-class --method offline``; refused with masks, before anything is written."""
from dataclasses import replace

import pytest
import torch

from wilss import service
from wilss.checkpoint import load_checkpoint
from wilss.cli import build_parser
from wilss.cli_resume import fingerprint
from wilss.cli_update import plan_from_folder
from wilss.data import DataError
from wilss.distributed import World
from wilss.tags import read_tagged_folder
from test_cli import FAST, NEW, make_checkpoint, run, write_tagged
from test_cli_masks import write_masks

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = service.UpdateConfig(epochs=2, warmup_epochs=1, batch_size=4, crop_size=64, localizer_channels=16)


@pytest.fixture
def ckpt(tmp_path):
    return make_checkpoint(tmp_path / "base.pt")


def test_the_service_runs_the_offline_pipeline_as_one_numbered_run(ckpt, tmp_path):
    base = service.load(ckpt)
    request = service.UpdateRequest(base, read_tagged_folder(write_tagged(tmp_path / "images")), [(NEW, "#ff8000")],
                                    TINY, base_name="base.pt", method="offline")
    plan = request.validate()
    assert plan.method == "offline" and "offline pipeline" in plan.describe()
    run_ = service.run_update(plan, device="cpu")
    progress = list(run_)
    # 8 images, batches of 4, 2 epochs: 4 iterations of the localizer, then 4 of MiB, counted as one run of 8
    assert [p.phase for p in progress] == ["warmup"] * 4 + ["mib"] * 4
    assert [p.iteration for p in progress] == list(range(1, 9)) and {p.total_iterations for p in progress} == {8}
    assert set(progress[0].losses) == {"cls", "loc"} and set(progress[-1].losses) == {"ce", "kd"}
    result = run_.checkpoint()
    assert result.class_names == ["background", "disc", "square", NEW] and result.model.activation == "softmax"
    entry = result.history[-1]
    assert entry["method"] == "offline" and entry["classes"] == [NEW] and entry["num_images"] == 8
    assert set(entry["metrics"]) >= {"final_loss_ce", "final_loss_kd", "train_seconds"}
    assert torch.isfinite(result.model(torch.zeros(1, 3, 64, 64))).all()
    assert base.class_names == ["background", "disc", "square"]   # the base is untouched


def test_the_service_refuses_an_unknown_method_and_offline_with_masks(ckpt, tmp_path):
    base = service.load(ckpt)
    tagged = read_tagged_folder(write_tagged(tmp_path / "images"))
    with pytest.raises(DataError, match="Unknown method 'mib'; choose one of wilson, offline"):
        service.UpdateRequest(base, tagged, [(NEW, None)], TINY, method="mib").validate()
    masks = tuple(sorted((tmp_path / "images").glob("*.png")))   # any files: refused before they are read
    with pytest.raises(DataError, match="with pixel masks the step trains MiB"):
        service.UpdateRequest(base, tagged, [(NEW, None)], TINY, masks=masks, method="offline").validate()
    replay = replace(TINY, replay_images=4)
    with pytest.raises(DataError, match="HRHF replay .* not of the offline pipeline"):
        service.UpdateRequest(base, tagged, [(NEW, None)], replay, method="offline").validate()


def test_add_class_method_offline_writes_a_checkpoint_that_names_it(ckpt, tmp_path, capsys):
    out = tmp_path / "new.pt"
    code, stdout, err = run(["add-class", "--checkpoint", ckpt, "--images", write_tagged(tmp_path / "images"),
                             "--class", NEW, "--method", "offline", "--out", out, *FAST], capsys)
    assert code == 0, err
    assert "then as many of MiB on its frozen pseudo-labels (offline pipeline)" in stdout
    result = load_checkpoint(out)
    assert result.class_names[-1] == NEW and result.history[-1]["method"] == "offline"


@pytest.mark.parametrize("extra, words", [
    (["--masks", "masks"], ["--method offline learns from the tags", "leave out one of them"]),
    (["--export-pseudo", "pseudo"], ["nor one with --method offline"]),
])
def test_add_class_refuses_offline_with_masks_or_pseudo_label_pictures(ckpt, tmp_path, capsys, extra, words):
    out = tmp_path / "new.pt"
    write_masks(tmp_path / "masks")
    code, _, err = run(["add-class", "--checkpoint", ckpt, "--images", write_tagged(tmp_path / "images"),
                        "--class", NEW, "--method", "offline", "--out", out, *FAST,
                        *[tmp_path / e if e in ("masks", "pseudo") else e for e in extra]], capsys)
    assert code == 2 and err.startswith("error:") and all(w in err for w in words), err
    assert not out.exists() and not (tmp_path / "pseudo").exists()


def test_an_offline_run_does_not_take_a_wilson_steps_snapshot_for_its_own(ckpt, tmp_path, capsys):
    images = write_tagged(tmp_path / "images")
    argv = ["add-class", "--checkpoint", str(ckpt), "--images", str(images), "--class", NEW, "--out",
            str(tmp_path / "o.pt"), *FAST]
    prints = [fingerprint(plan_from_folder(build_parser().parse_args(argv + extra)), World(), False)
              for extra in ([], ["--method", "offline"])]
    assert "method" not in prints[0] and prints[1] == {**prints[0], "method": "offline"}
