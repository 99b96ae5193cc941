"""The editor's handlers, without a browser (the browser test drives the same functions)."""

import numpy as np
import pytest
from tiny_models import tiny_components

from fastdrag import StableDiffusionFastDragPipeline
from fastdrag.apps.app import (
    AppError,
    PipelineHolder,
    Session,
    add_point,
    clear_points,
    edit_session,
    fit_size,
    load_editor_value,
    painted_mask,
    points_base,
    points_text,
    preview_view,
    undo_point,
    use_as_input,
    view_zoom,
)
from fastdrag.apps.options import EditOptions


ADVANCED = EditOptions(prompt="", num_inference_steps=10, inversion_strength=0.7, fill="bnni", preserve_consistency=True)


@pytest.mark.parametrize(
    "size, max_side, factor, expected",
    [((1024, 768), 512, 8, (512, 384)), ((300, 200), 512, 8, (296, 200)), ((64, 40), 512, 8, (64, 40)),
     ((513, 100), 512, 8, (512, 96)), ((5, 3), 512, 8, (8, 8)), ((256, 256), 64, 2, (64, 64))],
)
def test_fit_size_scales_down_only_and_rounds_to_the_factor(size, max_side, factor, expected):
    assert fit_size(*size, max_side, factor) == expected


def editor_value(image, painted=None):
    layer = np.zeros((*image.shape[:2], 4), np.uint8)
    if painted is not None:
        layer[painted] = 255
    return {"background": image, "layers": [layer], "composite": image}


def test_editor_value_gives_resized_image_and_mask_and_keeps_points_while_painting():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (128, 96, 4), dtype=np.uint8)
    image[..., 3] = 255
    session = load_editor_value(Session(), editor_value(image), max_side=64, factor=8)
    assert session.image.shape == (64, 48, 3) and session.mask is None
    assert points_text(session).startswith("48x64 image, mask: whole image, 0 drag(s)")
    add_point(session, 10, 20)

    painted = (slice(32, 96), slice(0, 48))  # the left half, rows 32..95 of 128
    session = load_editor_value(session, editor_value(image, painted), max_side=64, factor=8)
    assert session.points == [(10, 20)]  # painting keeps the points
    assert session.mask.shape == (64, 48) and session.mask.sum() == 32 * 24 and session.mask[16:48, :24].all()

    other = image.copy()
    other[0, 0, 0] ^= 255
    session = load_editor_value(session, editor_value(other), max_side=64, factor=8)
    assert session.points == [] and session.mask is None  # a new image starts over


def test_painted_mask_is_none_without_paint():
    assert painted_mask([np.zeros((8, 8, 4), np.uint8)], (8, 8)) is None
    assert painted_mask([], (8, 8)) is None


def test_points_undo_clear_and_views():
    session = Session(image=np.full((16, 24, 3), 100, np.uint8))
    for x, y in [(2, 3), (30, -4), (5, 5)]:  # the second is clamped into the image
        add_point(session, x, y)
    assert session.points == [(2, 3), (23, 0), (5, 5)] and session.drags == [((2, 3), (23, 0))]
    assert "1 drag(s). Click the target" in points_text(session)
    assert view_zoom(session.image) == 512 // 24 and points_base(session) is session.image
    session.mask = np.zeros((16, 24), bool)
    session.mask[:, :12] = True
    dimmed = points_base(session)  # what may not move is dimmed
    assert (dimmed[:, :12] == 100).all() and (dimmed[:, 12:] == round(100 * 0.45 + 25.5)).all()
    session.mask = None
    assert preview_view(session).shape == (16, 24, 3)
    undo_point(session)
    assert session.points == [(2, 3), (23, 0)]
    clear_points(session)
    assert session.points == [] and np.array_equal(preview_view(session), session.image)


def tiny_holder(calls=None):
    def load():
        pipe = StableDiffusionFastDragPipeline(**tiny_components())
        if calls is not None:
            pipe.unet.register_forward_pre_hook(lambda module, args: calls.append(1))
        return pipe

    return PipelineHolder(load)


def session_with_drag() -> Session:
    rng = np.random.default_rng(1)
    session = Session(image=rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    add_point(session, 10, 12)
    add_point(session, 16, 12)
    return session


def test_second_run_reuses_the_inversion_and_runs_only_sampling():
    calls = []
    holder, session = tiny_holder(calls), session_with_drag()
    first = edit_session(holder, session, ADVANCED)
    assert first.image.shape == (32, 32, 3) and first.image.dtype == np.uint8 and not first.reused
    assert len(calls) == 14 and "inversion" in first.times
    second = edit_session(holder, session, ADVANCED)
    assert second.reused and len(calls) == 14 + 7 and set(second.times) == {"warp", "sampling", "decode"}
    assert np.array_equal(first.image, second.image)  # same drag, same image
    assert "cached inversion reused" in second.status()

    edit_session(holder, session, ADVANCED.replace(inversion_strength=0.5))  # another schedule: inverted again
    assert len(calls) == 21 + 10


def test_user_errors_are_messages_and_the_app_goes_on():
    holder = tiny_holder()
    with pytest.raises(AppError, match="upload an image first"):
        edit_session(holder, Session(), ADVANCED)
    with pytest.raises(AppError, match="add at least one drag"):
        edit_session(holder, Session(image=np.zeros((32, 32, 3), np.uint8)), ADVANCED)
    with pytest.raises(AppError, match="`num_inference_steps` must be"):
        edit_session(holder, session_with_drag(), ADVANCED.replace(num_inference_steps=0))
    assert edit_session(holder, session_with_drag(), ADVANCED).image.shape == (32, 32, 3)


def test_a_model_that_cannot_load_is_reported_every_time_without_retrying():
    attempts = []

    def load():
        attempts.append(1)
        raise OSError("no file named model_index.json found in /nowhere\nmore detail")

    holder = PipelineHolder(load)
    for _ in range(2):
        with pytest.raises(AppError, match="the model could not be loaded: no file named model_index.json"):
            edit_session(holder, session_with_drag(), ADVANCED)
    assert attempts == [1]


def test_build_app_wires_the_page():
    from fastdrag.apps.app import build_app

    demo = build_app(tiny_holder(), max_side=64)
    ids = {block.elem_id for block in demo.blocks.values() if getattr(block, "elem_id", None)}
    assert {"editor", "drag-panel", "live-on", "run", "undo", "clear", "status", "original", "result", "use"} <= ids


def test_use_as_input_fits_the_image_as_an_upload_is():
    """Issue #23: "Use as input" skipped --max-side, so one request could load 4096x4096 into a session."""
    big = np.zeros((4096, 4096, 3), np.uint8)
    before = Session(image=np.ones((8, 8, 3), np.uint8), mask=np.ones((8, 8), bool), points=[(1, 1)], mode="move",
                     token="tab")
    session = use_as_input(big, before, max_side=64, factor=8)
    assert session.image.shape == (64, 64, 3) and session.points == [] and session.mask is None
    assert session.mode == "move" and session.token == ""  # the tab's settings stay; a new live session


def test_an_image_over_the_pixel_limit_is_an_app_error_naming_the_option():
    value = {"background": np.zeros((40, 40, 3), np.uint8), "layers": []}
    with pytest.raises(AppError, match=r"over the limit of 1,000 .*--max-pixels"):
        load_editor_value(Session(), value, max_side=64, factor=8, max_pixels=1000)
    with pytest.raises(AppError, match="--max-pixels"):
        use_as_input(value["background"], Session(), max_side=64, factor=8, max_pixels=1000)


def test_gradio_analytics_are_off(monkeypatch):
    import os

    from fastdrag.apps.app import build_app

    monkeypatch.delenv("GRADIO_ANALYTICS_ENABLED", raising=False)
    demo = build_app(tiny_holder(), max_side=64)
    assert demo.analytics_enabled is False
    assert os.environ["GRADIO_ANALYTICS_ENABLED"] == "False"


@pytest.mark.parametrize("live_edit", [True, False])
def test_pages_start_with_live_edit_as_the_server_was_told(live_edit):
    """`fastdrag app --no-live` starts each page with live edit off: its switch, and the session
    a new page gets (with it off, an upload inverts nothing)."""
    from fastdrag.apps.app import build_app
    from fastdrag.apps.cli import build_parser

    demo = build_app(tiny_holder(), max_side=64, live_edit=live_edit)
    switch = next(block for block in demo.blocks.values() if getattr(block, "elem_id", None) == "live-on")
    state = next(block for block in demo.blocks.values() if type(block).__name__ == "State")
    assert switch.value is live_edit and state.value.live is live_edit
    assert build_parser().parse_args(["app", *([] if live_edit else ["--no-live"])]).no_live is not live_edit
