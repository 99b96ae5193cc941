"""The fast paths: a compiled UNet, CUDA graphs, and no host synchronisation in the loops.

On the CPU, the graph machinery runs with a stand-in capture that freezes the first call's closure
and re-runs it on the graph's static inputs: it checks what the real capture relies on (every
input reaches the loops through the static tensors, the keys say when to capture again, the
cache stays bounded) without CUDA. The tests marked ``cuda`` capture real graphs and skip
without a GPU.
"""

import logging

import numpy as np
import pytest
import torch
from tiny_models import tiny_components, tiny_image
from torch._dynamo.utils import counters
from torch.utils._python_dispatch import TorchDispatchMode

from fastdrag import StableDiffusionFastDragPipeline
from fastdrag.apps.testing import capture_by_rerunning
from fastdrag.cuda_graphs import GraphCache, as_tuple


HANDLES = [(10.0, 12.0), (20.5, 19.0)]  # image (x, y)
TARGETS = [(15.0, 12.0), (22.0, 25.5)]

cuda = pytest.mark.cuda  # skipped without a GPU (conftest.py); benchmarks/gpu_suite.py runs them


def edit(pipe, **kwargs):
    args = dict(image=tiny_image(), handle_points=HANDLES, target_points=TARGETS, prompt="a cat", output_type="np")
    args.update(kwargs)
    return pipe(**args).images


def redrag(pipe, inversion, **kwargs):
    args = dict(handle_points=HANDLES, target_points=TARGETS, inversion=inversion, output_type="np")
    args.update(kwargs)
    return pipe(**args).images


# --------------------------------------------------------------------------------------------
# torch.compile
# --------------------------------------------------------------------------------------------


def test_compiled_unet_builds_three_graphs_and_never_recompiles(pipe):
    eager = {
        "edit": edit(pipe),
        "off": edit(pipe, preserve_consistency=False),
        "other": edit(pipe, image=tiny_image(1), handle_points=[(5, 5)], target_points=[(9, 5)]),
    }
    torch._dynamo.reset()
    counters.clear()
    pipe.unet = torch.compile(pipe.unet, backend="eager", fullgraph=True)  # fullgraph: a break raises
    try:
        assert np.array_equal(edit(pipe), eager["edit"])
        inversion = pipe.invert(tiny_image(), prompt="a cat")
        assert np.array_equal(redrag(pipe, inversion), eager["edit"])
        assert np.array_equal(edit(pipe, preserve_consistency=False), eager["off"])
        graphs = counters["stats"]["unique_graphs"]
        assert graphs == 3  # record, replay, plain: not one per timestep

        # Later edits, re-drags and inversions of the same size add nothing.
        assert np.array_equal(edit(pipe, image=tiny_image(1), handle_points=[(5, 5)], target_points=[(9, 5)]),
                              eager["other"])
        redrag(pipe, pipe.invert(tiny_image(2), prompt="a dog"), handle_points=[(3, 3)], target_points=[(4, 8)])
        redrag(pipe, inversion)
        assert counters["stats"]["unique_graphs"] == graphs
    finally:
        torch._dynamo.reset()


# --------------------------------------------------------------------------------------------
# No host synchronisation inside the loops
# --------------------------------------------------------------------------------------------

# Ops that need a device value on the host: on CUDA each one waits for the queue to drain.
HOST_READS = {
    torch.ops.aten._local_scalar_dense,  # .item(), bool(t), int(t), float(t), Python branches
    torch.ops.aten.nonzero,
    torch.ops.aten.masked_select,
    torch.ops.aten.is_nonzero,
    torch.ops.aten.equal,
    torch.ops.aten._unique2,
    torch.ops.aten.unique_consecutive,
    torch.ops.aten.unique_dim,
}


class ForbidHostReads(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket in HOST_READS:
            raise AssertionError(f"{func} reads a device value on the host inside a denoising loop")
        return func(*args, **(kwargs or {}))


def forbid_host_reads_in(pipe, monkeypatch, names=("_inversion_loop", "warp", "_sampling_loop")) -> list:
    entered = []
    for name in names:
        method = getattr(pipe, name)

        def guarded(*args, _method=method, _name=name, **kwargs):
            entered.append(_name)
            with ForbidHostReads():
                return _method(*args, **kwargs)

        monkeypatch.setattr(pipe, name, guarded)
    return entered


@pytest.mark.parametrize("guidance_scale", [1.0, 3.0])
def test_loops_never_read_a_device_value_on_the_host(pipe, monkeypatch, guidance_scale):
    entered = forbid_host_reads_in(pipe, monkeypatch)
    edit(pipe, guidance_scale=guidance_scale)
    redrag(pipe, pipe.invert(tiny_image(), prompt="a cat"), guidance_scale=guidance_scale)
    assert {"_inversion_loop", "warp", "_sampling_loop"} <= set(entered)


def test_the_host_read_check_catches_an_item_call(pipe, monkeypatch):
    forbid_host_reads_in(pipe, monkeypatch)
    original = pipe.scheduler.step

    def step_with_a_sync(noise_pred, t, latents, **kwargs):
        if latents.abs().max() > 1e9:  # a Python branch on a device value
            pass
        return original(noise_pred, t, latents, **kwargs)

    monkeypatch.setattr(pipe.scheduler, "step", step_with_a_sync)
    with pytest.raises(AssertionError, match="_local_scalar_dense"):
        edit(pipe)


# --------------------------------------------------------------------------------------------
# CUDA graphs, with a stand-in capture on the CPU
# --------------------------------------------------------------------------------------------


def with_stand_in_graphs(pipe, max_graphs=8) -> GraphCache:
    pipe.attention_replay.graphs = GraphCache(max_graphs, capture=capture_by_rerunning, device_type="cpu")
    return pipe.attention_replay.graphs


def test_graph_path_gives_the_eager_bits_and_captures_once_per_key():
    eager_pipe = StableDiffusionFastDragPipeline(**tiny_components())
    graph_pipe = StableDiffusionFastDragPipeline(**tiny_components())
    for pipeline in (eager_pipe, graph_pipe):
        pipeline.set_progress_bar_config(disable=True)
    graphs = with_stand_in_graphs(graph_pipe)

    def both(seed=None, **kwargs):
        outputs = []
        for pipeline in (eager_pipe, graph_pipe):
            generator = torch.Generator().manual_seed(seed) if seed is not None else None
            outputs.append(edit(pipeline, generator=generator, **kwargs))
        np.testing.assert_array_equal(*outputs)
        return graphs.captures

    assert both() == 3  # inversion, warp, sampling
    assert both(image=tiny_image(1), handle_points=[(3, 4), (7, 7)], target_points=[(6, 6), (1, 9)]) == 3
    assert both(handle_points=[(3, 4)], target_points=[(6, 6)]) == 4  # one drag: another warp graph
    assert both(guidance_scale=3.0, negative_prompt="blurry") == 5  # another sampling graph
    assert both(guidance_scale=4.0) == 6  # the guidance scale is baked into the graph
    assert both(fill="zeros") == 7
    assert both(preserve_consistency=False) == 9  # inversion without record, sampling without replay
    assert both(fill="noise", seed=0) == 9  # warps eagerly
    assert len(graphs) == 8  # the ninth evicted the least recently used

    inversion_eager = eager_pipe.invert(tiny_image(2), prompt="a dog")
    inversion_graph = graph_pipe.invert(tiny_image(2), prompt="a dog")
    assert torch.equal(inversion_eager.latents, inversion_graph.latents)
    for drags in ([(5, 5)], [(9, 5)]), (HANDLES, TARGETS):
        np.testing.assert_array_equal(
            redrag(eager_pipe, inversion_eager, handle_points=drags[0], target_points=drags[1]),
            redrag(graph_pipe, inversion_graph, handle_points=drags[0], target_points=drags[1]),
        )

    def callback(pipeline, i, t, kwargs):
        return {}

    before = graphs.captures
    np.testing.assert_array_equal(edit(eager_pipe, callback_on_step_end=callback),
                                  edit(graph_pipe, callback_on_step_end=callback))
    assert graphs.captures == before  # a callback runs between steps: sampling is eager


def test_graph_cache_is_bounded_and_cleared_when_the_bank_changes(pipe):
    graphs = with_stand_in_graphs(pipe, max_graphs=2)
    eager = StableDiffusionFastDragPipeline(**tiny_components())
    eager.set_progress_bar_config(disable=True)
    for _ in range(2):
        np.testing.assert_array_equal(edit(pipe), edit(eager))
        assert len(graphs) == 2
    assert graphs.captures == 6  # with room for two of three, every call captures all three again

    graphs = with_stand_in_graphs(pipe)
    edit(pipe)
    assert len(graphs) == 3
    edit(pipe, num_inference_steps=20, inversion_strength=0.5)  # another bank: the old graphs are gone
    assert len(graphs) == 3 and graphs.captures == 6


def test_latent_output_is_not_overwritten_by_the_next_replay(pipe):
    with_stand_in_graphs(pipe)
    first = edit(pipe, output_type="latent")
    kept = first.clone()
    edit(pipe, output_type="latent", handle_points=[(3, 3)], target_points=[(9, 9)])
    assert torch.equal(first, kept)


def test_a_graph_is_captured_again_when_the_unet_changes(pipe):
    graphs = with_stand_in_graphs(pipe)
    edit(pipe)
    pipe.enable_attention_slicing()  # new processors: a graph of the old ones would be stale
    edit(pipe)
    assert graphs.captures == 5  # inversion and sampling again; the warp does not involve the UNet
    torch.nn.init.zeros_(pipe.unet.conv_out.bias)  # in place: a graph reads the new values
    edit(pipe)
    assert graphs.captures == 5


def failing_capture(fail_at: str):
    """The stand-in capture, made to raise at capture time, or at every replay after capturing."""

    def capture(fn, inputs, cache):
        if fail_at == "capture":
            fn(**inputs)  # a real capture fails midway, after running part of the work
            raise RuntimeError("stand-in capture failed")
        outputs = as_tuple(fn(**inputs))

        def replay():
            raise RuntimeError("stand-in replay failed")

        return replay, outputs

    return capture


@pytest.mark.parametrize("fail_at", ["capture", "replay"])
def test_a_graph_that_fails_falls_back_to_the_eager_path_with_one_warning(pipe, fail_at):
    eager = StableDiffusionFastDragPipeline(**tiny_components())
    eager.set_progress_bar_config(disable=True)
    expected = {"edit": edit(eager), "other": edit(eager, image=tiny_image(1))}
    inversion = eager.invert(tiny_image(2), prompt="a dog")
    expected["redrag"] = redrag(eager, inversion)

    pipe.attention_replay.graphs = GraphCache(capture=failing_capture(fail_at), device_type="cpu")
    with pytest.warns(UserWarning) as caught:
        np.testing.assert_array_equal(edit(pipe), expected["edit"])
        np.testing.assert_array_equal(edit(pipe), expected["edit"])
        np.testing.assert_array_equal(edit(pipe, image=tiny_image(1)), expected["other"])
        np.testing.assert_array_equal(redrag(pipe, pipe.invert(tiny_image(2), prompt="a dog")), expected["redrag"])
    messages = [str(w.message) for w in caught]
    # One warning per key (inversion, warp, sampling), however often the key comes back.
    assert len(messages) == 3, messages
    assert all(f"stand-in {fail_at} failed" in m and "running it eagerly" in m for m in messages)
    assert {m.split("'")[1] for m in messages} == {"inversion", "warp", "sampling"}
    assert len(pipe.attention_replay.graphs) == 0 and pipe.attention_replay.graphs.captures == (0 if fail_at == "capture" else 3)


def test_enable_cuda_graphs_needs_cuda(pipe, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="CUDA graphs need a CUDA device"):
        pipe.enable_cuda_graphs()
    with pytest.raises(ValueError, match="`max_graphs` must be an integer >= 1"):
        GraphCache(0)


def test_cuda_graphs_on_another_device_run_eagerly_with_a_warning(pipe, monkeypatch):
    expected = edit(pipe)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    pipe.enable_cuda_graphs(max_graphs=4)
    messages = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    logger = logging.getLogger("fastdrag.fastdrag_core")
    logger.addHandler(handler)
    try:
        np.testing.assert_array_equal(edit(pipe), expected)
        edit(pipe)
    finally:
        logger.removeHandler(handler)
    assert pipe.attention_replay.graphs.captures == 0
    assert messages == ["CUDA graphs are enabled but cannot run on cpu: running eagerly."]
    pipe.disable_cuda_graphs()
    assert pipe.attention_replay.graphs is None


# --------------------------------------------------------------------------------------------
# On a GPU
# --------------------------------------------------------------------------------------------


@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_real_cuda_graphs_give_the_eager_bits(dtype):
    eager_pipe = StableDiffusionFastDragPipeline(**tiny_components()).to("cuda", dtype)
    graph_pipe = StableDiffusionFastDragPipeline(**tiny_components()).to("cuda", dtype)
    for pipeline in (eager_pipe, graph_pipe):
        pipeline.set_progress_bar_config(disable=True)
    graph_pipe.enable_cuda_graphs()
    for _ in range(2):  # the first call captures, the second replays
        np.testing.assert_array_equal(edit(eager_pipe), edit(graph_pipe))
    np.testing.assert_array_equal(edit(eager_pipe, guidance_scale=3.0), edit(graph_pipe, guidance_scale=3.0))
    inversions = eager_pipe.invert(tiny_image(1)), graph_pipe.invert(tiny_image(1))
    np.testing.assert_array_equal(redrag(eager_pipe, inversions[0]), redrag(graph_pipe, inversions[1]))
    assert graph_pipe.attention_replay.graphs.captures == 4


@cuda
@pytest.mark.parametrize("graphs", [False, True])
def test_no_synchronisation_in_the_loops_on_cuda(monkeypatch, graphs):
    pipe = StableDiffusionFastDragPipeline(**tiny_components()).to("cuda", torch.float16)
    pipe.set_progress_bar_config(disable=True)
    if graphs:
        pipe.enable_cuda_graphs()
    edit(pipe)  # first use: kernels chosen, warp tables made, graphs captured

    for name in ("_invert_latents", "warp", "sample_latents"):
        method = getattr(pipe, name)

        def strict(*args, _method=method, **kwargs):
            torch.cuda.set_sync_debug_mode("error")
            try:
                return _method(*args, **kwargs)
            finally:
                torch.cuda.set_sync_debug_mode("default")

        monkeypatch.setattr(pipe, name, strict)
    edit(pipe, handle_points=[(4, 4), (20, 20)], target_points=[(8, 8), (24, 18)])
    redrag(pipe, pipe.invert(tiny_image(1)))
