"""What the app keeps of a finished update (issue 20: the app's memory under load): what the Review tab reads, no
optimiser, no gradients, no decoded training images; and nothing of the training once its session is idle."""
import gc
import weakref

import pytest

from app.session import AppConfig
from research.app_testing import tiny_checkpoint
from wilss import trainer

from tests.test_app_logic import tagged_upload

SMALL = dict(epochs=2, warmup_epochs=1, batch_size=4, crop_size=32, localizer_channels=8)


def add_args(name: str):
    from app.update import ADVANCED
    from wilss.recipes import DEMO_UPDATE

    return (name, "", "", "#ff8000", "#400000", "#c00000", [],
            *[SMALL.get(field, getattr(DEMO_UPDATE, field)) for field, *_ in ADVANCED])


@pytest.fixture
def page(tmp_path, monkeypatch):
    from app.handlers import Handlers
    from app.update_handlers import UpdateHandlers

    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "cache"))
    handlers = Handlers(AppConfig(workdir=tmp_path / "work", checkpoint=tiny_checkpoint(tmp_path / "base.pt"),
                                  live_every_s=0.0))
    return handlers, UpdateHandlers(handlers)


def test_a_finished_update_keeps_what_review_reads_and_lets_the_rest_go(page, tmp_path, monkeypatch, one_thread):
    handlers, u = page
    optimizers = []
    make_sgd = trainer.make_sgd

    def recorded(*args, **kwargs):
        optimizer = make_sgd(*args, **kwargs)
        optimizers.append(weakref.ref(optimizer))
        return optimizer

    monkeypatch.setattr(trainer, "make_sgd", recorded)
    from app import update_handlers
    trims = []
    monkeypatch.setattr(update_handlers, "release_memory", lambda: trims.append(1) or True)
    files, tags = tagged_upload(tmp_path / "up", ["arrow", "arrow;disc", "", "disc"] * 2)
    assert handlers.bring_data(None, files, tags)[0].startswith("**Done:**")
    outs = list(u.add_classes(None, *add_args("arrow")))
    s = handlers.session(None)
    job = s.last_update
    assert job is not None and job.saved_as == "v001" == s.current.name, outs[-1][1]
    assert trims == [1]                                                     # freed memory handed back, once

    gc.collect()
    assert optimizers and all(ref() is None for ref in optimizers)          # no optimiser state survives
    update = job.update                                                     # Review reads the update's state
    assert all(p.grad is None for p in [*update.model.parameters(), *update.localizer.parameters()])
    assert job.runner.dataset._cached == {}                                 # decoded images are read again
    gallery, info, *_ = u.review_page(None, 1, [])
    assert info.startswith("Page 1/") and gallery.value
    assert isinstance(s.review_view[0], list)                               # the page keeps names, not the job
    assert update.old_model is job.plan.base.model                          # one copy of the base, not two
    assert not update.old_model.training

    held = [weakref.ref(m) for m in (update.model, update.localizer, job.plan.base.model)]
    del update, gallery
    s.unload()                                                              # an idle session (SessionStore)
    gc.collect()
    assert job.update is None and job.runner is None
    assert all(ref() is None for ref in held)                               # its models and its base are freed
    _, info, *_ = u.review_page(None, 1, [])
    assert "re-run it" in info
    assert s.ckpt.class_names[-1] == "arrow"                                # the result itself is kept, on disk
    assert job.base_file == s.version("v000").path                          # the base, read again when asked for
    assert job.plan.base.class_names == s.version("v000").class_names
    outs = list(u.rerun(None, [job.names[0]]))                              # a re-run still starts from it
    assert s.current.name == "v002" and s.current.parent == "v000", outs[-1]


def test_an_update_without_review_pages_keeps_no_training(page, tmp_path):
    from app.update import UpdateJob

    handlers, _ = page
    job = UpdateJob.__new__(UpdateJob)   # a finished job whose method shows no pseudo-labels
    job.state, job.update, job.runner = "done", object(), object()
    job._plan, job.base_file = type("Plan", (), {"method": "mib"})(), None
    job.release()
    assert job.update is None and job.runner is None


def test_sessions_on_the_same_model_share_one_copy_of_it(page, tmp_path):
    """Every session opens on its own copy of the default model's file; in memory they are one network, and an
    update of one session changes nothing of the others'."""
    from types import SimpleNamespace

    import torch

    from app.session_files import SharedVersions
    from wilss.checkpoint import CheckpointError

    handlers, u = page
    first, second = (handlers.session(SimpleNamespace(session_hash=h)) for h in ("page-a", "page-b"))
    assert first.current.path != second.current.path                        # two files ...
    assert first.ckpt is second.ckpt                                         # ... one network in memory
    before = {k: v.clone() for k, v in second.ckpt.model.state_dict().items()}

    files, tags = tagged_upload(tmp_path / "up", ["arrow", "arrow;disc", "", "disc"] * 2)
    assert handlers.bring_data(None, files, tags)[0].startswith("**Done:**")
    list(u.add_classes(None, *add_args("arrow")))
    local = handlers.session(None)
    assert local.current.name == "v001" and local.ckpt is not second.ckpt
    assert local.last_update.plan.base is second.ckpt                        # its base is the shared one too
    after = second.ckpt.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)             # the update trained a copy
    assert local.rollback("v000") and local.ckpt is second.ckpt

    versions = SharedVersions()   # held weakly: a network no session holds is freed
    ckpt = versions.read(first.current.path)
    ref = weakref.ref(ckpt.model)
    assert versions.read(second.current.path) is ckpt
    del ckpt
    gc.collect()
    assert ref() is None
    with pytest.raises(CheckpointError, match="does not exist"):
        versions.read(tmp_path / "missing.pt")
