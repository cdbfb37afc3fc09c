"""The app process under load (issue 20's stress figures): a client that goes away mid-request is one log line, idle
sessions do not each keep a model in memory, and freed memory can be handed back."""
import asyncio
import logging
import threading
import time

import pytest
from starlette.requests import ClientDisconnect

import app.session as session_module
from app import serving
from app.serving import QuietDisconnects, ReleaseWhenQuiet, limit_arenas, release_memory
from app.session import AppConfig, SessionStore
from research.app_testing import tiny_checkpoint


def test_a_client_gone_during_its_upload_is_one_log_line_not_a_traceback(caplog):
    async def upload(scope, receive, send):   # what gradio's upload route does when the client hangs up
        raise ClientDisconnect()

    async def fine(scope, receive, send):
        await send({"type": "http.response.start", "status": 200})

    sent = []

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/gradio_api/upload", "client": ("127.0.0.1", 5000)}
    with caplog.at_level(logging.WARNING, logger="app.serving"):
        asyncio.run(QuietDisconnects(upload)(scope, None, send))
    assert len(caplog.records) == 1 and caplog.records[0].exc_info is None
    assert "127.0.0.1:5000 went away during POST /gradio_api/upload" in caplog.text
    asyncio.run(QuietDisconnects(fine)(scope, None, send))
    assert sent == [{"type": "http.response.start", "status": 200}]

    async def broken(scope, receive, send):
        raise RuntimeError("a real error")

    with pytest.raises(RuntimeError):                 # anything else still reaches the server's error handling
        asyncio.run(QuietDisconnects(broken)(scope, None, send))


def test_a_frame_deleted_before_its_read_is_a_404_not_a_traceback(caplog, tmp_path):
    """Under load a lagging client asked for a live-gallery frame that FrameStore had already deleted: starlette's
    file response raised FileNotFoundError between gradio's check and the read (2 tracebacks in the stress log)."""
    gone = tmp_path / "live" / "000006" / "005.png"

    async def file_route(scope, receive, send):   # what starlette's FileResponse does when the file went away
        open(gone, "rb")

    sent = []

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": "/gradio_api/file=" + str(gone), "client": ("127.0.0.1", 1)}
    with caplog.at_level(logging.WARNING, logger="app.serving"):
        asyncio.run(QuietDisconnects(file_route)(scope, None, send))
    assert [m.get("status") for m in sent if m["type"] == "http.response.start"] == [404]
    assert len(caplog.records) == 1 and caplog.records[0].exc_info is None and "the file is gone" in caplog.text
    assert str(tmp_path) not in sent[-1]["body"].decode()    # the message names no server path

    async def half_sent(scope, receive, send):      # once the answer has started, the error is a real one
        await send({"type": "http.response.start", "status": 200})
        open(gone, "rb")

    with pytest.raises(FileNotFoundError):
        asyncio.run(QuietDisconnects(half_sent)(scope, None, send))


def test_only_the_most_recently_used_sessions_keep_their_model_loaded(tmp_path):
    base = tiny_checkpoint(tmp_path / "base.pt")
    setup = lambda s: s.add_file(base, "loaded base.pt", setup=True)  # noqa: E731
    store = SessionStore(AppConfig(workdir=tmp_path / "work", checkpoint=base), setup=setup, loaded=2)
    a, b, c = store.get("a"), store.get("b"), store.get("c")
    assert a._ckpt is None and b._ckpt is not None and c._ckpt is not None   # a: least recently used
    store.get("a")
    assert b._ckpt is None and a.ckpt.class_names == c.ckpt.class_names       # read back from its file on use
    assert [v.name for v in a.versions] == ["v000"]


def test_memory_can_be_handed_back():
    assert isinstance(limit_arenas(), bool) and isinstance(release_memory(), bool)   # False off glibc


def test_handing_memory_back_is_a_no_op_without_glibc(monkeypatch):
    monkeypatch.setattr(serving.ctypes.util, "find_library", lambda name: None)   # no C library found (not Linux)
    serving._libc.cache_clear()
    try:
        assert release_memory() is False and limit_arenas() is False
    finally:
        serving._libc.cache_clear()


def test_sessions_that_let_their_model_go_hand_the_memory_back(tmp_path, monkeypatch):
    base = tiny_checkpoint(tmp_path / "base.pt")
    setup = lambda s: s.add_file(base, "loaded base.pt", setup=True)  # noqa: E731
    store = SessionStore(AppConfig(workdir=tmp_path / "work", checkpoint=base), setup=setup, loaded=2)
    trims = []
    monkeypatch.setattr(session_module, "release_memory", lambda: trims.append(1) or True)
    store.get("a"), store.get("b")
    assert trims == []                              # both fit: nothing let go
    store.get("c")
    assert len(trims) == 1                          # a's model was let go: handed back once
    store.get("c"), store.get("b")
    assert len(trims) == 1                          # a holds nothing now: no trim on every request


def test_release_when_quiet_trims_once_after_a_burst_and_regularly_under_a_steady_stream():
    calls = []
    later = ReleaseWhenQuiet(quiet_s=0.05, every_s=60.0, release=lambda: calls.append(time.monotonic()))
    for _ in range(20):   # a burst of predicts: nothing yet, one trim once they pause
        later()
    assert calls == []
    time.sleep(0.4)
    assert len(calls) == 1
    steady = ReleaseWhenQuiet(quiet_s=30.0, every_s=0.1, release=lambda: calls.append(time.monotonic()))
    end = time.monotonic() + 0.45
    while time.monotonic() < end:   # never a pause of quiet_s: trimmed at once every every_s all the same
        steady()
        time.sleep(0.01)
    assert 3 <= len(calls) - 1 <= 6
    steady._timer.cancel()


def test_gradio_keeps_state_for_no_more_sessions_than_the_app(tmp_path, monkeypatch):
    """Gradio copies every component's config into each session's state and by default keeps 10,000 sessions (about
    0.3 MB each for this page: 3 GB); the app caps it at its own session capacity."""
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "work" / "cache"))
    import gradio as gr
    from gradio.state_holder import StateHolder

    from app import ui

    launched = {}
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kwargs: launched.update(kwargs))
    config = AppConfig(workdir=tmp_path / "work", checkpoint=tiny_checkpoint(tmp_path / "base.pt"))
    demo, handlers = ui.launch(config, block=False, quiet=True)
    capacity = handlers.store.capacity
    assert launched["state_session_capacity"] == capacity < 10_000
    demo.state_session_capacity = capacity   # what gradio's launch does with it, then its state holder reads it
    holder = StateHolder()
    holder.set_blocks(demo)
    for i in range(capacity + 10):
        holder[f"client-{i}"]
    assert len(holder.session_data) == capacity and "client-0" not in holder.session_data


def test_heavy_work_runs_on_one_thread_one_piece_at_a_time():
    from concurrent.futures import ThreadPoolExecutor

    from app.serving import ComputeThread

    compute = ComputeThread()
    running, most, threads = [0], [0], set()
    lock = threading.Lock()

    def work(i):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        threads.add(threading.get_ident())
        time.sleep(0.01)
        with lock:
            running[0] -= 1
        return i * i

    with ThreadPoolExecutor(8) as callers:   # as gradio's worker threads would
        results = list(callers.map(lambda i: compute.call(work, i), range(24)))
    assert results == [i * i for i in range(24)]
    assert len(threads) == 1 and threading.get_ident() not in threads and most[0] == 1

    assert compute.call(lambda: compute.call(lambda: 7)) == 7   # a call from the thread itself runs at once
    with pytest.raises(ZeroDivisionError):                       # its exceptions reach the caller
        compute.call(lambda: 1 / 0)

    def ticks():
        for i in range(3):
            yield threading.get_ident(), i

    seen = list(compute.iterate(ticks()))
    assert [i for _, i in seen] == [0, 1, 2] and {t for t, _ in seen} == threads
