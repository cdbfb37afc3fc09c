"""wilss.optim: torch.optim.SGD's step and LambdaLR's poly schedule, bit for bit, without importing torch._dynamo."""
import subprocess
import sys

import pytest
import torch

from wilss.optim import SGD, Adam, PolySchedule

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _net(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                               torch.nn.Conv2d(4, 2, 1))


def _groups(net: torch.nn.Module) -> list[dict]:
    # the second group's last layer gets no gradient in some steps (as a frozen head does in the offline pipeline)
    return [{"params": list(net[0].parameters()) + list(net[1].parameters()), "lr": 0.01},
            {"params": list(net[3].parameters()), "lr": 0.1}]


def _train(net, optimizer, scheduler, steps: int, start: int = 0) -> list[float]:
    lrs = []
    for step in range(start, start + steps):
        torch.manual_seed(100 + step)
        x = torch.randn(2, 3, 8, 8)
        out = net(x)
        loss = out.square().mean() if step % 3 else out[:, :1].mean() + net[0].weight.sum() * 0
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if step % 3 == 0:            # a step where the last layer has no gradient: it and its momentum stay
            for p in net[3].parameters():
                p.grad = None
        optimizer.step()
        scheduler.step()
        lrs.append(optimizer.param_groups[1]["lr"])
    return lrs


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_and_poly_schedule_match_torch_bit_for_bit(nesterov):
    ours, theirs = _net(0), _net(0)
    opt = SGD(_groups(ours), lr=0.01, momentum=0.9, weight_decay=1e-4, nesterov=nesterov)
    ref = torch.optim.SGD(_groups(theirs), lr=0.01, momentum=0.9, weight_decay=1e-4, nesterov=nesterov)
    sched = PolySchedule(opt, total=10, power=0.9, start=3)
    ref_sched = torch.optim.lr_scheduler.LambdaLR(
        ref, lambda it: 1.0 if it < 3 else max(0.0, 1.0 - (it - 3) / 7) ** 0.9)
    assert _train(ours, opt, sched, 10) == _train(theirs, ref, ref_sched, 10)
    for a, b in zip(ours.state_dict().values(), theirs.state_dict().values()):
        assert torch.equal(a, b)
    mine, torchs = opt.state_dict(), ref.state_dict()
    assert mine["state"].keys() == torchs["state"].keys()
    for i in mine["state"]:
        assert torch.equal(mine["state"][i]["momentum_buffer"], torchs["state"][i]["momentum_buffer"])
    assert [g["lr"] for g in mine["param_groups"]] == [g["lr"] for g in torchs["param_groups"]] == [0.0, 0.0]


def test_a_resumed_run_continues_exactly_from_torchs_and_its_own_state():
    """A snapshot written by torch.optim (an earlier version's resume file) and one of ours both resume the run."""
    whole, ref_net = _net(1), _net(1)
    opt = SGD(_groups(whole), lr=0.01, momentum=0.9, weight_decay=1e-4)
    sched = PolySchedule(opt, total=8, power=0.9)
    _train(whole, opt, sched, 8)

    ref = torch.optim.SGD(_groups(ref_net), lr=0.01, momentum=0.9, weight_decay=1e-4)
    ref_sched = torch.optim.lr_scheduler.LambdaLR(ref, lambda it: max(0.0, 1.0 - it / 8) ** 0.9)
    _train(ref_net, ref, ref_sched, 4)
    resumed = _net(2)
    resumed.load_state_dict(ref_net.state_dict())
    opt2 = SGD(_groups(resumed), lr=0.01, momentum=0.9, weight_decay=1e-4)
    sched2 = PolySchedule(opt2, total=8, power=0.9)
    opt2.load_state_dict(ref.state_dict())           # torch's state
    sched2.load_state_dict(ref_sched.state_dict())
    again = SGD(_groups(resumed), lr=0.01, momentum=0.9, weight_decay=1e-4)   # then ours, round-tripped
    again.load_state_dict(opt2.state_dict())
    sched3 = PolySchedule(again, total=8, power=0.9)
    sched3.load_state_dict(sched2.state_dict())
    _train(resumed, again, sched3, 4, start=4)
    for a, b in zip(resumed.state_dict().values(), whole.state_dict().values()):
        assert torch.equal(a, b)


def test_bad_optimiser_input_is_refused():
    net = _net(0)
    with pytest.raises(ValueError, match="more than one"):
        SGD([{"params": list(net.parameters()), "lr": 0.1}, {"params": [net[0].weight], "lr": 0.1}], lr=0.1)
    with pytest.raises(ValueError, match="Nesterov"):
        SGD(_groups(net), lr=0.1, nesterov=True)
    opt = SGD(_groups(net), lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match="other parameter groups"):
        opt.load_state_dict({"state": {}, "param_groups": [{"params": [0], "lr": 0.1}]})


def test_the_gradient_scaler_steps_it():
    net = _net(0)
    opt = SGD(_groups(net), lr=0.1, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    before = net[3].weight.detach().clone()
    scaler.scale(net(torch.randn(2, 3, 8, 8)).square().mean()).backward()
    scaler.step(opt)
    scaler.update()
    assert not torch.equal(before, net[3].weight)
    assert net[3].weight.grad.abs().max() < 100   # unscaled before the step


def test_an_update_never_imports_torch_dynamo():
    """The app's process keeps what an update imports: torch.optim would pull in torch._dynamo (144 MB). SGD and
    its schedule, and HRHF's inversion."""
    code = ("import sys\n"
            "from wilss.engine import make_sgd, poly_schedule\n"
            "from wilss.config import OptimConfig\n"
            "import torch\n"
            "net = torch.nn.Linear(3, 2)\n"
            "opt = make_sgd([{'params': list(net.parameters()), 'lr': 0.1}], OptimConfig())\n"
            "sched = poly_schedule(opt, total=3, power=0.9)\n"
            "for _ in range(3):\n"
            "    opt.zero_grad(); net(torch.randn(4, 3)).sum().backward(); opt.step(); sched.step()\n"
            "from models import build_segmenter\n"
            "from wilss.hrhf import InversionConfig, synthesise\n"
            "model = build_segmenter(arch='tiny', num_classes=3, width=8, head_channels=16).eval()\n"
            "list(synthesise(model, num=2, size=32, classes=[1], steps=2, cfg=InversionConfig(batch_size=2)))\n"
            "print('torch._dynamo' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_adam_matches_torch_bit_for_bit():
    """HRHF's inversion steps images with it."""
    torch.manual_seed(0)
    start = torch.randn(2, 3, 6, 6)
    ours, theirs = start.clone().requires_grad_(True), start.clone().requires_grad_(True)
    opt, ref = Adam([ours], lr=0.05), torch.optim.Adam([theirs], lr=0.05)
    target = torch.randn(2, 3, 6, 6)
    for optimizer, x in ((opt, ours), (ref, theirs)):
        for _ in range(7):
            loss = (x - target).pow(3).abs().mean() + x.sin().sum() * 1e-3
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    assert torch.equal(ours, theirs)
