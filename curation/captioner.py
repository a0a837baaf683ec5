"""Captions for curated clips and images that came without one: a vision-language model run
on each row's middle keyframe.

Two parts, so that the row logic can be read (and tested) apart from the model:

- ``Captioner`` loads a model from a local transformers folder and turns RGB frames into
  captions, in batches, greedily;
- ``CaptionStage`` is the Ray Data stage: it picks the rows that need a caption, asks the
  captioner, and records where each row's caption came from (``caption_source``).

torch and transformers are imported inside ``Captioner`` only: importing this module (the
driver does, to name the stage) stays cheap.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

import numpy as np
import pyarrow as pa

from curation.keyframes import decode_jpeg

if TYPE_CHECKING:
    import torch

# ``caption_source`` values; a model's is MODEL_SOURCE_PREFIX + the folder's basename.
SOURCE_INPUT = "input"
SOURCE_NONE = "none"
MODEL_SOURCE_PREFIX = "model:"


def model_name(folder: str) -> str:
    """The name a caption is credited to: the folder's last component (a trailing slash
    ignored), e.g. ``/models/blip-image-captioning-base/`` -> ``blip-image-captioning-base``."""
    return os.path.basename(os.path.normpath(folder))


class Captioner:
    """A caption per RGB frame from a local vision-language model, greedy and batched.

    The model loads through transformers' Auto classes for image-text-to-text generation
    (``AutoProcessor`` + ``AutoModelForImageTextToText``, transformers 5.23), with
    ``local_files_only=True`` and without remote code: the folder must hold what
    ``save_pretrained`` writes (``config.json``, the weights, the tokenizer and the image
    processor). Layouts, by how the prompt is used:

    - BLIP captioning (``BlipForConditionalGeneration``, e.g. Salesforce's
      blip-image-captioning-base/large): ``prompt`` is the conditional text prefix the
      caption continues (BLIP's model card uses "a photography of"); "" captions
      unconditionally. BLIP's ``generate`` returns the prefix with the caption, its leading
      [CLS] replaced by its decoder's BOS and its trailing [SEP] dropped, so the first
      ``len(prefix ids) - 1`` tokens are cut.
    - Chat models whose processor carries a chat template (Qwen2-VL, Qwen2.5-VL and other
      natively supported ones): ``prompt`` is the user's text in one user turn holding the
      image and the text, with the generation prompt appended; generation returns the
      prompt's ids followed by the answer, and the prompt's ids are cut. Prompts are padded
      on the left so that a batch's answers all start at the same column.
    - Florence-2: transformers 5.23 ships it natively (``Florence2ForConditionalGeneration``),
      so the converted checkpoints (florence-community/Florence-2-base and -large) load;
      ``prompt`` is a task token such as "<CAPTION>" or "<DETAILED_CAPTION>", which its
      processor expands. It is an encoder-decoder: the output holds only the answer.
      Microsoft's original repos (microsoft/Florence-2-*) need ``trust_remote_code`` and
      are refused: remote code is a program downloaded with the weights, and a curation
      worker runs no code that is not in this repository or an installed package.
      Florence-2 is not exercised by the tests here.

    Any other layout whose output starts with its prompt's ids, or holds only the answer,
    is handled by the same rule (the prompt is cut where the output repeats it).

    Captions are deterministic: greedy decoding (``do_sample=False``, one beam) whatever the
    folder's ``generation_config.json`` says, and frames are captioned in fixed chunks of
    ``batch_size``. ``dtype`` is a torch dtype name ("float32", "bfloat16", "float16");
    half precision is for GPUs (several CPU kernels lack it or are slow there).
    """

    def __init__(
        self,
        folder: str,
        prompt: str = "",
        device: str = "cpu",
        dtype: str = "float32",
        max_new_tokens: int = 40,
        batch_size: int = 16,
    ) -> None:
        import torch
        from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

        if not os.path.isdir(folder):
            raise FileNotFoundError(f"caption model folder {folder} does not exist (or is not a folder)")
        if batch_size < 1 or max_new_tokens < 1:
            raise ValueError(f"batch_size and max_new_tokens must be >= 1, got {batch_size} and {max_new_tokens}")
        torch_dtype = getattr(torch, dtype, None)
        if not isinstance(torch_dtype, torch.dtype):
            raise ValueError(f"unknown torch dtype {dtype!r} for the caption model")
        try:
            config = AutoConfig.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
            processor = AutoProcessor.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
            model = AutoModelForImageTextToText.from_pretrained(
                folder, local_files_only=True, trust_remote_code=False, dtype=torch_dtype
            )
        except (OSError, ValueError, KeyError) as err:
            raise ValueError(f"cannot load a caption model from {folder}: {err}") from err
        # AutoProcessor returns a bare tokenizer for a model type without a processor class:
        # nothing there reads frames.
        if getattr(processor, "image_processor", None) is None or getattr(processor, "tokenizer", None) is None:
            raise ValueError(
                f"caption model folder {folder} has no image processor and tokenizer pair (processor_config.json "
                f"or preprocessor_config.json, and the tokenizer files, as a processor's save_pretrained writes them)"
            )
        self.folder, self.name = folder, model_name(folder)
        self.prompt = prompt
        self.device, self.dtype = device, torch_dtype
        self.max_new_tokens, self.batch_size = max_new_tokens, batch_size
        self.processor = processor
        self.model = model.to(device).eval().requires_grad_(False)
        self.model_type = config.model_type
        self.encoder_decoder = bool(getattr(config, "is_encoder_decoder", False))
        self.chat = bool(getattr(processor, "chat_template", None))
        if not self.encoder_decoder:
            # Decoder-only prompts of different lengths (a chat model's image tokens follow the
            # image's size) must end in the same column for the answers to start together.
            processor.tokenizer.padding_side = "left"

    def __call__(self, images: Sequence[np.ndarray]) -> list[str]:
        """``(H, W, 3)`` uint8 RGB frames (any sizes) -> one caption each; "" where the model
        generated nothing but special tokens or spaces."""
        captions: list[str] = []
        for start in range(0, len(images), self.batch_size):
            captions += self._caption_batch(images[start : start + self.batch_size])
        return captions

    def _caption_batch(self, images: Sequence[np.ndarray]) -> list[str]:
        import torch
        from PIL import Image

        # PIL images: a numpy frame 3 pixels high would be read as channels-first.
        pictures = [Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8), "RGB") for image in images]
        text = self._prompts(len(pictures))
        kwargs: dict[str, Any] = {"images": pictures, "return_tensors": "pt"}
        if text is not None:
            kwargs.update(text=text, padding=True)
        inputs = self.processor(**kwargs)
        inputs = {k: self._to_device(v) for k, v in inputs.items() if v is not None}
        with torch.inference_mode():
            output = self.model.generate(
                **inputs, do_sample=False, num_beams=1, max_new_tokens=self.max_new_tokens
            )
        echo = self._echo_length(output, inputs.get("input_ids"))
        decode = self.processor.tokenizer.batch_decode
        # The whole text minus the prompt's text, not the answer's tokens decoded alone: an
        # answer may start inside the prompt's last word (a "##s" word piece after BLIP's
        # prefix), which decodes as "##s" alone but joins the word in the whole text.
        wholes, prompts = decode(output, skip_special_tokens=True), decode(output[:, :echo], skip_special_tokens=True)
        answers = decode(output[:, echo:], skip_special_tokens=True)
        return [
            (whole[len(prompt) :] if whole.startswith(prompt) else answer).strip()
            for whole, prompt, answer in zip(wholes, prompts, answers)
        ]

    def _prompts(self, count: int) -> Optional[list[str]]:
        if self.chat:
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": self.prompt}]}]
            text = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            return [text] * count
        return [self.prompt] * count if self.prompt else None

    def _to_device(self, value: Any) -> Any:
        if not hasattr(value, "to"):
            return value
        if value.is_floating_point():
            return value.to(self.device, self.dtype)
        return value.to(self.device)

    def _echo_length(self, output: "torch.Tensor", input_ids: Optional["torch.Tensor"]) -> int:
        """How many leading output columns repeat the prompt rather than answer it."""
        if self.model_type == "blip":
            # BLIP: [BOS] + the prefix without its [CLS] and [SEP]; just [BOS] without a prefix.
            return input_ids.shape[1] - 1 if input_ids is not None else 1
        if self.encoder_decoder or input_ids is None:
            return 0
        width = input_ids.shape[1]
        if output.shape[1] >= width and bool((output[:, :width] == input_ids.to(output.device)).all()):
            return width
        return 0


def needs_caption(caption: Optional[str]) -> bool:
    """A caption that is missing, empty or only whitespace is no caption."""
    return caption is None or not caption.strip()


def input_caption_source(caption: Optional[str]) -> str:
    """``caption_source`` of a row as its input gave it, before any model."""
    return SOURCE_NONE if needs_caption(caption) else SOURCE_INPUT


def fill_captions(
    batch: pa.Table,
    captioner: Callable[[list[np.ndarray]], list[str]],
    source: str,
    recaption: bool = False,
) -> pa.Table:
    """The batch with captions written where needed and ``caption_source`` per row.

    A row with keyframes is captioned from its middle keyframe when its caption is missing
    (or always, with ``recaption``). Then ``caption`` is the model's where it wrote one
    (``caption_source`` = ``source``); else the row keeps the caption it came with
    ("input"), or has none ("none", the caption left as it came: null or blank). A row
    without keyframes (a reject) keeps its caption and its ``caption_source`` (null when the
    column is new). If the batch has a ``caption_s`` column, its first row gets the seconds
    the captioning took, as ``aesthetic_s`` does for scoring.
    """
    started = time.monotonic()
    keyframes = batch.column("keyframes").to_pylist()
    captions = batch.column("caption").to_pylist()
    if "caption_source" in batch.schema.names:
        sources = batch.column("caption_source").to_pylist()
    else:
        sources = [None] * batch.num_rows
    wanted = [i for i, frames in enumerate(keyframes) if frames and (recaption or needs_caption(captions[i]))]
    written = captioner([decode_jpeg(keyframes[i][len(keyframes[i]) // 2]) for i in wanted]) if wanted else []
    if len(written) != len(wanted):
        raise RuntimeError(f"the captioner returned {len(written)} captions for {len(wanted)} frames")
    model_captions = dict(zip(wanted, written))
    for i, frames in enumerate(keyframes):
        if not frames:
            continue
        caption = model_captions.get(i, "")
        if caption:
            captions[i], sources[i] = caption, source
        else:
            sources[i] = input_caption_source(captions[i])
    batch = _set(batch, "caption", pa.array(captions, batch.schema.field("caption").type))
    batch = _set(batch, "caption_source", pa.array(sources, pa.string()))
    if "caption_s" in batch.schema.names:
        spent = [time.monotonic() - started] + [0.0] * (batch.num_rows - 1) if batch.num_rows else []
        batch = _set(batch, "caption_s", pa.array(spent, batch.schema.field("caption_s").type))
    return batch


def _set(batch: pa.Table, name: str, values: pa.Array) -> pa.Table:
    index = batch.schema.get_field_index(name)
    if index < 0:
        return batch.append_column(pa.field(name, values.type), values)
    return batch.set_column(index, batch.schema.field(name), values)


class CaptionStage:
    """The captioning pool for Ray Data ``map_batches(batch_format="pyarrow")``: a class so
    the model loads once per actor. Reads ``keyframes`` (list<binary> of JPEG) and
    ``caption``; writes ``caption`` and ``caption_source`` (see ``fill_captions``); every
    other column passes unchanged."""

    def __init__(
        self,
        folder: str,
        prompt: str,
        device: str,
        max_new_tokens: int,
        batch_size: int,
        recaption: bool,
        dtype: str = "float32",
    ) -> None:
        self.captioner = Captioner(folder, prompt, device, dtype, max_new_tokens, batch_size)
        self.source = MODEL_SOURCE_PREFIX + self.captioner.name
        self.recaption = recaption

    def __call__(self, batch: pa.Table) -> pa.Table:
        return fill_captions(batch, self.captioner, self.source, self.recaption)
