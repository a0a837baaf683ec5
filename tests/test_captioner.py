"""The captioner and its Ray Data stage, on tiny random models saved in the real layouts.

The captions are meaningless (random weights): what is tested is the loading from local
folders, the batching, the prompt handling and the per-row bookkeeping of the stage.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from curation.captioner import CaptionStage, Captioner, fill_captions, model_name
from curation.keyframes import decode_jpeg, encode_jpeg

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Word pieces for the tiny tokenizers: enough that random weights produce several words.
WORDS = (
    "a an the of in on at with and picture photo photography image video of man woman child dog cat "
    "horse bird car street road tree trees sky sea beach water field grass house room table people "
    "group standing sitting walking running playing red blue green white black yellow small large "
    "two three is are there near front background close view city night day snow mountain river"
).split()
PIECES = sorted(set(WORDS)) + list("abcdefghijklmnopqrstuvwxyz") + [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"]
PIECES += [f"##{w}" for w in ("s", "ing", "ed", "er", "ly", "es", "y", "en")] + list(".,!?'-0123456789")
BLIP_SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"]


def write_tiny_blip(folder: Path, mute: bool = False) -> Path:
    """A BlipForConditionalGeneration with a 32x32, 2x2-patch vision tower and a one-layer
    text decoder, its BERT word-piece tokenizer and BLIP image processor, as save_pretrained
    writes them. With BLIP's default initialisation (0.02, and 1e-10 for the vision tower)
    every frame got the same caption, which would hide frames swapped between rows; with
    these ranges the captions differ from frame to frame. ``mute`` biases the decoder to end
    every caption at once ([SEP] first)."""
    from transformers import (
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
        BertTokenizer,
    )

    folder.mkdir(parents=True, exist_ok=True)
    vocab = BLIP_SPECIAL + [p for p in dict.fromkeys(PIECES) if p not in BLIP_SPECIAL]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    ids = {token: i for i, token in enumerate(vocab)}
    tokenizer = BertTokenizer(vocab=str(folder / "vocab.txt"), bos_token="[DEC]", model_max_length=64)
    assert tokenizer.convert_tokens_to_ids("[DEC]") == ids["[DEC]"] and len(tokenizer) == len(vocab)
    text = dict(
        vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=64, projection_dim=32, bos_token_id=ids["[DEC]"], eos_token_id=ids["[SEP]"],
        sep_token_id=ids["[SEP]"], pad_token_id=ids["[PAD]"], initializer_range=0.3,
    )
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32,
                  patch_size=16, projection_dim=32, initializer_range=0.02)
    config = BlipConfig(text_config=text, vision_config=vision, projection_dim=32, image_text_hidden_size=32)
    torch.manual_seed(0)
    model = BlipForConditionalGeneration(config).eval()
    if mute:
        with torch.no_grad():
            model.text_decoder.cls.predictions.decoder.bias.fill_(-100.0)
            model.text_decoder.cls.predictions.decoder.bias[ids["[SEP]"]] = 100.0
    model.save_pretrained(folder)
    processor = BlipProcessor(BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer)
    processor.save_pretrained(folder)
    return folder


def frames(count: int, seed: int = 0) -> list[np.ndarray]:
    """RGB frames of several sizes and contents: gradients, blocks and noise."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        h, w = [(48, 64), (40, 40), (72, 96), (64, 48)][i % 4]
        y, x = np.mgrid[0:h, 0:w]
        image = np.stack([(x * (3 + i)) % 256, (y * (5 + 2 * i)) % 256, ((x + y) * (7 + i)) % 256], -1).astype(np.uint8)
        image[h // 4 : h // 2, w // 3 : w // 2] = rng.integers(0, 256, 3)
        out.append(image)
    return out


@pytest.fixture(scope="module")
def blip(tmp_path_factory) -> Path:
    return write_tiny_blip(tmp_path_factory.mktemp("models") / "tiny-blip")


@pytest.fixture(scope="module")
def mute_blip(tmp_path_factory) -> Path:
    return write_tiny_blip(tmp_path_factory.mktemp("models") / "mute-blip", mute=True)


def test_blip_loads_through_the_auto_classes_and_captions_each_image(blip) -> None:
    captioner = Captioner(str(blip), prompt="", max_new_tokens=8, batch_size=4)
    assert type(captioner.model).__name__ == "BlipForConditionalGeneration"
    assert type(captioner.processor).__name__ == "BlipProcessor"
    assert captioner.name == "tiny-blip"
    captions = captioner(frames(6))
    assert len(captions) == 6 and all(isinstance(c, str) for c in captions)
    assert len(set(captions)) > 1, "the captions should follow the frames"
    assert all(c == c.strip() for c in captions)
    assert captioner([]) == []


def test_the_hubs_older_folder_layout_loads_too(blip, tmp_path) -> None:
    """Folders saved before transformers 5 (Salesforce's BLIP repos among them) keep the
    image processor in preprocessor_config.json, not in processor_config.json."""
    legacy = tmp_path / "legacy-blip"
    shutil.copytree(blip, legacy)
    nested = json.loads((legacy / "processor_config.json").read_text())
    (legacy / "processor_config.json").unlink()
    (legacy / "preprocessor_config.json").write_text(
        json.dumps({**nested["image_processor"], "processor_class": "BlipProcessor"}))
    images = frames(3)
    assert Captioner(str(legacy), max_new_tokens=8)(images) == Captioner(str(blip), max_new_tokens=8)(images)


def test_captions_do_not_depend_on_the_batch_size(blip) -> None:
    images = frames(7)
    one = Captioner(str(blip), prompt="a picture of", max_new_tokens=8, batch_size=1)(images)
    four = Captioner(str(blip), prompt="a picture of", max_new_tokens=8, batch_size=4)(images)
    assert one == four
    # Greedy: the same frames again give the same words.
    assert Captioner(str(blip), prompt="a picture of", max_new_tokens=8, batch_size=4)(images) == four


def test_blip_prefix_is_cut_from_the_caption(blip) -> None:
    """The caption is exactly what the model generated after the prefix: the full
    generation, decoded, is the prefix followed by the caption."""
    images = frames(3, seed=1)
    captioner = Captioner(str(blip), prompt="a picture of", max_new_tokens=8, batch_size=3)
    captions = captioner(images)
    from PIL import Image

    inputs = captioner.processor(images=[Image.fromarray(i) for i in images], text=["a picture of"] * 3,
                                 return_tensors="pt")
    with torch.inference_mode():
        full = captioner.model.generate(**inputs, do_sample=False, num_beams=1, max_new_tokens=8)
    decoded = captioner.processor.tokenizer.batch_decode(full, skip_special_tokens=True)
    for whole, caption in zip(decoded, captions):
        assert whole.startswith("a picture of")
        assert whole[len("a picture of") :].strip() == caption


def test_a_model_that_ends_at_once_gives_empty_captions(mute_blip) -> None:
    assert Captioner(str(mute_blip), max_new_tokens=5)(frames(3)) == ["", "", ""]


def test_missing_or_incomplete_folders_are_named(blip, tmp_path) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(FileNotFoundError, match="no-such-model"):
        Captioner(str(missing))

    no_weights = tmp_path / "no-weights"
    shutil.copytree(blip, no_weights)
    for weights in no_weights.glob("*.safetensors"):
        weights.unlink()
    with pytest.raises(ValueError, match="no-weights"):
        Captioner(str(no_weights))

    no_image_processor = tmp_path / "no-image-processor"
    shutil.copytree(blip, no_image_processor)
    (no_image_processor / "processor_config.json").unlink()  # transformers 5 keeps the image processor there
    with pytest.raises(ValueError, match="no-image-processor"):
        Captioner(str(no_image_processor))

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="empty"):
        Captioner(str(empty))
    with pytest.raises(ValueError, match="dtype"):
        Captioner(str(blip), dtype="float33")


def staged_batch() -> pa.Table:
    """Rows as the pipeline stages them: clips with three keyframes, an image with one, and a
    reject without any; captions missing, blank and given."""
    jpeg = [encode_jpeg(f) for f in frames(8, seed=2)]
    rows = [
        {"id": "clip-none", "table": "clips.lance", "caption": None, "keyframes": jpeg[0:3], "aesthetic": 5.0},
        {"id": "clip-given", "table": "clips.lance", "caption": "a given caption", "keyframes": jpeg[3:6],
         "aesthetic": 4.0},
        {"id": "image-empty", "table": "images.lance", "caption": "", "keyframes": jpeg[6:7], "aesthetic": 6.0},
        {"id": "reject", "table": "rejects.lance", "caption": None, "keyframes": None, "aesthetic": None},
        {"id": "clip-blank", "table": "clips.lance", "caption": "  ", "keyframes": [jpeg[7], jpeg[0]],
         "aesthetic": 3.0},
    ]
    schema = pa.schema([("id", pa.string()), ("table", pa.string()), ("caption", pa.string()),
                        ("keyframes", pa.list_(pa.binary())), ("aesthetic", pa.float32())])
    return pa.Table.from_pylist(rows, schema=schema)


class Recording:
    """A captioner that remembers the frames it was asked about and answers from a list."""

    def __init__(self, answers) -> None:
        self.seen: list[np.ndarray] = []
        self.answers = answers

    def __call__(self, images):
        self.seen += images
        return [self.answers(i) for i in range(len(images))]


def test_the_stage_fills_only_missing_captions_from_the_middle_keyframe() -> None:
    batch = staged_batch()
    recording = Recording(lambda i: f"caption {i}")
    out = fill_captions(batch, recording, "model:fake")
    keyframes = batch.column("keyframes").to_pylist()
    # Rows 0, 2 and 4 need one; their middle keyframes are 1 of 3, 0 of 1 and 1 of 2.
    expected = [decode_jpeg(keyframes[0][1]), decode_jpeg(keyframes[2][0]), decode_jpeg(keyframes[4][1])]
    assert len(recording.seen) == 3 and all(np.array_equal(a, b) for a, b in zip(recording.seen, expected))
    assert out.column("caption").to_pylist() == ["caption 0", "a given caption", "caption 1", None, "caption 2"]
    assert out.column("caption_source").to_pylist() == ["model:fake", "input", "model:fake", None, "model:fake"]
    assert out.schema.field("caption_source").type == pa.string()
    for name in ("id", "table", "keyframes", "aesthetic"):
        assert out.column(name).equals(batch.column(name)), name


def test_recaption_replaces_every_caption_and_empty_answers_keep_the_input() -> None:
    batch = staged_batch()
    out = fill_captions(batch, Recording(lambda i: f"new {i}"), "model:fake", recaption=True)
    assert out.column("caption").to_pylist() == ["new 0", "new 1", "new 2", None, "new 3"]
    assert out.column("caption_source").to_pylist() == ["model:fake"] * 3 + [None, "model:fake"]

    # A model that writes nothing: the given caption stays ("input"), the others have none.
    out = fill_captions(batch, Recording(lambda i: ""), "model:fake", recaption=True)
    assert out.column("caption").to_pylist() == batch.column("caption").to_pylist()
    assert out.column("caption_source").to_pylist() == ["none", "input", "none", None, "none"]


def test_an_existing_source_column_and_timing_column_are_kept_in_place() -> None:
    batch = staged_batch()
    batch = batch.append_column("caption_source", pa.array([None, None, None, "upstream", None], pa.string()))
    batch = batch.append_column("caption_s", pa.array([None] * 5, pa.float64()))
    out = fill_captions(batch, Recording(lambda i: "x"), "model:fake")
    assert out.schema.names == batch.schema.names
    assert out.column("caption_source").to_pylist() == ["model:fake", "input", "model:fake", "upstream", "model:fake"]
    spent = out.column("caption_s").to_pylist()
    assert spent[0] > 0 and spent[1:] == [0.0] * 4


def test_the_stage_with_the_tiny_model_and_with_a_mute_one(blip, mute_blip) -> None:
    batch = staged_batch()
    stage = CaptionStage(str(blip), "", "cpu", 8, 2, False)
    out = stage(batch)
    captioner = Captioner(str(blip), max_new_tokens=8)
    keyframes = batch.column("keyframes").to_pylist()
    direct = captioner([decode_jpeg(keyframes[i][len(keyframes[i]) // 2]) for i in (0, 2, 4)])
    captions = out.column("caption").to_pylist()
    sources = out.column("caption_source").to_pylist()
    for row, caption in zip((0, 2, 4), direct):
        assert captions[row] == (caption or batch.column("caption")[row].as_py())
        assert sources[row] == ("model:tiny-blip" if caption else "none")
    assert captions[1] == "a given caption" and sources[1] == "input"
    assert captions[3] is None and sources[3] is None

    muted = CaptionStage(str(mute_blip), "", "cpu", 8, 2, True)(batch)
    assert muted.column("caption").to_pylist() == batch.column("caption").to_pylist()
    assert muted.column("caption_source").to_pylist() == ["none", "input", "none", None, "none"]
    assert model_name(str(blip) + "/") == "tiny-blip"


def test_the_stage_in_ray_data_matches_the_direct_call(blip, ray_local) -> None:
    ray = ray_local
    batch = pa.concat_tables([staged_batch()] * 3)
    batch = batch.set_column(0, "id", pa.array([f"{i}-{v}" for i, v in enumerate(batch.column("id").to_pylist())]))
    args = (str(blip), "a picture of", "cpu", 8, 4, False)
    direct = CaptionStage(*args)(batch)
    ds = ray.data.from_arrow(batch).map_batches(
        CaptionStage, fn_constructor_args=args, batch_format="pyarrow", batch_size=4,
        compute=ray.data.ActorPoolStrategy(size=1), num_cpus=1,
    )
    through_ray = pa.concat_tables(ray.get(ds.to_arrow_refs())).sort_by("id")
    direct = direct.sort_by("id")
    assert through_ray.num_rows == batch.num_rows
    for name in ("id", "caption", "caption_source", "aesthetic", "keyframes"):
        assert through_ray.column(name).to_pylist() == direct.column(name).to_pylist(), name


QWEN_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                "<|image_pad|>", "<|video_pad|>"]
# Qwen2-VL's template for one user turn of images and text, written here for the tiny model.
QWEN_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% elif part['type'] == 'text' %}{{ part['text'] }}"
    "{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def write_tiny_qwen2_vl(folder: Path) -> Path:
    """A Qwen2VLForConditionalGeneration with one vision block and one text layer, a
    byte-level BPE tokenizer over the 256 byte symbols (no merges) plus Qwen's special tokens,
    and an image processor that keeps frames between 56x56 and 112x112 pixels (4-16 image
    tokens, so frames of other shapes give prompts of other lengths). The text weights are
    drawn wide (0.3) for the same reason as BLIP's: with 0.02 every frame got one caption."""
    from transformers import Qwen2Tokenizer, Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessor
    from transformers import Qwen2VLProcessor, Qwen2VLVideoProcessor
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    folder.mkdir(parents=True, exist_ok=True)
    vocab = {symbol: i for i, symbol in enumerate(bytes_to_unicode().values())}
    for token in QWEN_SPECIAL:
        vocab[token] = len(vocab)
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=[], eos_token="<|im_end|>", pad_token="<|endoftext|>",
                               model_max_length=512)
    tokenizer.add_tokens(QWEN_SPECIAL, special_tokens=True)
    assert len(tokenizer) == len(vocab)
    ids = {token: vocab[token] for token in QWEN_SPECIAL}
    text = dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
                bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
                initializer_range=0.3)
    vision = dict(depth=1, embed_dim=32, hidden_size=32, num_heads=2, mlp_ratio=2, patch_size=14,
                  spatial_merge_size=2, temporal_patch_size=2, initializer_range=0.02)
    config = Qwen2VLConfig(text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
                           video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
                           vision_end_token_id=ids["<|vision_end|>"])
    torch.manual_seed(0)
    Qwen2VLForConditionalGeneration(config).eval().save_pretrained(folder)
    sizes = {"shortest_edge": 56 * 56, "longest_edge": 112 * 112}
    processor = Qwen2VLProcessor(Qwen2VLImageProcessor(size=sizes), tokenizer, Qwen2VLVideoProcessor(size=sizes),
                                 chat_template=QWEN_TEMPLATE)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def qwen2_vl(tmp_path_factory) -> Path:
    return write_tiny_qwen2_vl(tmp_path_factory.mktemp("models") / "tiny-qwen2-vl")


def test_a_qwen2_vl_chat_model_captions_through_its_chat_template(qwen2_vl) -> None:
    prompt = "Describe this frame in one sentence."
    captioner = Captioner(str(qwen2_vl), prompt=prompt, max_new_tokens=6, batch_size=4)
    assert type(captioner.model).__name__ == "Qwen2VLForConditionalGeneration" and captioner.chat
    images = frames(5, seed=3)
    four = captioner(images)
    assert len(four) == 5 and all(isinstance(c, str) for c in four)
    assert len(set(four)) > 1, "the captions should follow the frames"
    # The prompt (template, image tokens, the user's text) is cut: only the answer is left.
    assert not any(prompt in c or "assistant" in c for c in four)
    # Frames of other shapes have prompts of other lengths in one batch: padded on the left.
    from PIL import Image

    inputs = captioner.processor(images=[Image.fromarray(i) for i in images[:4]], text=captioner._prompts(4),
                                 padding=True, return_tensors="pt")
    lengths = inputs["attention_mask"].sum(1)
    assert len(set(lengths.tolist())) > 1 and bool((inputs["attention_mask"][:, -1] == 1).all())
    one = Captioner(str(qwen2_vl), prompt=prompt, max_new_tokens=6, batch_size=1)(images)
    assert one == four
