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
    assert [jobs.submit("a", n) for n in (2, 3, 4)] == [2, 3, 4]
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
    assert jobs.submit("a", 3) == 1  # a forgotten key starts its numbers again
    jobs.close()


def test_a_failing_job_is_its_result_and_the_worker_goes_on():
    jobs = LatestWins(lambda job: 1 / job, describe_error=lambda error: type(error).__name__)
    jobs.submit("a", 0)
    failed = jobs.latest("a", timeout=10)
    assert failed.error == "ZeroDivisionError" and failed.value is None
    jobs.submit("a", 4)
    assert jobs.latest("a", after=failed.seq, timeout=10).value == 0.25
    jobs.close()


def test_kept_results_are_bounded_by_max_keys():
    jobs = LatestWins(lambda job: job, max_keys=3)
    for key in range(6):
        jobs.submit(key, key)
        assert jobs.latest(key, timeout=10).value == key
    assert [key for key in range(6) if jobs.latest(key) is not None] == [3, 4, 5]
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

import base64  # noqa: E402
import io  # noqa: E402

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
from tiny_models import tiny_components, tiny_sdxl_components  # noqa: E402

from fastdrag import StableDiffusionFastDragPipeline, StableDiffusionXLFastDragPipeline  # noqa: E402
from fastdrag.apps.app import MAX_DRAGS, LiveDrag, PipelineHolder, Session, inversion_key  # noqa: E402


def live_drag(pipeline_class=StableDiffusionFastDragPipeline, components=tiny_components, **kwargs) -> LiveDrag:
    return LiveDrag(PipelineHolder(lambda: pipeline_class(**components())), **kwargs)


def image_session(seed: int, **fields) -> Session:
    rng = np.random.default_rng(seed)
    return Session(image=rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), **fields)


def pixels(url: str) -> np.ndarray:
    assert url.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB"))


def settle(live: LiveDrag, token: str) -> dict:
    """Poll as the page does until the session has no work left; the last result."""
    result, after = None, 0
    for _ in range(100):
        reply = live.poll({"token": token, "after": after})
        assert "error" not in reply, reply
        if reply["result"] is not None:
            result, after = reply["result"], reply["result"]["seq"]
        if not reply["busy"] and live.poll({"token": token, "after": after})["result"] is None:
            return result
    raise AssertionError("the session never settled")


def direct_edit(live: LiveDrag, session: Session) -> np.ndarray:
    """The pipeline called directly with the session's drags through the server's cached inversion."""
    options = session.options.replace(mode=session.mode)
    inversion = live.holder.inversions.get(inversion_key(session.image, options))
    assert inversion is not None
    out = live.holder.get()(handle_points=[d[0] for d in session.drags], target_points=[d[1] for d in session.drags],
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
    live.prepare(session)  # the background inversion an upload starts
    assert live.status(session) == "Inverting this image in the background..."
    assert settle(live, session.token)["label"].startswith("Inversion ready")
    assert live.status(session) == "Inversion ready: drag a point and the edit follows."

    replies = drag_through(live, session, (10, 12), [(11, 12), (13, 12), (15, 13), (16, 12)])
    assert all(reply["preview"].startswith("data:image/png") for reply in replies)
    assert replies[-1]["points"] == [(10, 12), (16, 12)]
    final = settle(live, session.token)
    assert final["label"].startswith(f"Live edit {final['seq']}: (10, 12) -> (16, 12) in ")
    assert "from the cached inversion" in final["label"]
    assert np.array_equal(pixels(final["image"]), direct_edit(live, session))
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
        assert np.array_equal(pixels(settle(live, session.token)["image"]), direct_edit(live, session))
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
        assert np.array_equal(pixels(final["image"]), direct_edit(live, session))
    assert {run.key for run in live.jobs.runs} == {session.token for session in sessions}
    live.close()


def test_with_live_edit_off_a_drag_previews_and_runs_nothing():
    live = live_drag()
    session = live.register(image_session(4, live=False))
    live.prepare(session)
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
    assert "`after`" in live.poll({"token": "T", "after": -1})["error"]
    live.close()


def test_an_unknown_or_forgotten_session_is_told_to_reload():
    live = live_drag(max_sessions=2)
    first, second, third = (live.register(image_session(seed)) for seed in (6, 7, 8))
    for token in (first.token, "never-issued"):  # the first was dropped when the third came
        assert "reload the page" in live.move({"token": token, "points": []})["error"]
        assert "reload the page" in live.poll({"token": token, "after": 0})["error"]
    live.forget(second)  # its tab closed
    assert "reload the page" in live.move({"token": second.token, "points": []})["error"]
    assert "error" not in live.move({"token": third.token, "points": []})
    live.close()
