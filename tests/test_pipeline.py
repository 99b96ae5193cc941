import numpy as np
import pytest
import torch
from diffusers import DDIMInverseScheduler, DDIMScheduler, PNDMScheduler
from diffusers.configuration_utils import FrozenDict
from PIL import Image
from tiny_models import IMAGE_SIZE, tiny_components, tiny_image

from fastdrag import StableDiffusionFastDragPipeline, attention_processors
from fastdrag.attention_processors import KVBank, KVState, kv_shapes
from fastdrag.inputs import image_to_latent_mask, image_to_latent_points
from fastdrag.warpage import warp_latents


HANDLES = [(10.0, 12.0), (20.5, 19.0)]  # image (x, y)
TARGETS = [(15.0, 12.0), (22.0, 25.5)]


def drag(pipe, **kwargs):
    args = dict(image=tiny_image(), handle_points=HANDLES, target_points=TARGETS, prompt="a cat")
    args.update(kwargs)
    return pipe(**args)


def up_block_self_attention_layers(processor_names) -> list[str]:
    """The layers FastDrag takes over, as the method names them: the up blocks' ``attn1``."""
    return [name for name in processor_names if name.startswith("up_blocks.") and ".attn1." in name]


def count_unet_calls(pipe) -> list:
    calls = []
    pipe.unet.register_forward_pre_hook(lambda module, args: calls.append(1))
    return calls


def processors_of(pipe) -> dict:
    return dict(pipe.unet.attn_processors)


def test_call_returns_image_of_input_size_and_is_deterministic(pipe):
    first = drag(pipe)
    assert isinstance(first.images[0], Image.Image) and first.images[0].size == (IMAGE_SIZE, IMAGE_SIZE)
    assert first.nsfw_content_detected is None
    a = drag(pipe, output_type="np").images
    b = drag(pipe, output_type="np").images
    assert a.shape == (1, IMAGE_SIZE, IMAGE_SIZE, 3) and np.array_equal(a, b)
    assert np.array_equal(np.asarray(first.images[0]), (a[0] * 255).round().astype(np.uint8))


def test_default_schedule_is_seven_inversion_and_seven_sampling_calls(pipe):
    calls = count_unet_calls(pipe)
    drag(pipe)
    assert len(calls) == 14
    assert pipe.timesteps_for(10, 7) == ([1, 101, 201, 301, 401, 501, 601], [601, 501, 401, 301, 201, 101, 1])


@pytest.mark.parametrize("mask_given", [False, True])
def test_zero_noise_unet_round_trip_equals_warped_encoding(pipe, mask_given):
    # A UNet whose last conv is zero predicts zero noise: DDIM inversion then sampling is then a pure
    # rescaling that cancels exactly iff both visit the same timesteps, and the warp sits between.
    torch.nn.init.zeros_(pipe.unet.conv_out.weight)
    torch.nn.init.zeros_(pipe.unet.conv_out.bias)
    image = tiny_image(1)
    mask = np.zeros((IMAGE_SIZE, IMAGE_SIZE), np.uint8)
    mask[4:28, 6:30] = 255
    out = drag(pipe, image=image, mask=mask if mask_given else None, output_type="latent").images

    encoded = pipe.encode_image(image[None], torch.device("cpu"))
    latent_mask = image_to_latent_mask(torch.from_numpy(mask) if mask_given else torch.ones(32, 32), 2)
    want = warp_latents(
        encoded, latent_mask, image_to_latent_points(HANDLES, 2), image_to_latent_points(TARGETS, 2)
    )
    assert not torch.allclose(want, encoded, atol=1e-3)  # the drag did move something
    torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)


def test_points_are_scaled_by_the_vae_scale_factor(pipe):
    assert pipe.vae_scale_factor == 2  # tiny VAE: two levels
    torch.nn.init.zeros_(pipe.unet.conv_out.weight)
    torch.nn.init.zeros_(pipe.unet.conv_out.bias)
    out = drag(pipe, handle_points=[(8, 8)], target_points=[(8, 8)], output_type="latent").images
    # A zero-length drag changes nothing: the latent comes back as encoded.
    torch.testing.assert_close(out, pipe.encode_image(tiny_image()[None], torch.device("cpu")), atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------------------------
# Schedulers
# --------------------------------------------------------------------------------------------


def test_inverse_scheduler_keeps_a_patched_steps_offset():
    # Stable Diffusion pipelines patch steps_offset after construction, leaving it in
    # `_use_default_values`, which `from_config` silently drops.
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False)
    config = dict(scheduler.config)
    config["steps_offset"] = 1
    scheduler._internal_dict = FrozenDict(config)
    assert DDIMInverseScheduler.from_config(scheduler.config).config.steps_offset == 0  # the trap itself

    pipe = StableDiffusionFastDragPipeline(**tiny_components(scheduler=scheduler))
    assert pipe.inverse_scheduler is None  # derived at call time from the scheduler
    assert pipe.ddim_inverse_scheduler.config.steps_offset == 1
    assert pipe.timesteps_for(10, 7)[0] == [1, 101, 201, 301, 401, 501, 601]


def test_sd15_pndm_scheduler_is_converted_to_ddim():
    pndm = PNDMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True,
        set_alpha_to_one=False, steps_offset=1,
    )
    pipe = StableDiffusionFastDragPipeline(**tiny_components(scheduler=pndm))
    assert isinstance(pipe.scheduler, DDIMScheduler)
    assert pipe.scheduler.config.steps_offset == 1
    assert pipe.scheduler.config.clip_sample is False and pipe.scheduler.config.set_alpha_to_one is False
    assert pipe.ddim_inverse_scheduler.config.set_alpha_to_one is False


def test_disagreeing_inverse_scheduler_is_rejected_before_any_unet_call(pipe):
    pipe.inverse_scheduler = DDIMInverseScheduler.from_config(pipe.scheduler.config, steps_offset=0)
    calls = count_unet_calls(pipe)
    with pytest.raises(ValueError, match="disagree"):
        drag(pipe)
    assert calls == []


# --------------------------------------------------------------------------------------------
# Consistency preservation
# --------------------------------------------------------------------------------------------


def spy_on_exchange(pipe, monkeypatch) -> list:
    """Log each UNet call's timestep as ("unet", t), and each exchange as (mode, slot, layer, batch, key out)."""
    log = []
    original = KVState.exchange

    def exchange(self, layer, key, value):
        out = original(self, layer, key, value)
        log.append((self.mode, int(self.step), layer, key.shape[0], out[0][:1].clone()))
        return out

    monkeypatch.setattr(KVState, "exchange", exchange)
    pipe.unet.register_forward_pre_hook(lambda module, args: log.append(("unet", int(args[1]))))
    return log


def by_timestep(log) -> list:
    """The exchanges of ``log`` as (mode, timestep of the UNet call, slot, layer, batch, key)."""
    rows, timestep = [], None
    for entry in log:
        if entry[0] == "unet":
            timestep = entry[1]
        else:
            rows.append((entry[0], timestep, *entry[1:]))
    return rows


@pytest.mark.parametrize("guidance_scale", [1.0, 3.0])
def test_each_up_block_layer_records_once_per_step_and_replays_at_the_same_step(pipe, monkeypatch, guidance_scale):
    raw = spy_on_exchange(pipe, monkeypatch)
    drag(pipe, guidance_scale=guidance_scale)
    log = by_timestep(raw)
    layers = up_block_self_attention_layers(pipe.unet.attn_processors)
    assert len(layers) == 2 and all(".attn1." in name for name in layers)
    inversion, sampling = pipe.timesteps_for(10, 7)

    recorded = [(t, layer) for mode, t, _, layer, _, _ in log if mode == "record"]
    replayed = [(t, layer) for mode, t, _, layer, _, _ in log if mode == "replay"]
    assert recorded == [(t, layer) for t in inversion for layer in layers]
    assert replayed == [(t, layer) for t in sampling for layer in layers]
    # Slot i holds inversion step i; sampling reads them backwards.
    assert [row[2] for row in log if row[0] == "record"] == [i for i in range(7) for _ in layers]
    assert [row[2] for row in log if row[0] == "replay"] == [6 - i for i in range(7) for _ in layers]
    # The replayed keys are the ones recorded at the same timestep, shared across the guidance batch.
    recorded_keys = {(t, layer): key for mode, t, _, layer, _, key in log if mode == "record"}
    batch = 2 if guidance_scale > 1 else 1
    for mode, t, _, layer, key_batch, key in log:
        if mode == "replay":
            assert torch.equal(key, recorded_keys[(t, layer)]) and key_batch == batch
        else:
            assert key_batch == 1  # inversion runs on the conditional branch alone


def test_bank_shapes_match_the_up_block_self_attention_layers(pipe):
    assert list(kv_shapes(pipe.unet, (16, 16))) == up_block_self_attention_layers(pipe.unet.attn_processors)
    assert set(kv_shapes(pipe.unet, (16, 16)).values()) == {(256, 16)}

    from diffusers import UNet2DConditionModel

    from fastdrag.apps.testing import SD15_UNET

    with torch.device("meta"):
        sd15 = UNet2DConditionModel(**SD15_UNET)
    shapes = kv_shapes(sd15, (64, 64))
    assert len(shapes) == 9
    assert sorted(set(shapes.values())) == [(256, 1280), (1024, 640), (4096, 320)]
    # The method's figure: about 13.8 M recorded values per step at 512x512.
    assert 2 * sum(tokens * dim for tokens, dim in shapes.values()) == 13_762_560
    # Odd sizes round up at each downsampling, as the UNet's strided convolutions do: 33 -> 17 -> 9.
    assert sorted({tokens for tokens, _ in kv_shapes(sd15, (33, 33)).values()}) == [81, 289, 1089]


def test_one_bank_is_kept_and_reused_across_calls(pipe):
    drag(pipe)
    bank = pipe.attention_replay.bank
    assert isinstance(bank, KVBank) and bank.steps == 7 and len(bank.keys) == 2
    # 2 layers x (keys, values) x 7 steps x 16x16 tokens x 16 channels, float32.
    assert bank.nbytes == 2 * 2 * 7 * 256 * 16 * 4
    addresses = [t.data_ptr() for t in bank.keys.values()]
    drag(pipe, handle_points=[(5, 5)], target_points=[(9, 5)])
    pipe.invert(tiny_image(), prompt="a cat")
    assert pipe.attention_replay.bank is bank and [t.data_ptr() for t in bank.keys.values()] == addresses
    drag(pipe, num_inference_steps=20, inversion_strength=0.5)  # another shape: a new bank
    assert pipe.attention_replay.bank.steps == 10
    assert not any(isinstance(p, attention_processors.FastDragAttnProcessor) for p in processors_of(pipe).values())


def test_consistency_on_and_off_differ(pipe):
    on = drag(pipe, output_type="np").images
    off = drag(pipe, output_type="np", preserve_consistency=False).images
    assert np.abs(on - off).max() > 1e-3


def test_off_records_nothing_and_installs_nothing(pipe, monkeypatch):
    log = spy_on_exchange(pipe, monkeypatch)
    drag(pipe, preserve_consistency=False)
    assert [entry for entry in log if entry[0] != "unet"] == []
    assert pipe.attention_replay.state is None


def test_redrag_from_cached_inversion_matches_full_call_and_runs_only_sampling(pipe):
    full = drag(pipe, output_type="np").images
    inversion = pipe.invert(tiny_image(), prompt="a cat")
    assert inversion.timesteps == (1, 101, 201, 301, 401, 501, 601)
    assert inversion.kv_bank.steps == 7 and len(inversion.kv_bank.keys) == 2
    assert inversion.kv_bank is not pipe.attention_replay.bank  # a copy: later calls overwrite the pipeline's
    kept = inversion.kv_bank.clone()
    calls = count_unet_calls(pipe)
    again = pipe(handle_points=HANDLES, target_points=TARGETS, inversion=inversion, output_type="np").images
    assert len(calls) == 7
    np.testing.assert_array_equal(full, again)
    # A full call on another image in between does not disturb the cached inversion.
    drag(pipe, image=tiny_image(3))
    # The inversion is not consumed: a second, different drag works from it too.
    other = pipe(handle_points=[(5, 5)], target_points=[(9, 5)], inversion=inversion, output_type="np").images
    assert not np.array_equal(other, again)
    np.testing.assert_array_equal(
        pipe(handle_points=HANDLES, target_points=TARGETS, inversion=inversion, output_type="np").images, full
    )
    assert all(torch.equal(kept.keys[n], inversion.kv_bank.keys[n]) for n in kept.keys)


def test_inversion_rejects_conflicting_arguments(pipe):
    inversion = pipe.invert(tiny_image(), prompt="a cat", preserve_consistency=False)
    with pytest.raises(ValueError, match="`num_inference_steps`=20 differs"):
        pipe(handle_points=HANDLES, target_points=TARGETS, inversion=inversion, num_inference_steps=20)
    with pytest.raises(ValueError, match="holds no keys/values"):
        pipe(handle_points=HANDLES, target_points=TARGETS, inversion=inversion)
    with pytest.raises(ValueError, match="`image` is"):
        pipe(torch.zeros(3, 16, 16), HANDLES, TARGETS, inversion=inversion, preserve_consistency=False)
    with pytest.raises(TypeError, match="`inversion` must come from"):
        pipe(handle_points=HANDLES, target_points=TARGETS, inversion={"latents": 0})


# --------------------------------------------------------------------------------------------
# Processors are restored
# --------------------------------------------------------------------------------------------


def test_processors_identical_after_call_and_after_exception_in_callback(pipe):
    before = processors_of(pipe)
    drag(pipe)
    assert processors_of(pipe) == before and all(processors_of(pipe)[k] is v for k, v in before.items())

    def explode(pipeline, i, t, kwargs):
        raise RuntimeError("stop at step %d" % i)

    with pytest.raises(RuntimeError, match="stop at step 0"):
        drag(pipe, callback_on_step_end=explode)
    assert all(processors_of(pipe)[k] is v for k, v in before.items())


def test_processors_restored_after_keyboard_interrupt_with_attention_slicing(pipe):
    pipe.enable_attention_slicing()
    before = processors_of(pipe)
    assert "Sliced" in type(next(iter(before.values()))).__name__

    def interrupt(pipeline, i, t, kwargs):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        drag(pipe, callback_on_step_end=interrupt)
    assert all(processors_of(pipe)[k] is v for k, v in before.items())


def test_callback_can_replace_latents_and_interrupt(pipe):
    seen = []

    def callback(pipeline, i, t, kwargs):
        seen.append((i, t))
        if i == 2:
            pipeline._interrupt = True
        return {"latents": kwargs["latents"]}

    drag(pipe, callback_on_step_end=callback)
    assert seen == [(0, 601), (1, 501), (2, 401)]


# --------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------

BAD_INPUTS = [
    (dict(handle_points=[(32, 5), (1, 1)]), ValueError, r"`handle_points` has points outside.*0 <= x < 32"),
    (dict(target_points=[(5, -1), (3, 3)]), ValueError, r"`target_points` has points outside"),
    (dict(handle_points=[(float("nan"), 5), (1, 1)]), ValueError, "`handle_points` contains a non-finite"),
    (dict(target_points=[(1, 1)]), ValueError, "same number of points"),
    (dict(handle_points=[], target_points=[]), ValueError, "`handle_points` is empty"),
    (dict(handle_points=None), ValueError, "`handle_points` and `target_points` are required"),
    (dict(inversion_strength=0.0), ValueError, r"`inversion_strength` must be in \(0, 1\]"),
    (dict(inversion_strength=1.5), ValueError, r"`inversion_strength` must be in \(0, 1\]"),
    (dict(inversion_strength=0.04), ValueError, "rounds to 0 steps"),
    (dict(num_inference_steps=0), ValueError, "`num_inference_steps` must be an integer >= 1"),
    (dict(mask=np.ones((16, 32))), ValueError, r"`mask` must have the image's size"),
    (dict(mask=np.zeros((32, 32))), ValueError, "`mask` is empty"),
    (dict(mask="mask.png"), TypeError, "`mask` must be"),
    (dict(image="cat.png"), TypeError, "`image` must be a PIL.Image.Image"),
    (dict(image=torch.rand(3, 31, 32)), ValueError, "multiples of the VAE scale factor 2"),
    (dict(image=torch.rand(3, 32, 32) * 2), ValueError, r"`image` values must lie in \[0, 1\]"),
    (dict(image=None), ValueError, "`image` is required"),
    (dict(fill="blur"), ValueError, "`fill` must be one of"),
    (dict(output_type="jpeg"), ValueError, "`output_type` must be one of"),
    (dict(generator=0), TypeError, "`generator` must be a torch.Generator"),
    (dict(callback_on_step_end_tensor_inputs=["noise_pred"]), ValueError, "callback_on_step_end_tensor_inputs"),
]


@pytest.mark.parametrize("kwargs, error, message", BAD_INPUTS)
def test_bad_input_is_rejected_before_any_model_runs(pipe, kwargs, error, message):
    calls = count_unet_calls(pipe)
    pipe.vae.register_forward_pre_hook(lambda *a: calls.append("vae"))
    pipe.vae.encoder.register_forward_pre_hook(lambda *a: calls.append("vae"))
    pipe.text_encoder.register_forward_pre_hook(lambda *a: calls.append("text"))
    before = processors_of(pipe)
    with pytest.raises(error, match=message):
        drag(pipe, **kwargs)
    assert calls == []
    assert all(processors_of(pipe)[k] is v for k, v in before.items())


def test_fill_modes_and_guidance_run(pipe):
    outputs = {mode: drag(pipe, fill=mode, output_type="np").images for mode in ("bnni", "original", "zeros")}
    assert not np.array_equal(outputs["bnni"], outputs["zeros"])
    noise = drag(pipe, fill="noise", generator=torch.Generator().manual_seed(0), output_type="np").images
    assert np.isfinite(noise).all()
    guided = drag(pipe, guidance_scale=4.0, negative_prompt="blurry", output_type="np").images
    assert guided.shape == (1, IMAGE_SIZE, IMAGE_SIZE, 3)


def test_accepts_pil_uint8_array_and_batched_tensor(pipe):
    tensor = tiny_image()
    array = (tensor.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    from_array = drag(pipe, image=array, output_type="np").images
    from_pil = drag(pipe, image=Image.fromarray(array), output_type="np").images
    np.testing.assert_array_equal(from_array, from_pil)
    from_batched = drag(pipe, image=tensor[None], output_type="np").images
    assert from_batched.shape == from_array.shape


def test_timing_phases_times_each_phase_and_sums_over_calls(pipe):
    from fastdrag.timing import PHASES

    with pipe.timing_phases() as times:
        drag(pipe)
    assert set(times) == set(PHASES) and all(seconds > 0 for seconds in times.values())
    assert not pipe._clock.collecting

    inversion = pipe.invert(tiny_image(), prompt="a cat")
    with pipe.timing_phases() as redrag:
        pipe(handle_points=HANDLES, target_points=TARGETS, inversion=inversion)
        once = dict(redrag)
        pipe(handle_points=HANDLES, target_points=TARGETS, inversion=inversion)
    assert set(once) == {"warp", "sampling", "decode"}
    assert all(redrag[phase] > once[phase] for phase in once)


def test_timing_phases_is_switched_off_after_an_exception(pipe):
    with pytest.raises(RuntimeError), pipe.timing_phases():
        raise RuntimeError("boom")
    assert not pipe._clock.collecting


def test_timing_phases_are_per_call_under_threads(pipe):
    """Two threads timing their own calls at once each get their own phases (Gradio concurrency > 1)."""
    import threading

    from fastdrag.timing import PHASES

    inversion = pipe.invert(tiny_image(), prompt="a cat")
    opened, first_done = threading.Barrier(2), threading.Event()
    got: dict[str, dict] = {}
    errors = []

    def redrag():  # opens its block first, calls while the other block is open too
        try:
            with pipe.timing_phases() as times:
                opened.wait()
                pipe(handle_points=HANDLES, target_points=TARGETS, inversion=inversion)
            got["redrag"] = dict(times)
        except Exception as error:  # noqa: BLE001 - reported by the assertion below
            errors.append(error)
        finally:
            first_done.set()

    def full():
        try:
            with pipe.timing_phases() as times:
                opened.wait()
                first_done.wait()
                drag(pipe)
            got["full"] = dict(times)
        except Exception as error:  # noqa: BLE001
            errors.append(error)

    threads = [threading.Thread(target=redrag), threading.Thread(target=full)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    assert set(got["redrag"]) == {"warp", "sampling", "decode"}
    assert set(got["full"]) == set(PHASES)


# --------------------------------------------------------------------------------------------
# SD 2.x: v-prediction
# --------------------------------------------------------------------------------------------


def oracle_unet(pipe, x0: torch.Tensor, noise: torch.Tensor, prediction_type: str):
    """A stand-in for the UNet that knows the clean latent ``x0`` and the noise: for a sample
    ``a * x0 + b * noise`` (solved by least squares, so whatever alpha a scheduler assigns it) it
    predicts exactly, as ``prediction_type`` asks: ``noise``, or ``v = a * noise - b * x0`` (Diffusers'
    DDIM and inverse DDIM schedulers read it so). DDIM then inverts and samples back exactly."""
    basis = torch.stack([x0.flatten(), noise.flatten()], 1).double()

    def forward(sample, timestep, encoder_hidden_states=None, added_cond_kwargs=None, return_dict=True, **kwargs):
        a, b = torch.linalg.lstsq(basis, sample.flatten().double()[:, None]).solution.flatten().tolist()
        return ((a * noise - b * x0) if prediction_type == "v_prediction" else noise,)

    pipe.unet.forward = forward


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_a_v_prediction_scheduler_inverts_and_samples_back_exactly(prediction_type):
    # SD 2.x's 768 model predicts v. A zero-length drag through an exact model must give back the
    # encoded image, which holds only if inversion and sampling both read v as v.
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=True,
        steps_offset=0, prediction_type=prediction_type,
    )
    pipe = StableDiffusionFastDragPipeline(**tiny_components(scheduler=scheduler))
    pipe.set_progress_bar_config(disable=True)
    assert pipe.ddim_inverse_scheduler.config.prediction_type == prediction_type
    x0 = pipe.encode_image(tiny_image()[None], torch.device("cpu"))
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    oracle_unet(pipe, x0, noise, prediction_type)
    still = [(10.0, 12.0)]
    args = dict(handle_points=still, target_points=still, preserve_consistency=False, output_type="latent")
    latents = pipe(tiny_image(), **args).images
    torch.testing.assert_close(latents, x0, atol=1e-4, rtol=0)

    # The same model read as the other prediction type does not come back: the test can fail.
    other = "epsilon" if prediction_type == "v_prediction" else "v_prediction"
    pipe.inverse_scheduler = DDIMInverseScheduler.from_config(
        {**pipe.ddim_inverse_scheduler.config, "prediction_type": other}
    )
    assert (pipe(tiny_image(), **args).images - x0).abs().max() > 0.05


# --------------------------------------------------------------------------------------------
# Guidance turned off by a callback, and calls that must not depend on the call before
# --------------------------------------------------------------------------------------------


def test_a_cfg_cutoff_callback_samples_the_rest_without_guidance(pipe):
    from diffusers.callbacks import SDCFGCutoffCallback

    batches = []
    pipe.unet.register_forward_pre_hook(lambda module, args: batches.append(args[0].shape[0]))
    cutoff = SDCFGCutoffCallback(cutoff_step_index=2, cutoff_step_ratio=None)
    cut = drag(pipe, guidance_scale=3.0, negative_prompt="blurry", callback_on_step_end=cutoff, output_type="np")
    assert batches == [1] * 7 + [2] * 3 + [1] * 4  # inversion, guided steps 0-2, then the prompt alone
    guided = drag(pipe, guidance_scale=3.0, negative_prompt="blurry", output_type="np").images
    assert np.abs(cut.images - guided).max() > 1e-4


def test_a_callback_returning_other_prompt_embeds_is_refused(pipe):
    def double(pipeline, i, t, kwargs):
        return {"prompt_embeds": torch.cat([kwargs["prompt_embeds"]] * 2)}

    with pytest.raises(ValueError, match="`callback_on_step_end` returned `prompt_embeds` of shape"):
        drag(pipe, callback_on_step_end=double, callback_on_step_end_tensor_inputs=["prompt_embeds"])


def test_invert_does_not_depend_on_the_guidance_of_the_call_before():
    pipe = StableDiffusionFastDragPipeline(**tiny_components(text_encoder=None, tokenizer=None))
    pipe.set_progress_bar_config(disable=True)
    embeds = torch.randn(1, 16, 32, generator=torch.Generator().manual_seed(0))
    first = pipe.invert(tiny_image(), prompt_embeds=embeds)
    pipe(tiny_image(), HANDLES, TARGETS, prompt_embeds=embeds, negative_prompt_embeds=embeds * 0, guidance_scale=3.0)
    assert torch.equal(pipe.invert(tiny_image(), prompt_embeds=embeds).latents, first.latents)
    with pytest.raises(ValueError, match="no text encoder or tokenizer: pass `negative_prompt_embeds`"):
        pipe(tiny_image(), HANDLES, TARGETS, prompt_embeds=embeds, guidance_scale=3.0)


def test_embeddings_of_another_width_are_refused_before_any_model_runs(pipe):
    with pytest.raises(ValueError, match="`prompt_embeds` must be 32 wide"):
        drag(pipe, prompt=None, prompt_embeds=torch.zeros(1, 16, 64))
    assert pipe.attention_replay.bank is None
