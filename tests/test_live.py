"""Live drag's scheduler (fastdrag.apps.live.LatestWins), with plain functions for jobs."""

import threading
import time

import pytest

from fastdrag.apps.live import LatestWins


class Gate:
    """A job function that records what it ran and blocks each job until let through."""

    def __init__(self):
        self.ran, self.started = [], threading.Semaphore(0)
        self._go = threading.Semaphore(0)

    def __call__(self, job):
        self.started.release()
        self._go.acquire()
        if isinstance(job, Exception):
            raise job
        self.ran.append(job)
        return f"done {job}"

    def let_through(self, count: int = 1) -> None:
        for _ in range(count):
            self._go.release()


def wait_started(gate: Gate) -> None:
    assert gate.started.acquire(timeout=10), "the worker never started a job"


def test_a_newer_job_replaces_a_waiting_one_and_the_running_one_ends():
    gate = Gate()
    jobs = LatestWins(gate)
    assert jobs.submit("a", 1) == 1
    wait_started(gate)  # job 1 runs
    assert [jobs.submit("a", n) for n in (2, 3, 4)] == [2, 3, 4]  # numbers grow from 1
    assert jobs.dropped == 2 and jobs.busy("a")
    gate.let_through(2)
    finished = jobs.latest("a", after=1, timeout=10)
    assert finished.seq == 4 and finished.value == "done 4" and finished.error is None
    assert gate.ran == [1, 4]  # 2 and 3 were stale: dropped, never run
    assert [run.seq for run in jobs.runs] == [1, 4]
    jobs.close()


def test_sessions_take_turns_and_none_starves():
    """A session that submits at every step still waits behind one that submitted once."""
    gate = Gate()
    jobs = LatestWins(gate)
    jobs.submit("busy", "b1")
    wait_started(gate)
    jobs.submit("busy", "b2")  # waiting first
    jobs.submit("quiet", "q1")  # waiting second
    gate.let_through()  # b1 ends; b2 runs
    wait_started(gate)
    jobs.submit("busy", "b3")  # b2 runs, b3 waits behind q1
    gate.let_through(3)
    assert jobs.latest("busy", after=2, timeout=10).value == "done b3"
    assert gate.ran == ["b1", "b2", "q1", "b3"]
    jobs.close()


def test_each_key_sees_only_its_own_results():
    jobs = LatestWins(lambda job: job * 10)
    jobs.submit("a", 1)
    jobs.submit("b", 2)
    assert jobs.latest("a", timeout=10).value == 10
    assert jobs.latest("b", timeout=10).value == 20
    assert jobs.latest("c", timeout=0.1) is None  # nothing was submitted for it: no wait
    assert jobs.latest("a", after=1, timeout=0.1) is None  # nothing newer, nothing running
    jobs.forget("a")
    assert jobs.latest("a") is None
    assert jobs.submit("a", 3) == 3  # numbers only grow, across keys and across a key's lives
    jobs.close()


def test_a_failing_job_is_its_result_and_the_worker_goes_on():
    jobs = LatestWins(lambda job: 1 / job, describe_error=lambda error: type(error).__name__)
    jobs.submit("a", 0)
    failed = jobs.latest("a", timeout=10)
    assert failed.error == "ZeroDivisionError" and failed.value is None
    jobs.submit("a", 4)
    assert jobs.latest("a", after=failed.seq, timeout=10).value == 0.25
    jobs.close()


def test_a_key_forgotten_while_its_job_runs_keeps_no_result():
    gate = Gate()
    jobs = LatestWins(gate)
    jobs.submit("a", 1)
    wait_started(gate)
    jobs.submit("a", 2)
    jobs.forget("a")  # the tab closed: its waiting job goes, the running one ends unkept
    assert not jobs.busy("a") and jobs.latest("a") is None
    gate.let_through()
    jobs.submit("b", 3)
    gate.let_through()
    assert jobs.latest("b", timeout=10).value == "done 3"
    assert jobs.latest("a") is None and gate.ran == [1, 3]
    jobs.close()


def test_concurrent_submitters_never_run_two_jobs_at_once():
    running, overlaps = [], []

    def job(value):
        running.append(value)
        if len(running) > 1:
            overlaps.append(list(running))
        time.sleep(0.002)
        running.remove(value)
        return value

    jobs = LatestWins(job)

    def submitter(key):
        for n in range(200):
            jobs.submit(key, (key, n))

    threads = [threading.Thread(target=submitter, args=(key,)) for key in "abcd"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for key in "abcd":
        assert jobs.latest(key, after=199, timeout=10).value == (key, 199)  # each ends with its newest
    assert overlaps == []
    ordered = sorted(jobs.runs, key=lambda run: run.started)
    assert all(b.started >= a.ended for a, b in zip(ordered, ordered[1:]))
    assert jobs.dropped > 0 and len(jobs.runs) + jobs.dropped == 800
    jobs.close()


def test_a_closed_scheduler_refuses_jobs():
    jobs = LatestWins(lambda job: job)
    jobs.close()
    with pytest.raises(RuntimeError, match="closed"):
        jobs.submit("a", 1)


# --------------------------------------------------------------------------------------------
# The editor's LiveDrag on tiny random-weight pipelines (the browser tests drive the same object)
# --------------------------------------------------------------------------------------------

import asyncio  # noqa: E402

import numpy as np  # noqa: E402
from tiny_models import tiny_components, tiny_sdxl_components  # noqa: E402

from fastdrag import StableDiffusionFastDragPipeline, StableDiffusionXLFastDragPipeline  # noqa: E402
from fastdrag.apps.app import (  # noqa: E402
    MAX_DRAGS,
    LiveDrag,
    PipelineHolder,
    Session,
    clear_points,
    inversion_key,
    load_editor_value,
    undo_point,
)
from fastdrag.apps.browser import image_from_data_url  # noqa: E402


def live_drag(pipeline_class=StableDiffusionFastDragPipeline, components=tiny_components, **kwargs) -> LiveDrag:
    return LiveDrag(PipelineHolder(lambda: pipeline_class(**components())), **kwargs)


def image_session(seed: int, **fields) -> Session:
    rng = np.random.default_rng(seed)
    return Session(image=rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), **fields)


def pixels(url: str) -> np.ndarray:
    return np.asarray(image_from_data_url(url))


def poll(live: LiveDrag, token: str, after: int = 0, timeout: float = 5.0) -> dict:
    """What the page's poll request gets (the server function is a coroutine)."""
    return asyncio.run(live.poll({"token": token, "after": after}, timeout=timeout))


def settle(live: LiveDrag, token: str, after: int = 0) -> dict:
    """Poll as the page does until the session has no work left; the last result."""
    result = None
    for _ in range(100):
        reply = poll(live, token, after)
        assert "error" not in reply, reply
        if reply["result"] is not None:
            result, after = reply["result"], reply["result"]["seq"]
        if not reply["busy"] and poll(live, token, after)["result"] is None:
            return result
    raise AssertionError("the session never settled")


def direct_edit(holder: PipelineHolder, session: Session) -> np.ndarray:
    """The pipeline called directly with the session's drags, mask and mode through the server's
    cached inversion of its image, as uint8 pixels (as the editor turns its output into pixels)."""
    options = session.options.replace(mode=session.mode)
    inversion = holder.inversions.get(inversion_key(session.image, options))
    assert inversion is not None, "the image's inversion is not in the server's cache"
    out = holder.get()(handle_points=[d[0] for d in session.drags], target_points=[d[1] for d in session.drags],
                       mask=session.mask, **options.pipeline_kwargs(inversion), output_type="np")
    return (out.images[0] * 255).round().astype(np.uint8)


def drag_through(live: LiveDrag, session: Session, handle, targets) -> list[dict]:
    """Send the points of a drag from ``handle`` through ``targets`` (image ``(x, y)``), as the page does."""
    return [live.move({"token": session.token, "points": [list(handle), list(target)]}) for target in targets]


@pytest.mark.parametrize("pipeline_class, components", [
    (StableDiffusionFastDragPipeline, tiny_components), (StableDiffusionXLFastDragPipeline, tiny_sdxl_components),
], ids=["sd", "sdxl"])
def test_a_live_drag_ends_with_the_pipelines_edit_of_the_final_position(pipeline_class, components):
    live = live_drag(pipeline_class, components)
    session = live.register(image_session(0))
    live.update(session)  # the background inversion an upload starts
    assert live.status(session) == "Inverting this image in the background..."
    assert settle(live, session.token)["label"].startswith("Inversion ready")
    assert live.status(session) == "Inversion ready: drag a point and the edit follows."

    replies = drag_through(live, session, (10, 12), [(11, 12), (13, 12), (15, 13), (16, 12)])
    assert all(reply["preview"].startswith("data:image/png") for reply in replies)
    assert replies[-1]["points"] == [(10, 12), (16, 12)]
    final = settle(live, session.token)
    assert final["label"].startswith(f"Live edit {final['seq']}: (10, 12) -> (16, 12) in ")
    assert "from the cached inversion" in final["label"]
    assert np.array_equal(pixels(final["image"]), direct_edit(live.holder, session))
    assert len(live.jobs.runs) + live.jobs.dropped == 5  # the inversion and four re-drags, none lost
    live.close()


def test_move_and_copy_follow_the_mouse_too():
    live = live_drag()
    mask = np.zeros((32, 32), bool)
    mask[8:16, 6:14] = True
    for mode in ("move", "copy"):
        session = live.register(image_session(1, mask=mask, mode=mode))
        drag_through(live, session, (10, 12), [(14, 14), (20, 18)])
        assert session.drags == [((10, 12), (20, 18))]
        assert np.array_equal(pixels(settle(live, session.token)["image"]), direct_edit(live.holder, session))
    live.close()


def test_two_sessions_dragging_at_once_get_only_their_own_results():
    live = live_drag()
    sessions = [live.register(image_session(seed)) for seed in (2, 3)]
    paths = {sessions[0].token: ((4, 4), [(5, 4), (6, 5), (8, 6)]), sessions[1].token: ((20, 20), [(19, 21), (16, 24)])}

    def drag(session):
        handle, targets = paths[session.token]
        for target in targets:
            drag_through(live, session, handle, [target])
            time.sleep(0.01)

    threads = [threading.Thread(target=drag, args=(session,)) for session in sessions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for session in sessions:
        handle, targets = paths[session.token]
        final = settle(live, session.token)
        assert f": {handle} -> {targets[-1]} in " in final["label"]
        assert np.array_equal(pixels(final["image"]), direct_edit(live.holder, session))
    assert {run.key for run in live.jobs.runs} == {session.token for session in sessions}
    live.close()


def test_with_live_edit_off_a_drag_previews_and_runs_nothing():
    live = live_drag()
    session = live.register(image_session(4, live=False))
    live.update(session)
    reply = drag_through(live, session, (10, 12), [(16, 12)])[-1]
    assert reply["preview"] and not reply["busy"] and live.jobs.latest(session.token) is None
    assert live.status(session) == "Live edit is off: press Run to edit."
    live.close()


@pytest.mark.parametrize("message, field", [
    ("points", None), ({"points": []}, "token"), ({"token": "x" * 65, "points": []}, "token"),
    ({"token": 5, "points": []}, "token"),
    ({"token": "T", "points": [[1, 2]] * (2 * MAX_DRAGS + 1)}, "points"),
    ({"token": "T", "points": [[1.5, 2]]}, "points"), ({"token": "T", "points": [[True, 2]]}, "points"),
    ({"token": "T", "points": [[1, 2, 3]]}, "points"), ({"token": "T", "points": [[10**12, 2]]}, "points"),
    ({"token": "T", "points": "[[1, 2]]"}, "points"),
])
def test_a_malformed_live_request_is_one_line_and_runs_nothing(message, field):
    live = live_drag()
    session = live.register(image_session(5, token="T"))
    reply = live.move(message)
    assert set(reply) == {"error"} and "\n" not in reply["error"]
    assert (f"`{field}`" in reply["error"]) if field else "must be an object" in reply["error"]
    assert session.points == [] and not live.jobs.busy("T") and not live.jobs.runs
    assert "`after`" in asyncio.run(live.poll({"token": "T", "after": -1}))["error"]
    live.close()


def test_an_unknown_or_forgotten_session_is_told_to_reload_and_comes_back_under_a_new_token():
    live = live_drag(max_sessions=2)
    first = live.register(image_session(6))
    old_token = first.token
    second, third = live.register(image_session(7)), live.register(image_session(8))  # the first is dropped
    for token in (old_token, "never-issued"):
        assert "reload the page" in live.move({"token": token, "points": []})["error"]
        assert "reload the page" in poll(live, token)["error"]
    live.forget(second)  # its tab closed
    assert "reload the page" in live.move({"token": second.token or "-", "points": []})["error"]
    assert "error" not in live.move({"token": third.token, "points": []})

    # The first page comes back (its next Gradio event shows it again): a new token, fresh results.
    live.view(first)
    assert first.token not in ("", old_token)
    live.move({"token": first.token, "points": [[10, 12], [16, 12]]})
    assert settle(live, first.token)["label"].startswith("Live edit ")
    live.close()


def test_the_session_dropped_first_is_the_least_recently_used_not_the_oldest():
    live = live_drag(max_sessions=2)
    busy, idle = live.register(image_session(9, live=False)), live.register(image_session(10, live=False))
    live.move({"token": busy.token, "points": [[1, 1]]})  # the oldest registered, but in use
    live.register(image_session(11, live=False))
    assert "error" not in live.move({"token": busy.token, "points": [[2, 2]]})
    assert idle.token == ""  # the idle one went
    live.close()


def test_dropping_sessions_while_others_drag_leaves_no_job_behind():
    """Review: a session dropped between a move's lookup and its submission came back in the
    scheduler, and jobs of dropped sessions piled up without bound."""
    live = live_drag(max_sessions=3)
    stop = time.monotonic() + 3

    def dragger(seed):
        while time.monotonic() < stop:
            session = live.register(image_session(seed))
            for x in range(3):
                live.move({"token": session.token or "-", "points": [[1, 1], [2 + x, 2]]})

    def newcomer():
        while time.monotonic() < stop:
            live.register(image_session(99))

    threads = [threading.Thread(target=dragger, args=(seed,)) for seed in range(3)] + [threading.Thread(target=newcomer)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert live.jobs.waiting <= 3  # one waiting job at most per kept session
    live.close()


def test_another_image_is_another_live_session_that_never_shows_the_old_images_edit():
    live = live_drag()
    started, release = threading.Event(), threading.Event()
    pipe = live.holder.get()
    session = live.register(image_session(12))
    live.update(session)
    settle(live, session.token)  # inverted

    def slow_unet(module, args):
        started.set()
        release.wait(10)

    hook = pipe.unet.register_forward_pre_hook(slow_unet)
    live.move({"token": session.token, "points": [[10, 12], [16, 12]]})
    assert started.wait(10)  # its re-drag runs
    rng = np.random.default_rng(13)
    value = {"background": rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), "layers": []}
    new = load_editor_value(session, value, max_side=64, factor=8)
    assert new is not session and new.token == ""
    live.forget(session)  # what the page's handler does (app.build_app, `changed`)
    live.update(new)
    release.set()
    hook.remove()
    result = settle(live, new.token)
    assert result["label"].startswith("Inversion ready") and "image" not in result
    live.close()


def test_undo_and_clear_bring_the_live_edit_up_to_date():
    live = live_drag()
    session = live.register(image_session(14))
    live.move({"token": session.token, "points": [[4, 4], [8, 4], [20, 20], [24, 22]]})
    assert "(20, 20) -> (24, 22)" in settle(live, session.token)["label"]
    undo_point(undo_point(session))
    live.update(session)  # what the page's Undo does
    final = settle(live, session.token)
    assert final["label"].startswith(f"Live edit {final['seq']}: (4, 4) -> (8, 4) in ")
    assert np.array_equal(pixels(final["image"]), direct_edit(live.holder, session))
    clear_points(session)
    live.update(session)  # no drag left: nothing to re-drag, the inversion is cached
    assert not live.jobs.busy(session.token)
    live.close()
