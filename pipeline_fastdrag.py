"""StableDiffusionFastDragPipeline: FastDrag (NeurIPS 2024) one-step drag editing for Diffusers.

The method: DDIM-invert the image, warp the inverted latent once (latent warpage function,
relocation, BNNI), then sample it back while the up blocks' self-attention replays the keys and
values recorded during inversion. See ``docs/method.md``.

Loadable as a package (``from fastdrag import StableDiffusionFastDragPipeline``), as a local
``custom_pipeline`` file, or from a Hub repo whose entry file is ``pipeline.py``. This file imports
each sibling module it uses directly, as Diffusers' local loading copies only those.
"""

from collections.abc import Callable

import numpy as np
import PIL.Image
import torch
from diffusers import AutoencoderKL, DDIMInverseScheduler, DiffusionPipeline, SchedulerMixin, UNet2DConditionModel
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.image_processor import VaeImageProcessor
from diffusers.loaders import StableDiffusionLoraLoaderMixin, TextualInversionLoaderMixin
from diffusers.pipelines.pipeline_utils import StableDiffusionMixin
from diffusers.pipelines.stable_diffusion import StableDiffusionPipelineOutput
from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
from diffusers.utils import replace_example_docstring
from transformers import CLIPImageProcessor, CLIPTextModel, CLIPTokenizer

# Every sibling the core imports is imported here too: Diffusers copies only this file's own imports.
from .attention_processors import FastDragAttnProcessor  # noqa: F401
from .cuda_graphs import GraphCache  # noqa: F401
from .fastdrag_core import (
    Conditioning,
    FastDragInversion,
    FastDragMixin,
    check_embeddings,
    check_flag,
    check_same_shape,
    check_text_or_embeddings,
    check_token_counts,
    ddim_scheduler_from,
    one_call_at_a_time,
    to_device,
)
from .inputs import (
    DEFAULT_FILL,
    DEFAULT_GUIDANCE_SCALE,
    DEFAULT_MODE,
    DEFAULT_STEPS,
    DEFAULT_STRENGTH,
    MAX_DRAGS,
    MAX_IMAGE_PIXELS,
    EditInputs,
    check_text,
    image_to_tensor,
)
from .timing import PhaseClock  # noqa: F401
from .warpage import warp_latents  # noqa: F401


EXAMPLE_DOC_STRING = """
    Examples:
        ```py
        >>> import torch
        >>> from PIL import Image
        >>> from fastdrag import StableDiffusionFastDragPipeline

        >>> pipe = StableDiffusionFastDragPipeline.from_pretrained(
        ...     "stable-diffusion-v1-5/stable-diffusion-v1-5", torch_dtype=torch.float16
        ... ).to("cuda")
        >>> image = Image.open("cat.png")  # 512x512
        >>> mask = Image.open("cat_mask.png")  # white (or painted alpha) = may move
        >>> out = pipe(image, handle_points=[(250, 180)], target_points=[(290, 160)], mask=mask, prompt="a cat")
        >>> out.images[0].save("cat_dragged.png")

        >>> # Re-drag the same image without inverting it again: only the sampling half runs.
        >>> inversion = pipe.invert(image, prompt="a cat")
        >>> out = pipe(handle_points=[(250, 180)], target_points=[(230, 150)], mask=mask, inversion=inversion)
        ```
"""

class StableDiffusionFastDragPipeline(
    FastDragMixin, DiffusionPipeline, StableDiffusionMixin, TextualInversionLoaderMixin, StableDiffusionLoraLoaderMixin
):
    r"""
    FastDrag: one-step drag-based image editing with Stable Diffusion 1.x.

    This model inherits from [`DiffusionPipeline`]; see its documentation for the generic methods
    (downloading, saving, running on a device, offloading, ...). It also has the loading methods:
        - [`~loaders.TextualInversionLoaderMixin.load_textual_inversion`] for textual inversion embeddings
        - [`~loaders.StableDiffusionLoraLoaderMixin.load_lora_weights`] for LoRA weights (UNet and text encoder)
        - [`~loaders.StableDiffusionLoraLoaderMixin.save_lora_weights`] for saving LoRA weights

    Every component may be ``None`` for a pipeline that runs part of the work (say, text encoding
    alone, as Diffusers' isolation tests do); a call needs the ones its work uses.

    Args:
        vae ([`AutoencoderKL`], or any Diffusers VAE: [`AutoencoderTiny`], [`AsymmetricAutoencoderKL`],
            [`ConsistencyDecoderVAE`]): encodes and decodes images to and from latents.
        text_encoder ([`~transformers.CLIPTextModel`]): the frozen CLIP text encoder.
        tokenizer ([`~transformers.CLIPTokenizer`]): its tokenizer.
        unet ([`UNet2DConditionModel`]): the denoiser. An LCM-style UNet (with
            ``time_cond_proj_dim``) works too, as in the authors' release.
        scheduler ([`DDIMScheduler`]): sampling scheduler. Another scheduler's config is converted
            to DDIM (with ``clip_sample=False`` unless set), as FastDrag samples with DDIM (eta = 0).
        safety_checker ([`StableDiffusionSafetyChecker`], *optional*): flags NSFW outputs.
        feature_extractor ([`~transformers.CLIPImageProcessor`], *optional*): for the safety checker.
        inverse_scheduler ([`DDIMInverseScheduler`], *optional*): when ``None``, the call inverts with
            one built from ``scheduler``'s config, ``steps_offset`` included
            ([`~StableDiffusionFastDragPipeline.ddim_inverse_scheduler`]); it stays ``None``, and is
            saved as such.
    """

    model_cpu_offload_seq = "text_encoder->unet->vae"
    _optional_components = ["safety_checker", "feature_extractor", "inverse_scheduler"]
    _exclude_from_cpu_offload = ["safety_checker"]
    _callback_tensor_inputs = ["latents", "prompt_embeds"]

    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        unet: UNet2DConditionModel,
        scheduler: SchedulerMixin,
        safety_checker: StableDiffusionSafetyChecker | None = None,
        feature_extractor: CLIPImageProcessor | None = None,
        inverse_scheduler: DDIMInverseScheduler | None = None,
        requires_safety_checker: bool = True,
    ):
        super().__init__()
        if safety_checker is not None and feature_extractor is None:
            raise ValueError(
                "`feature_extractor` is required with a `safety_checker`; pass `safety_checker=None` to run without one."
            )
        scheduler = ddim_scheduler_from(scheduler) if scheduler is not None else None
        self.register_modules(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            scheduler=scheduler,
            safety_checker=safety_checker,
            feature_extractor=feature_extractor,
            inverse_scheduler=inverse_scheduler,
        )
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1) if self.vae is not None else 8
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)
        self.register_to_config(requires_safety_checker=requires_safety_checker)
        self._init_fastdrag()

    # ----------------------------------------------------------------------------------------
    # Inputs
    # ----------------------------------------------------------------------------------------

    def check_inputs(
        self,
        image,
        handle_points,
        target_points,
        mask,
        prompt,
        negative_prompt,
        prompt_embeds,
        negative_prompt_embeds,
        num_inference_steps,
        inversion_strength,
        guidance_scale,
        fill,
        mode,
        preserve_consistency,
        inversion,
        generator,
        output_type,
        callback_on_step_end,
        callback_on_step_end_tensor_inputs,
        max_image_pixels: int = MAX_IMAGE_PIXELS,
        max_drags: int = MAX_DRAGS,
    ) -> EditInputs:
        """Raise ``ValueError`` or ``TypeError`` on anything a caller can get wrong, before any model
        runs; return the image, mask and drags checked and converted (see ``inputs.EditInputs``)."""
        self.check_prompt(prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, inversion is not None)
        self.check_schedule(
            DEFAULT_STEPS if num_inference_steps is None else num_inference_steps,
            DEFAULT_STRENGTH if inversion_strength is None else inversion_strength,
        )
        if inversion is not None:
            self.check_inversion(
                inversion, image, {"prompt": prompt},
                {"prompt_embeds": prompt_embeds, "negative_prompt_embeds": negative_prompt_embeds},
                num_inference_steps, inversion_strength, preserve_consistency, max_image_pixels,
            )
        edit = self.check_edit(image, handle_points, target_points, mask, fill, mode, inversion, max_image_pixels,
                               max_drags)
        self.check_call_options(
            guidance_scale, preserve_consistency, generator, output_type, callback_on_step_end,
            callback_on_step_end_tensor_inputs,
        )
        if guidance_scale > 1 and negative_prompt_embeds is None and not self._can_encode_text:
            raise ValueError(
                "guidance (`guidance_scale` > 1) needs the negative prompt's embeddings, and this pipeline has no "
                "text encoder or tokenizer: pass `negative_prompt_embeds`"
            )
        check_token_counts(
            prompt_embeds if inversion is None else inversion.prompt_embeds, negative_prompt_embeds,
            self.tokenizer.model_max_length if self.tokenizer is not None else None,
            encodes_negative=guidance_scale > 1 and negative_prompt_embeds is None,
        )
        self.check_unet_kind()
        return edit

    def check_unet_kind(self) -> None:
        """An SDXL UNet (it takes added conditioning) belongs in the SDXL pipeline."""
        if self.unet is not None and getattr(self.unet.config, "addition_embed_type", None) == "text_time":
            raise ValueError(
                "this UNet is an SDXL UNet (`addition_embed_type='text_time'`): load it with "
                "StableDiffusionXLFastDragPipeline"
            )

    @property
    def _can_encode_text(self) -> bool:
        return self.text_encoder is not None and self.tokenizer is not None

    def check_prompt(self, prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, cached: bool = False) -> None:
        """Texts are strings; each may be given as text or as embeddings, not both; embeddings are
        ``(1, tokens, dim)`` tensors as wide as the UNet's cross-attention; without a text encoder
        only embeddings will do."""
        check_text(prompt, "prompt")
        check_text(negative_prompt, "negative_prompt")
        width = self.unet.config.cross_attention_dim if self.unet is not None else None
        for text, name, embeds in (
            (prompt, "prompt", prompt_embeds), (negative_prompt, "negative_prompt", negative_prompt_embeds)
        ):
            check_text_or_embeddings({name: text}, f"{name}_embeds", embeds)
            check_embeddings(embeds, f"{name}_embeds", 3, width if isinstance(width, int) else None)
        check_same_shape(prompt_embeds, "prompt_embeds", negative_prompt_embeds, "negative_prompt_embeds")
        if prompt_embeds is None and not cached and not self._can_encode_text:
            raise ValueError("this pipeline has no text encoder or tokenizer: pass `prompt_embeds`")

    # ----------------------------------------------------------------------------------------
    # Models
    # ----------------------------------------------------------------------------------------

    def encode_prompt(
        self,
        prompt: str | None,
        device: torch.device | str | None = None,
        num_images_per_prompt: int = 1,
        do_classifier_free_guidance: bool = False,
        negative_prompt: str | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        lora_scale: float | None = None,
        clip_skip: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        r"""
        Encode the prompt (and, under guidance, the negative prompt) into text encoder hidden states.

        Args:
            prompt (`str`, *optional*): the text; ``None`` with ``prompt_embeds``.
            device (`torch.device` or `str`, *optional*): where the embeddings go; the execution
                device when not given.
            num_images_per_prompt (`int`): copies along the batch (FastDrag itself uses 1).
            do_classifier_free_guidance (`bool`): also return the negative embedding.
            negative_prompt (`str`, *optional*): the unconditional text; "" when not given.
            prompt_embeds, negative_prompt_embeds (`torch.Tensor`, *optional*): ready embeddings,
                used as they are instead of encoding the text.
            lora_scale (`float`, *optional*): scale of the text encoder's LoRA layers, if any.
            clip_skip (`int`, *optional*): layers skipped from the end of CLIP (1: the pre-final one).

        Returns:
            `(prompt_embeds, negative_prompt_embeds)`: ``(num_images_per_prompt, tokens, dim)`` each;
            the negative one is ``None`` without guidance.
        """
        # Diffusers' own tests pass the device by name ("cpu").
        device = torch.device(device) if device is not None else self._execution_device
        with self.lora_scaled([self.text_encoder] if self.text_encoder is not None else [], lora_scale):
            if prompt_embeds is None:
                prompt_embeds = self._encode_text(prompt or "", device, clip_skip)
            if do_classifier_free_guidance and negative_prompt_embeds is None:
                negative_prompt_embeds = self._encode_text(negative_prompt or "", device, None, prompt_embeds.shape[1])
        dtype = next((m.dtype for m in (self.text_encoder, self.unet) if m is not None), prompt_embeds.dtype)
        prompt_embeds = prompt_embeds.to(device=device, dtype=dtype).repeat_interleave(num_images_per_prompt, 0)
        if not do_classifier_free_guidance:
            return prompt_embeds, None
        negative_prompt_embeds = negative_prompt_embeds.to(device=device, dtype=dtype)
        return prompt_embeds, negative_prompt_embeds.repeat_interleave(num_images_per_prompt, 0)

    def _encode_text(
        self, text: str, device: torch.device, clip_skip: int | None, max_length: int | None = None
    ) -> torch.Tensor:
        """``(1, tokens, dim)`` CLIP hidden states of one text, textual inversion tokens expanded."""
        text = self.maybe_convert_prompt(text, self.tokenizer)
        tokens = self.tokenizer(
            text,
            padding="max_length",
            max_length=max_length or self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        use_mask = getattr(self.text_encoder.config, "use_attention_mask", False)
        mask = to_device(tokens.attention_mask, device) if use_mask else None
        output = self.text_encoder(to_device(tokens.input_ids, device), attention_mask=mask,
                                   output_hidden_states=clip_skip is not None)
        if clip_skip is None:
            return output[0]
        # The final layer norm still applies to the earlier layer, as in Stable Diffusion's pipelines.
        return self.text_encoder.text_model.final_layer_norm(output[-1][-(clip_skip + 1)])

    def run_safety_checker(self, image: torch.Tensor, device: torch.device, dtype: torch.dtype):
        if self.safety_checker is None:
            return image, None
        pil_images = self.image_processor.postprocess(image, output_type="pil")
        checker_input = self.feature_extractor(pil_images, return_tensors="pt").to(device)
        return self.safety_checker(images=image, clip_input=checker_input.pixel_values.to(dtype))

    def _conditioning(
        self,
        prompt: str | None,
        negative_prompt: str | None,
        prompt_embeds: torch.Tensor | None,
        negative_prompt_embeds: torch.Tensor | None,
        device: torch.device,
        guided: bool,
    ) -> tuple[Conditioning, Conditioning | None]:
        """:meth:`encode_prompt` for one image, timed as the text phase when it encodes anything:
        the conditioning, and when ``guided`` the unconditional one."""
        with self.text_phase(prompt_embeds is None or (guided and negative_prompt_embeds is None)):
            embeds, negative = self.encode_prompt(
                prompt, device, 1, guided, negative_prompt, prompt_embeds, negative_prompt_embeds
            )
        return Conditioning(embeds), Conditioning(negative) if negative is not None else None

    @torch.no_grad()
    @one_call_at_a_time
    def invert(
        self,
        image,
        prompt: str | None = None,
        num_inference_steps: int = DEFAULT_STEPS,
        inversion_strength: float = DEFAULT_STRENGTH,
        preserve_consistency: bool = True,
        prompt_embeds: torch.Tensor | None = None,
        max_image_pixels: int = MAX_IMAGE_PIXELS,
    ) -> FastDragInversion:
        """Encode and DDIM-invert ``image`` once, recording the self-attention keys/values.

        Pass the result as ``inversion=`` to the pipeline call to drag the same image again and
        again: each drag then costs only the warp and the sampling half. It belongs to this
        pipeline's weights and dtype: a call that would mix it with others raises. ``prompt``
        (default "") or ``prompt_embeds`` conditions it, as in the call. ``max_image_pixels`` is
        the call's size limit.
        """
        self.check_image(image, max_image_pixels)
        self.check_prompt(prompt, None, prompt_embeds, None)
        check_flag(preserve_consistency, "preserve_consistency")
        self.check_unet_kind()
        self.check_schedule(num_inference_steps, inversion_strength)
        prompt = None if prompt_embeds is not None else prompt or ""
        schedule = self.schedule(num_inference_steps, inversion_strength)
        cond, _ = self._conditioning(prompt, None, prompt_embeds, None, self._execution_device, guided=False)
        inversion = self.make_inversion(
            image_to_tensor(image), cond, {"prompt": prompt}, schedule, inversion_strength, preserve_consistency
        )
        self.maybe_free_model_hooks()
        return inversion

    # ----------------------------------------------------------------------------------------
    # The call
    # ----------------------------------------------------------------------------------------

    @torch.no_grad()
    @one_call_at_a_time
    @replace_example_docstring(EXAMPLE_DOC_STRING)
    def __call__(
        self,
        image: PIL.Image.Image | np.ndarray | torch.Tensor | None = None,
        handle_points=None,
        target_points=None,
        mask: PIL.Image.Image | np.ndarray | torch.Tensor | None = None,
        prompt: str | None = None,
        num_inference_steps: int | None = None,
        inversion_strength: float | None = None,
        guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
        negative_prompt: str | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        fill: str = DEFAULT_FILL,
        mode: str = DEFAULT_MODE,
        preserve_consistency: bool = True,
        inversion: FastDragInversion | None = None,
        generator: torch.Generator | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable[[DiffusionPipeline, int, int, dict], dict]
        | PipelineCallback
        | MultiPipelineCallbacks
        | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],
        max_image_pixels: int = MAX_IMAGE_PIXELS,
        max_drags: int = MAX_DRAGS,
    ):
        r"""
        Drag the content of ``image`` from each handle point to its target point.

        Args:
            image (`PIL.Image.Image`, `np.ndarray`, `torch.Tensor`, or a list of one):
                The image: PIL in any mode (16-bit read by value, transparency over white), an
                ``(H, W, 3)`` or ``(1, H, W, 3)`` array (uint8, uint16 or float in [0, 1]), or a
                ``(3, H, W)``/``(1, 3, H, W)`` float tensor in [0, 1]. H and W must be multiples of
                ``pipe.vae_scale_factor`` (8 for SD). May be left out when ``inversion`` is given;
                if both are given they must be the same image.
            handle_points, target_points (sequence of `(x, y)`):
                Image pixels, ``x`` the column and ``y`` the row; the same number of each, at least
                one. ``0 <= x < W``, ``0 <= y < H``; fractions allowed.
            mask (`PIL.Image.Image`, `np.ndarray` or `torch.Tensor`, *optional*):
                ``(H, W)``, nonzero where content may move; a mask with a non-uniform alpha channel
                is read from its alpha. ``None`` lets the whole image move.
            prompt (`str`, *optional*): text condition for every UNet call; default "" (or the
                inversion's prompt).
            num_inference_steps (`int`, *optional*): DDIM schedule length; default 10 (or the
                inversion's).
            inversion_strength (`float`, *optional*): fraction of the schedule inverted, in (0, 1];
                default 0.7 (or the inversion's). ``round(strength * steps)`` UNet calls invert and
                as many sample.
            guidance_scale (`float`, defaults to 1.0): classifier-free guidance while sampling, in
                [0, 100]; 1.0 (the method's default) or less turns it off. Inversion never uses guidance.
            negative_prompt (`str`, *optional*): the unconditional text when guidance is on.
            prompt_embeds (`torch.Tensor`, *optional*): ``(1, tokens, dim)`` text embedding to use
                instead of ``prompt`` (prompt weighting, ...).
            negative_prompt_embeds (`torch.Tensor`, *optional*): the same for ``negative_prompt``.
            fill (`str`, defaults to `"bnni"`): how the pixels left empty by the warp are filled:
                `"bnni"`, `"original"`, `"zeros"` or `"noise"`.
            mode (`str`, defaults to `"drag"`): the one-step edit. `"drag"` warps the content from
                the handles to the targets; `"move"` and `"copy"` take exactly one drag and the
                object's `mask`, and paste the object at the drag's offset (rounded to whole latent
                pixels), `"move"` also filling the place it left by `fill`.
            preserve_consistency (`bool`, defaults to `True`): replay the self-attention keys and
                values recorded during inversion while sampling.
            inversion (`FastDragInversion`, *optional*): the result of `pipe.invert(image, ...)`;
                skips encoding and inversion. It is not modified, so it can serve many drags.
            generator (`torch.Generator`, *optional*): used by ``fill="noise"`` only.
            output_type (`str`, defaults to `"pil"`): `"pil"`, `"np"`, `"pt"` or `"latent"`.
            return_dict (`bool`, defaults to `True`): return a `StableDiffusionPipelineOutput`.
            callback_on_step_end (`Callable`, *optional*): called after each sampling step as
                ``callback_on_step_end(pipe, i, t, callback_kwargs)``; may return new ``latents``.
            callback_on_step_end_tensor_inputs (`list[str]`): tensors passed to the callback.
            max_image_pixels (`int`, defaults to 4,194,304 = 2048x2048): a larger image is refused
                before anything of its size is allocated; raise it for larger images your device
                can hold. Diffusers pipelines cap nothing; this one refuses at once what would
                otherwise fail in an allocation (or be stopped by the OOM killer) much later.
            max_drags (`int`, defaults to 256): more drags are refused, counted before conversion.

        Examples:

        Returns:
            [`~pipelines.stable_diffusion.StableDiffusionPipelineOutput`] or `tuple`: the edited
            images, and NSFW flags (``None`` without a safety checker).
        """
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs

        # 1. Check inputs. Raise error if not correct, before any model runs.
        edit = self.check_inputs(
            image, handle_points, target_points, mask, prompt, negative_prompt, prompt_embeds, negative_prompt_embeds,
            num_inference_steps, inversion_strength, guidance_scale, fill, mode, preserve_consistency, inversion,
            generator, output_type, callback_on_step_end, callback_on_step_end_tensor_inputs, max_image_pixels,
            max_drags,
        )

        # 2. Define call parameters: a cached inversion brings its prompt and schedule.
        if inversion is not None:
            prompt_embeds, num_inference_steps, inversion_strength = (
                inversion.prompt_embeds, inversion.num_inference_steps, inversion.inversion_strength
            )
        schedule = self.schedule(num_inference_steps, inversion_strength)
        self.start_call(guidance_scale, schedule)
        device = self._execution_device

        # 3. Preprocess image, mask and drags, and send them to the device.
        latent_edit = self.preprocess(edit, device)
        sampling_timesteps = to_device(torch.tensor(schedule.sampling), device)
        kv, graphs = self.prepare_replay(device, edit.size, schedule.steps, preserve_consistency)

        # 4. Encode input prompt.
        cond, uncond = self._conditioning(
            prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, device, self.do_classifier_free_guidance
        )

        # 5. Encode the image and invert it, recording keys/values; or load the cached inversion.
        latents = self.inverted_latents(latent_edit, inversion, cond, schedule, kv, graphs, device)

        # 6. One-step latent edit: the warp (LWF, relocation, filling), or the object moved or copied.
        latents = self.warp(latents, latent_edit, generator, graphs)

        # 7. Denoising loop: sample back to t = 0, replaying the recorded keys/values.
        latents = self.sample_latents(
            latents, cond, uncond, sampling_timesteps, schedule.sampling, kv, graphs,
            callback_on_step_end, callback_on_step_end_tensor_inputs,
        )

        # 8. Decode and post-process.
        if output_type != "latent":
            with self._phase("decode"):
                image = self.decode_image(latents)
                image, has_nsfw_concept = self.run_safety_checker(image, device, cond.prompt_embeds.dtype)
                do_denormalize = [True] * image.shape[0] if has_nsfw_concept is None else [not n for n in has_nsfw_concept]
                image = self.image_processor.postprocess(image, output_type=output_type, do_denormalize=do_denormalize)
        else:
            image, has_nsfw_concept = latents, None

        # 9. Offload all models.
        self.maybe_free_model_hooks()

        if not return_dict:
            return (image, has_nsfw_concept)
        return StableDiffusionPipelineOutput(images=image, nsfw_content_detected=has_nsfw_concept)
