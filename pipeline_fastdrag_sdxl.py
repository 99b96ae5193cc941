"""StableDiffusionXLFastDragPipeline: FastDrag (NeurIPS 2024) one-step drag editing with Stable Diffusion XL.

The method is the SD pipeline's (``fastdrag_core.py`` holds it once): DDIM-invert the image, warp
the inverted latent once, then sample it back while every self-attention layer of the UNet's up
blocks (36 in SDXL base) replays the keys and values recorded during inversion. What is SDXL's
own lives here: two CLIP text encoders (their hidden states concatenated, the second's pooled
projection), the added conditioning of six time ids (original size, crop, target size), and the
VAE's ``force_upcast`` in float16.

Loadable as a package (``from fastdrag import StableDiffusionXLFastDragPipeline``), as a local
``custom_pipeline`` file, or as one generated community file (``community/fastdrag_sdxl.py``). This
file imports each sibling module the pipeline uses directly, as Diffusers' local loading copies
only those.
"""

import contextlib
from collections.abc import Callable, Iterator

import numpy as np
import PIL.Image
import torch
from diffusers import AutoencoderKL, DDIMInverseScheduler, DiffusionPipeline, SchedulerMixin, UNet2DConditionModel
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.image_processor import VaeImageProcessor
from diffusers.loaders import StableDiffusionXLLoraLoaderMixin, TextualInversionLoaderMixin
from diffusers.pipelines.pipeline_utils import StableDiffusionMixin
from diffusers.pipelines.stable_diffusion_xl import StableDiffusionXLPipelineOutput
from diffusers.utils import replace_example_docstring
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

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
    is_integer,
)
from .timing import PhaseClock  # noqa: F401
from .warpage import warp_latents  # noqa: F401


EXAMPLE_DOC_STRING = """
    Examples:
        ```py
        >>> import torch
        >>> from PIL import Image
        >>> from fastdrag import StableDiffusionXLFastDragPipeline

        >>> pipe = StableDiffusionXLFastDragPipeline.from_pretrained(
        ...     "stabilityai/stable-diffusion-xl-base-1.0", torch_dtype=torch.float16, variant="fp16"
        ... ).to("cuda")
        >>> image = Image.open("cat.png")  # 1024x1024
        >>> mask = Image.open("cat_mask.png")  # white (or painted alpha) = may move
        >>> out = pipe(image, handle_points=[(500, 360)], target_points=[(580, 320)], mask=mask, prompt="a cat")
        >>> out.images[0].save("cat_dragged.png")

        >>> # Re-drag the same image without inverting it again: only the sampling half runs.
        >>> inversion = pipe.invert(image, prompt="a cat")
        >>> out = pipe(handle_points=[(500, 360)], target_points=[(460, 300)], mask=mask, inversion=inversion)
        ```
"""

# SDXL's micro-conditioning arguments, each a pair of pixels.
SIZES = ("original_size", "crops_coords_top_left", "target_size")
# Far beyond any size SDXL was trained at, and within float16 (whose largest value is 65504), the
# dtype the time ids take in a float16 pipeline.
MAX_SIZE_ID = 16384


def check_size_pair(value, name: str, minimum: int, order: str = "(height, width)") -> tuple[int, int] | None:
    """``value``, when given, as a pair of integers >= ``minimum`` in ``order``."""
    if value is None:
        return None
    if (
        not isinstance(value, (tuple, list))
        or len(value) != 2
        or not all(is_integer(v) and minimum <= v <= MAX_SIZE_ID for v in value)
    ):
        raise ValueError(f"`{name}` must be two integers in [{minimum}, {MAX_SIZE_ID}], as {order}, got {value!r}")
    return int(value[0]), int(value[1])


class StableDiffusionXLFastDragPipeline(
    FastDragMixin, DiffusionPipeline, StableDiffusionMixin, StableDiffusionXLLoraLoaderMixin, TextualInversionLoaderMixin
):
    r"""
    FastDrag: one-step drag-based image editing with Stable Diffusion XL.

    This model inherits from [`DiffusionPipeline`]; see its documentation for the generic methods
    (downloading, saving, running on a device, offloading, ...). It also has the loading methods:
        - [`~loaders.TextualInversionLoaderMixin.load_textual_inversion`] for textual inversion embeddings
        - [`~loaders.StableDiffusionXLLoraLoaderMixin.load_lora_weights`] for LoRA weights (UNet and text encoders)
        - [`~loaders.StableDiffusionXLLoraLoaderMixin.save_lora_weights`] for saving LoRA weights

    Args:
        vae ([`AutoencoderKL`]): encodes and decodes images to and from latents; with
            ``force_upcast`` in its config (SDXL's VAE overflows in float16) it runs in float32
            while the pipeline is in float16.
        text_encoder ([`~transformers.CLIPTextModel`]): the first frozen text encoder (CLIP ViT-L).
        text_encoder_2 ([`~transformers.CLIPTextModelWithProjection`]): the second (OpenCLIP
            ViT-bigG), whose pooled projection is part of the added conditioning.
        tokenizer, tokenizer_2 ([`~transformers.CLIPTokenizer`]): their tokenizers.
        unet ([`UNet2DConditionModel`]): the SDXL denoiser (``addition_embed_type="text_time"``).
        scheduler ([`DDIMScheduler`]): sampling scheduler. Another scheduler's config (SDXL repos
            ship Euler) is converted to DDIM, as FastDrag samples with DDIM (eta = 0).
        inverse_scheduler ([`DDIMInverseScheduler`], *optional*): when ``None``, the call inverts with
            one built from ``scheduler``'s config.
        force_zeros_for_empty_prompt (`bool`, defaults to `True`): under guidance without a negative
            prompt, the unconditional embeddings are zeros, as in Diffusers' SDXL pipelines.
    """

    model_cpu_offload_seq = "text_encoder->text_encoder_2->unet->vae"
    _optional_components = ["tokenizer", "tokenizer_2", "text_encoder", "text_encoder_2", "inverse_scheduler"]
    # Each the conditional half (Diffusers' SDXL pipelines pass both halves together).
    _callback_tensor_inputs = ["latents", "prompt_embeds", "add_text_embeds", "add_time_ids"]

    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        text_encoder_2: CLIPTextModelWithProjection,
        tokenizer: CLIPTokenizer,
        tokenizer_2: CLIPTokenizer,
        unet: UNet2DConditionModel,
        scheduler: SchedulerMixin,
        inverse_scheduler: DDIMInverseScheduler | None = None,
        force_zeros_for_empty_prompt: bool = True,
    ):
        super().__init__()
        scheduler = ddim_scheduler_from(scheduler) if scheduler is not None else None
        self.register_modules(
            vae=vae,
            text_encoder=text_encoder,
            text_encoder_2=text_encoder_2,
            tokenizer=tokenizer,
            tokenizer_2=tokenizer_2,
            unet=unet,
            scheduler=scheduler,
            inverse_scheduler=inverse_scheduler,
        )
        self.register_to_config(force_zeros_for_empty_prompt=force_zeros_for_empty_prompt)
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1) if self.vae is not None else 8
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)
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
        prompt_2,
        negative_prompt,
        negative_prompt_2,
        prompt_embeds,
        negative_prompt_embeds,
        pooled_prompt_embeds,
        negative_pooled_prompt_embeds,
        original_size,
        crops_coords_top_left,
        target_size,
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
    ) -> tuple[EditInputs, dict[str, tuple[int, int]]]:
        """Raise ``ValueError`` or ``TypeError`` on anything a caller can get wrong, before any model
        runs; return the image, mask and drags checked and converted (see ``inputs.EditInputs``), and
        the micro-conditioning sizes with their defaults (a cached inversion's own)."""
        self.check_prompt(
            prompt, prompt_2, negative_prompt, negative_prompt_2, prompt_embeds, negative_prompt_embeds,
            pooled_prompt_embeds, negative_pooled_prompt_embeds, inversion is not None,
        )
        self.check_schedule(
            DEFAULT_STEPS if num_inference_steps is None else num_inference_steps,
            DEFAULT_STRENGTH if inversion_strength is None else inversion_strength,
        )
        sizes = self.check_sizes(original_size, crops_coords_top_left, target_size)
        if inversion is not None:
            self.check_inversion(
                inversion, image, {"prompt": prompt, "prompt_2": prompt_2, **sizes},
                {"prompt_embeds": prompt_embeds, "pooled_prompt_embeds": pooled_prompt_embeds,
                 "negative_prompt_embeds": negative_prompt_embeds,
                 "negative_pooled_prompt_embeds": negative_pooled_prompt_embeds},
                num_inference_steps, inversion_strength, preserve_consistency, max_image_pixels,
            )
        edit = self.check_edit(image, handle_points, target_points, mask, fill, mode, inversion, max_image_pixels,
                               max_drags)
        self.check_call_options(
            guidance_scale, preserve_consistency, generator, output_type, callback_on_step_end,
            callback_on_step_end_tensor_inputs,
        )
        zeros = negative_prompt is None and negative_prompt_2 is None and self.config.force_zeros_for_empty_prompt
        if guidance_scale > 1 and negative_prompt_embeds is None and not zeros and self.text_encoder_2 is None:
            raise ValueError(
                "guidance (`guidance_scale` > 1) with a negative prompt needs the text encoders, and this pipeline "
                "has none: pass `negative_prompt_embeds` and `negative_pooled_prompt_embeds`"
            )
        tokenizer = self.tokenizer_2 if self.tokenizer_2 is not None else self.tokenizer
        check_token_counts(
            prompt_embeds if inversion is None else inversion.prompt_embeds, negative_prompt_embeds,
            tokenizer.model_max_length if tokenizer is not None else None,
            encodes_negative=guidance_scale > 1 and negative_prompt_embeds is None and not zeros,
        )
        # A cached inversion's pooled embedding was checked when it was made.
        self.check_added_conditioning(pooled_prompt_embeds if inversion is None else None)
        if negative_pooled_prompt_embeds is not None:
            self.check_added_conditioning(negative_pooled_prompt_embeds)
        if inversion is not None:
            return edit, {name: inversion.conditions[name] for name in SIZES}
        return edit, self.resolved_sizes(sizes, edit.size)

    def check_prompt(
        self, prompt, prompt_2, negative_prompt, negative_prompt_2, prompt_embeds, negative_prompt_embeds,
        pooled_prompt_embeds, negative_pooled_prompt_embeds, cached: bool = False,
    ) -> None:
        """Texts are strings; a text and its embeddings are not both given; embeddings come with
        their pooled embeddings (``(1, tokens, dim)`` and ``(1, dim)``); without text encoders only
        embeddings will do."""
        for name, text in (("prompt", prompt), ("prompt_2", prompt_2), ("negative_prompt", negative_prompt),
                           ("negative_prompt_2", negative_prompt_2)):
            check_text(text, name)
        width = self.unet.config.cross_attention_dim if self.unet is not None else None
        for texts, embeds, pooled, prefix in (
            ({"prompt": prompt, "prompt_2": prompt_2}, prompt_embeds, pooled_prompt_embeds, ""),
            ({"negative_prompt": negative_prompt, "negative_prompt_2": negative_prompt_2}, negative_prompt_embeds,
             negative_pooled_prompt_embeds, "negative_"),
        ):
            check_text_or_embeddings(texts, f"{prefix}prompt_embeds", embeds)
            if (embeds is None) != (pooled is None):
                raise ValueError(
                    f"`{prefix}prompt_embeds` and `{prefix}pooled_prompt_embeds` go together (both come from "
                    "`pipe.encode_prompt`): give both or neither"
                )
            check_embeddings(embeds, f"{prefix}prompt_embeds", 3, width if isinstance(width, int) else None)
            check_embeddings(pooled, f"{prefix}pooled_prompt_embeds", 2)
        check_same_shape(prompt_embeds, "prompt_embeds", negative_prompt_embeds, "negative_prompt_embeds")
        check_same_shape(pooled_prompt_embeds, "pooled_prompt_embeds", negative_pooled_prompt_embeds,
                         "negative_pooled_prompt_embeds")
        if prompt_embeds is None and not cached and self.text_encoder_2 is None:
            raise ValueError("this pipeline has no text encoders: pass `prompt_embeds` and `pooled_prompt_embeds`")

    def check_added_conditioning(self, pooled_prompt_embeds: torch.Tensor | None) -> None:
        """The UNet's added embedding takes six time ids and the pooled embedding (given, or as wide as
        ``text_encoder_2``'s projection); a refiner's UNet (an aesthetic score, five ids) and an SD
        1.x/2.x UNet are refused."""
        if getattr(self.unet.config, "addition_embed_type", None) != "text_time":
            raise ValueError(
                "this UNet is not an SDXL UNet (it takes no `addition_embed_type='text_time'` conditioning): load "
                "Stable Diffusion 1.x/2.x models with StableDiffusionFastDragPipeline"
            )
        if pooled_prompt_embeds is not None:
            pooled_dim = pooled_prompt_embeds.shape[-1]
        elif self.text_encoder_2 is not None:
            pooled_dim = self.text_encoder_2.config.projection_dim
        else:
            return
        passed = self.unet.config.addition_time_embed_dim * 6 + pooled_dim
        expected = self.unet.add_embedding.linear_1.in_features
        if passed != expected:
            raise ValueError(
                f"this UNet takes {expected} added embedding features, but six time ids and a {pooled_dim}-wide "
                f"pooled text embedding make {passed}: FastDrag takes SDXL base UNets (not the refiner) with their "
                "second text encoder's pooled embedding"
            )

    @staticmethod
    def check_sizes(original_size, crops_coords_top_left, target_size) -> dict[str, tuple[int, int] | None]:
        """SDXL's micro-conditioning sizes, each ``(height, width)`` (the crop ``(top, left)``), as tuples."""
        return {
            "original_size": check_size_pair(original_size, "original_size", 1),
            "crops_coords_top_left": check_size_pair(crops_coords_top_left, "crops_coords_top_left", 0, "(top, left)"),
            "target_size": check_size_pair(target_size, "target_size", 1),
        }

    # ----------------------------------------------------------------------------------------
    # Models
    # ----------------------------------------------------------------------------------------

    def encode_prompt(
        self,
        prompt: str | None,
        prompt_2: str | None = None,
        device: torch.device | str | None = None,
        num_images_per_prompt: int = 1,
        do_classifier_free_guidance: bool = True,
        negative_prompt: str | None = None,
        negative_prompt_2: str | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        pooled_prompt_embeds: torch.Tensor | None = None,
        negative_pooled_prompt_embeds: torch.Tensor | None = None,
        lora_scale: float | None = None,
        clip_skip: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
        r"""
        Encode the prompt (and, under guidance, the negative prompt) as Diffusers' SDXL pipelines do, with
        one difference: a ``negative_prompt_2`` given alone is encoded, not replaced by zeros.

        Args:
            prompt (`str`, *optional*): the text for both encoders; ``None`` with ``prompt_embeds``.
            prompt_2 (`str`, *optional*): the text for ``text_encoder_2``; ``prompt`` when not given.
            device (`torch.device` or `str`, *optional*): where the embeddings go; the execution device
                when not given.
            num_images_per_prompt (`int`): copies along the batch (FastDrag itself uses 1).
            do_classifier_free_guidance (`bool`): also return the negative embeddings.
            negative_prompt, negative_prompt_2 (`str`, *optional*): the unconditional texts. With
                neither given and ``force_zeros_for_empty_prompt``, the negative embeddings are zeros
                (Diffusers' SDXL pipelines look at ``negative_prompt`` alone there).
            prompt_embeds, negative_prompt_embeds, pooled_prompt_embeds, negative_pooled_prompt_embeds
                (`torch.Tensor`, *optional*): ready embeddings, used as they are.
            lora_scale (`float`, *optional*): scale of the text encoders' LoRA layers, if any.
            clip_skip (`int`, *optional*): layers skipped from the end of CLIP, beyond the
                penultimate layer SDXL always uses.

        Returns:
            `(prompt_embeds, negative_prompt_embeds, pooled_prompt_embeds, negative_pooled_prompt_embeds)`:
            ``(n, tokens, 2048)`` and ``(n, 1280)`` for SDXL base; the negative ones are ``None``
            without guidance.
        """
        device = torch.device(device) if device is not None else self._execution_device
        encoders = [encoder for encoder in (self.text_encoder, self.text_encoder_2) if encoder is not None]
        with self.lora_scaled(encoders, lora_scale):
            if prompt_embeds is None:
                prompt_embeds, pooled_prompt_embeds = self._encode_texts(prompt or "", prompt_2, device, clip_skip)
            # Zeros unless a negative text is given. Diffusers' SDXL pipelines look at `negative_prompt`
            # alone, and then drop a `negative_prompt_2` given without it; here it counts.
            zeros = negative_prompt is None and negative_prompt_2 is None and self.config.force_zeros_for_empty_prompt
            if do_classifier_free_guidance and negative_prompt_embeds is None and zeros:
                negative_prompt_embeds = torch.zeros_like(prompt_embeds)
                negative_pooled_prompt_embeds = torch.zeros_like(pooled_prompt_embeds)
            elif do_classifier_free_guidance and negative_prompt_embeds is None:
                negative_prompt_embeds, negative_pooled_prompt_embeds = self._encode_texts(
                    negative_prompt or "", negative_prompt_2, device, None, prompt_embeds.shape[1]
                )
        dtype = next((m.dtype for m in (self.text_encoder_2, self.unet) if m is not None), prompt_embeds.dtype)

        def batch(tensor: torch.Tensor) -> torch.Tensor:
            return tensor.to(device=device, dtype=dtype).repeat_interleave(num_images_per_prompt, 0)

        if not do_classifier_free_guidance:
            return batch(prompt_embeds), None, batch(pooled_prompt_embeds), None
        return (batch(prompt_embeds), batch(negative_prompt_embeds), batch(pooled_prompt_embeds),
                batch(negative_pooled_prompt_embeds))

    def _encode_texts(
        self, prompt: str, prompt_2: str | None, device: torch.device, clip_skip: int | None,
        max_length: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``((1, tokens, dim_1 + dim_2), (1, pooled_dim))``: the encoders' penultimate hidden states
        side by side, and the last encoder's pooled projection; textual inversion tokens expanded."""
        tokenizers = [self.tokenizer, self.tokenizer_2] if self.tokenizer is not None else [self.tokenizer_2]
        encoders = [self.text_encoder, self.text_encoder_2] if self.text_encoder is not None else [self.text_encoder_2]
        hidden, pooled = [], None
        for text, tokenizer, encoder in zip((prompt, prompt_2 or prompt), tokenizers, encoders):
            text = self.maybe_convert_prompt(text, tokenizer)
            tokens = tokenizer(text, padding="max_length", max_length=max_length or tokenizer.model_max_length,
                               truncation=True, return_tensors="pt")
            output = encoder(to_device(tokens.input_ids, device), output_hidden_states=True)
            if output[0].ndim == 2:  # CLIPTextModelWithProjection's text_embeds
                pooled = output[0]
            hidden.append(output.hidden_states[-(2 + (clip_skip or 0))])
        return torch.cat(hidden, dim=-1), pooled

    @staticmethod
    def _time_ids(sizes: dict[str, tuple[int, int]], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """SDXL's ``(1, 6)`` micro-conditioning: original size, crop ``(top, left)``, target size."""
        time_ids = [*sizes["original_size"], *sizes["crops_coords_top_left"], *sizes["target_size"]]
        return torch.tensor([time_ids], dtype=dtype, device=device)

    def _conditioning(
        self, prompt, prompt_2, negative_prompt, negative_prompt_2, prompt_embeds, negative_prompt_embeds,
        pooled_prompt_embeds, negative_pooled_prompt_embeds, sizes: dict[str, tuple[int, int]], device: torch.device,
        guided: bool,
    ) -> tuple[Conditioning, Conditioning | None]:
        """:meth:`encode_prompt` and the time ids for one image, timed as the text phase when it
        encodes anything: the conditioning, and when ``guided`` the unconditional one (same time ids)."""
        with self.text_phase(prompt_embeds is None or (guided and negative_prompt_embeds is None)):
            embeds, negative, pooled, negative_pooled = self.encode_prompt(
                prompt, prompt_2, device, 1, guided, negative_prompt, negative_prompt_2, prompt_embeds,
                negative_prompt_embeds, pooled_prompt_embeds, negative_pooled_prompt_embeds,
            )
        time_ids = self._time_ids(sizes, device, embeds.dtype)
        cond = Conditioning(embeds, {"text_embeds": pooled, "time_ids": time_ids})
        if negative is None:
            return cond, None
        return cond, Conditioning(negative, {"text_embeds": negative_pooled, "time_ids": time_ids})

    @contextlib.contextmanager
    def vae_precision(self) -> Iterator[None]:
        """SDXL's VAE overflows in float16: with ``force_upcast`` it runs in float32 for the ``with``
        body and goes back to float16 after, as in Diffusers' SDXL pipelines."""
        upcast = self.vae.dtype == torch.float16 and getattr(self.vae.config, "force_upcast", False)
        if not upcast:
            yield
            return
        self.vae.to(dtype=torch.float32)
        try:
            yield
        finally:
            self.vae.to(dtype=torch.float16)

    @staticmethod
    def resolved_sizes(sizes: dict[str, tuple[int, int] | None], image_size: tuple[int, int]) -> dict:
        """The micro-conditioning with Diffusers' SDXL defaults: original and target size the image's
        ``(height, width)``, the crop ``(0, 0)``."""
        return {
            "original_size": sizes["original_size"] or image_size,
            "crops_coords_top_left": sizes["crops_coords_top_left"] or (0, 0),
            "target_size": sizes["target_size"] or image_size,
        }

    @torch.no_grad()
    @one_call_at_a_time
    def invert(
        self,
        image,
        prompt: str | None = None,
        prompt_2: str | None = None,
        num_inference_steps: int = DEFAULT_STEPS,
        inversion_strength: float = DEFAULT_STRENGTH,
        preserve_consistency: bool = True,
        prompt_embeds: torch.Tensor | None = None,
        pooled_prompt_embeds: torch.Tensor | None = None,
        original_size: tuple[int, int] | None = None,
        crops_coords_top_left: tuple[int, int] | None = None,
        target_size: tuple[int, int] | None = None,
        max_image_pixels: int = MAX_IMAGE_PIXELS,
    ) -> FastDragInversion:
        """Encode and DDIM-invert ``image`` once, recording the self-attention keys/values.

        Pass the result as ``inversion=`` to the pipeline call to drag the same image again and
        again: each drag then costs only the warp and the sampling half. It belongs to this
        pipeline's weights and dtype: a call that would mix it with others raises. The prompts (or
        embeddings) and SDXL's sizes condition it as in the call, and every drag of it.
        """
        size = self.check_image(image, max_image_pixels)
        self.check_prompt(prompt, prompt_2, None, None, prompt_embeds, None, pooled_prompt_embeds, None)
        check_flag(preserve_consistency, "preserve_consistency")
        self.check_schedule(num_inference_steps, inversion_strength)
        sizes = self.resolved_sizes(self.check_sizes(original_size, crops_coords_top_left, target_size), size)
        self.check_added_conditioning(pooled_prompt_embeds)
        if prompt_embeds is None:
            prompt = prompt or ""
            prompt_2 = prompt_2 or prompt  # as encode_prompt reads it, so that a re-drag may repeat it
        schedule = self.schedule(num_inference_steps, inversion_strength)
        cond, _ = self._conditioning(prompt, prompt_2, None, None, prompt_embeds, None, pooled_prompt_embeds, None,
                                     sizes, self._execution_device, guided=False)
        conditions = {"prompt": prompt, "prompt_2": prompt_2, **sizes}
        inversion = self.make_inversion(
            image_to_tensor(image), cond, conditions, schedule, inversion_strength, preserve_consistency
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
        prompt_2: str | None = None,
        num_inference_steps: int | None = None,
        inversion_strength: float | None = None,
        guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
        negative_prompt: str | None = None,
        negative_prompt_2: str | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        pooled_prompt_embeds: torch.Tensor | None = None,
        negative_pooled_prompt_embeds: torch.Tensor | None = None,
        original_size: tuple[int, int] | None = None,
        crops_coords_top_left: tuple[int, int] | None = None,
        target_size: tuple[int, int] | None = None,
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
                The image, in any form the SD FastDrag pipeline takes; H and W multiples of
                ``pipe.vae_scale_factor`` (8). SDXL works best at about 1024x1024 pixels. May be
                left out when ``inversion`` is given; if both are given they must be the same image.
            handle_points, target_points (sequence of `(x, y)`):
                Image pixels, ``x`` the column and ``y`` the row; the same number of each, at least
                one. ``0 <= x < W``, ``0 <= y < H``; fractions allowed.
            mask (`PIL.Image.Image`, `np.ndarray` or `torch.Tensor`, *optional*):
                ``(H, W)``, nonzero where content may move. ``None`` lets the whole image move.
            prompt, prompt_2 (`str`, *optional*): text for the two text encoders (``prompt_2``
                defaults to ``prompt``); default "" (or the inversion's).
            num_inference_steps (`int`, *optional*): DDIM schedule length; default 10 (or the inversion's).
            inversion_strength (`float`, *optional*): fraction of the schedule inverted, in (0, 1];
                default 0.7 (or the inversion's).
            guidance_scale (`float`, defaults to 1.0): classifier-free guidance while sampling, in
                [0, 100]; 1.0 or less turns it off. Inversion never uses guidance.
            negative_prompt, negative_prompt_2 (`str`, *optional*): the unconditional texts under
                guidance; with neither, zeros (``force_zeros_for_empty_prompt``).
            prompt_embeds, negative_prompt_embeds (`torch.Tensor`, *optional*): ``(1, tokens, dim)``
                text embeddings instead of the texts; each with its pooled embedding:
            pooled_prompt_embeds, negative_pooled_prompt_embeds (`torch.Tensor`, *optional*): ``(1, dim)``.
            original_size (`(int, int)`, *optional*): SDXL's micro-conditioning ``(height, width)``
                of the "original" image; defaults to the image's size.
            crops_coords_top_left (`(int, int)`, *optional*): ``(top, left)`` of the crop; ``(0, 0)``.
            target_size (`(int, int)`, *optional*): ``(height, width)``; defaults to the image's size.
            fill (`str`, defaults to `"bnni"`): how the pixels left empty by the warp are filled:
                `"bnni"`, `"original"`, `"zeros"` or `"noise"`.
            mode (`str`, defaults to `"drag"`): `"drag"`, or `"move"`/`"copy"` of the masked object
                by exactly one drag.
            preserve_consistency (`bool`, defaults to `True`): replay the self-attention keys and
                values recorded during inversion while sampling.
            inversion (`FastDragInversion`, *optional*): the result of `pipe.invert(image, ...)`;
                skips encoding and inversion.
            generator (`torch.Generator`, *optional*): used by ``fill="noise"`` only.
            output_type (`str`, defaults to `"pil"`): `"pil"`, `"np"`, `"pt"` or `"latent"`.
            return_dict (`bool`, defaults to `True`): return a `StableDiffusionXLPipelineOutput`.
            callback_on_step_end (`Callable`, *optional*): called after each sampling step as
                ``callback_on_step_end(pipe, i, t, callback_kwargs)``; may return new ``latents``.
            callback_on_step_end_tensor_inputs (`list[str]`): tensors passed to the callback.
            max_image_pixels (`int`, defaults to 4,194,304 = 2048x2048): a larger image is refused
                before anything of its size is allocated.
            max_drags (`int`, defaults to 256): more drags are refused, counted before conversion.

        Examples:

        Returns:
            [`~pipelines.stable_diffusion_xl.StableDiffusionXLPipelineOutput`] or `tuple`: the edited images.
        """
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs

        # 1. Check inputs. Raise error if not correct, before any model runs.
        edit, sizes = self.check_inputs(
            image, handle_points, target_points, mask, prompt, prompt_2, negative_prompt, negative_prompt_2,
            prompt_embeds, negative_prompt_embeds, pooled_prompt_embeds, negative_pooled_prompt_embeds,
            original_size, crops_coords_top_left, target_size, num_inference_steps, inversion_strength,
            guidance_scale, fill, mode, preserve_consistency, inversion, generator, output_type,
            callback_on_step_end, callback_on_step_end_tensor_inputs, max_image_pixels, max_drags,
        )

        # 2. Define call parameters: a cached inversion brings its conditioning and schedule.
        if inversion is not None:
            prompt, prompt_2 = None, None
            prompt_embeds, pooled_prompt_embeds = inversion.prompt_embeds, inversion.conditioning.added["text_embeds"]
            num_inference_steps, inversion_strength = inversion.num_inference_steps, inversion.inversion_strength
        schedule = self.schedule(num_inference_steps, inversion_strength)
        self.start_call(guidance_scale, schedule)
        device = self._execution_device

        # 3. Preprocess image, mask and drags, and send them to the device.
        latent_edit = self.preprocess(edit, device)
        sampling_timesteps = to_device(torch.tensor(schedule.sampling), device)
        kv, graphs = self.prepare_replay(device, edit.size, schedule.steps, preserve_consistency)

        # 4. Encode input prompt and the added conditioning (pooled embeddings, time ids).
        cond, uncond = self._conditioning(
            prompt, prompt_2, negative_prompt, negative_prompt_2, prompt_embeds, negative_prompt_embeds,
            pooled_prompt_embeds, negative_pooled_prompt_embeds, sizes, device, self.do_classifier_free_guidance,
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
                image = self.image_processor.postprocess(self.decode_image(latents), output_type=output_type)
        else:
            image = latents

        # 9. Offload all models.
        self.maybe_free_model_hooks()

        if not return_dict:
            return (image,)
        return StableDiffusionXLPipelineOutput(images=image)
