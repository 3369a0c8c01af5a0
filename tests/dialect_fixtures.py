"""Local model folders and real transformers processors for the dialect tests (no hub).

Each family's folder is built here: a small BPE trained with `tokenizers` on the tests' own
words, the family's added tokens, a `tokenizer_config.json` naming the family's real
tokenizer class, the family's documented chat template, and the processor configs. The HF
processor is constructed from the same parts with transformers, on its PIL backends (no
torchvision here). Conversations and documents are written once as HF messages and turned
into mixdata Samples, so both sides see the same content.
"""
from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast, ProcessorMixin

from mixdata.image import ImagePolicy, process
from mixdata.sample import ImagePart, Sample, TextPart
from mixdata.tokens import load_tokenizer, render
from mixdata.tokens.families import max_grid

WORDS = ("the", "a", "red", "green", "blue", "small", "big", "square", "circle", "left", "right",
         "top", "bottom", "picture", "photo", "image", "what", "is", "in", "on", "of", "and",
         "this", "that", "colour", "shape", "two", "one", "there", "are", "shows", "see",
         "describe", "compare", "answer", "yes", "no", "city", "capital", "country", "word",
         "page", "text", "number", "hello", "world", "cat", "dog", "mat", "sat")
CHAT_WORDS = ["User", "Assistant", "System", "user", "assistant", "system", "[INST]",
              "[/INST]", "USER:", "ASSISTANT:", "<<SYS>>", "<</SYS>>", "\n\n", "\n", ": ",
              "You are a helpful assistant."]


def sentences(rng: np.random.Generator, n: int, low: int = 3, high: int = 12) -> list[str]:
    out = []
    for _ in range(n):
        words = [WORDS[i] for i in rng.integers(0, len(WORDS), int(rng.integers(low, high)))]
        out.append(" ".join(words).capitalize() + str(rng.choice([".", "?", "!", ""])))
    return out


def train_bpe(seed: int, vocab_size: int, *, metaspace: bool = False) -> Tokenizer:
    """A small BPE over the tests' words and chat scaffolding; byte-level (GPT-2 / Llama 3 /
    Qwen style) or Metaspace with <unk> (SentencePiece / Mistral style)."""
    rng = np.random.default_rng(seed)
    corpus = sentences(rng, 400) + CHAT_WORDS * 20 + ["\n\n".join(sentences(rng, 3))] * 30
    if metaspace:
        tok = Tokenizer(models.BPE(unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
        tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
        alphabet = [chr(i) for i in range(32, 127)] + ["▁", "\n"]
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>"],
                                      initial_alphabet=alphabet)
    else:
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    return tok


def write_tokenizer(folder: Path, tok: Tokenizer, *, specials: list[str], tokenizer_class: str,
                    bos: str | None = None, eos: str | None = None, pad: str | None = None,
                    unk: str | None = None, bos_post: bool = False, extra: dict | None = None,
                    template: str | None = None) -> Path:
    """Save `tok` plus its added specials as an HF tokenizer folder (tokenizer.json and
    tokenizer_config.json naming `tokenizer_class`), with chat_template.jinja."""
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    if bos_post:  # Llama / Mistral: the post-processor opens every text with BOS
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
            special_tokens=[(bos, tok.token_to_id(bos))])
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos,
                                      pad_token=pad, unk_token=unk,
                                      extra_special_tokens=extra or {})
    folder.mkdir(parents=True, exist_ok=True)
    wrapped.save_pretrained(str(folder))
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["tokenizer_class"] = tokenizer_class
    config_path.write_text(json.dumps(config, indent=1))
    if template is not None:
        (folder / "chat_template.jinja").write_text(template)
    return folder


def generation_variant(template: str, body: str, generated: str | None = None) -> str:
    """`template` with `{% generation %}` around `generated` (default `body`) in assistant
    messages: the same text, with the reply spans transformers' assistant mask reads.

    transformers compiles templates with trim_blocks, which drops a newline right after a
    block tag, so a newline following the generated part is written as an expression."""
    generated = generated or body
    marked = body.replace(generated, "{% generation %}" + generated + "{% endgeneration %}")
    marked = marked.replace("{% endgeneration %}\n", "{% endgeneration %}{{ '\\n' }}")
    assert body in template and generated in body
    return template.replace(body, "{% if message['role'] == 'assistant' %}" + marked
                            + "{% else %}" + body + "{% endif %}")


def image_only(processor_class):
    """`processor_class` without its video processor, which needs torchvision.

    ProcessorMixin takes its sub-processors from `get_attributes()` and type-checks each one;
    without torchvision no video processor can be built (and `None` fails that check), so the
    attribute is left out. Images, text, expansion and chat templates are the real class's.
    """
    class ImageOnly(processor_class):
        @classmethod
        def get_attributes(cls):
            return [a for a in super().get_attributes() if a != "video_processor"]

        def apply_chat_template(self, *args, **kwargs):
            # SmolVLM's override only adds its video processor's frame-sampling defaults
            # (num_frames, fps) before calling ProcessorMixin's; without videos they are unused
            return ProcessorMixin.apply_chat_template(self, *args, **kwargs)

    ImageOnly.__name__ = processor_class.__name__
    return ImageOnly


def write_processor_configs(folder: Path, image_processor, processor: dict) -> None:
    image_processor.to_json_file(str(folder / "preprocessor_config.json"))
    (folder / "processor_config.json").write_text(json.dumps(processor, indent=1))


@dataclass
class Setup:
    """One family's model folder, its processor and the mixdata settings that match it."""

    family: str
    folder: Path
    processor: object
    policy: ImagePolicy
    tokens_per_tile: int
    marked_template: str | None = None  # the template with {% generation %}, for the masks

    def tokenizer(self, **kwargs):
        return load_tokenizer(str(self.folder), family=self.family,
                              grid=max_grid([self.policy]), **kwargs)

    def image_settings(self) -> dict:
        """The stage `image:` section of a recipe for this setup."""
        return {k: v for k, v in vars(self.policy).items()
                if v is not None and k in ("preset", "longest_edge", "tile", "min_tiles",
                                           "max_tiles", "pinpoints", "min_pixels",
                                           "max_pixels", "patch", "filter")} | {
            "mean": list(self.policy.mean), "std": list(self.policy.std), "encode": "png"}


# --- images and conversations ---------------------------------------------------------------

# wide, smaller than a tile, tall, square, very wide (width, height)
IMAGE_SIZES = [(100, 60), (20, 16), (40, 120), (64, 64), (150, 40)]


def png(size: tuple[int, int], seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "PNG")
    return out.getvalue()


def image_bank(sizes=IMAGE_SIZES) -> list[bytes]:
    return [png(size, i) for i, size in enumerate(sizes)]


def txt(text: str) -> dict:
    """A text content item."""
    return {"type": "text", "text": text}


def img(index: int) -> dict:
    """An image content item: image `index` of the image bank."""
    return {"type": "image", "index": index}


# 0, 1 and 2 images, several aspect ratios (one smaller than a tile), several turns
CONVERSATIONS = [
    [{"role": "user", "content": [txt("What is the capital of the country?")]},
     {"role": "assistant", "content": [txt("The capital is the big city.")]}],
    [{"role": "system", "content": [txt("You are a helpful assistant.")]},
     {"role": "user", "content": [txt("Hello there.")]},
     {"role": "assistant", "content": [txt("Hello! What is the page?")]},
     {"role": "user", "content": [txt("Describe the text\n\nin two words.")]},
     {"role": "assistant", "content": [txt("Red word.")]}],
    [{"role": "user", "content": [img(0), txt("What is in the picture?")]},
     {"role": "assistant", "content": [txt("A red square on the left.")]}],
    [{"role": "user", "content": [txt("Describe this."), img(1)]},
     {"role": "assistant", "content": [txt("A small blue circle.")]},
     {"role": "user", "content": [txt("And the colour?")]},
     {"role": "assistant", "content": [txt("Blue, there is one.")]}],
    [{"role": "user", "content": [img(2), img(3), txt("Compare the two pictures.")]},
     {"role": "assistant", "content": [txt("The top one is big, the other is small.")]}],
    [{"role": "user", "content": [img(4), txt("What is this?")]},
     {"role": "assistant", "content": [txt("A photo of a cat.")]},
     {"role": "user", "content": [img(1), txt("And this one?")]},
     {"role": "assistant", "content": [txt("A dog on the mat.")]}],
]


def sft_sample(conversation, images: list[bytes], sample_id: str = "c") -> Sample:
    parts = []
    for message in conversation:
        for item in message["content"]:
            if item["type"] == "text":
                parts.append(TextPart(text=item["text"], role=message["role"]))
            else:
                parts.append(ImagePart(data=images[item["index"]]))
    return Sample(id=sample_id, source="s", kind="sft", parts=tuple(parts))


def pil(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image.convert("RGB")


def hf_messages(conversation, images: list[bytes]) -> list[dict]:
    return [{"role": m["role"], "content": [
        {"type": "image", "image": pil(images[c["index"]])} if c["type"] == "image" else c
        for c in m["content"]]} for m in conversation]


def mixdata_docs(setup: Setup, sample: Sample, *, seq_len: int = 100_000, loss: str = "all",
                 tokenizer=None):
    """mixdata's documents for `sample`: the real image step, then `render`."""
    tok = tokenizer or setup.tokenizer()
    plans = [process(part.data, setup.policy, len(sample.images)).plan
             for part in sample.images]
    return render(sample, plans, tok, tokens_per_tile=setup.tokens_per_tile, seq_len=seq_len,
                  loss=loss)


def reference_chat(setup: Setup, conversation, images: list[bytes]) -> tuple[list, list | None]:
    """(ids, assistant mask) from `processor.apply_chat_template(..., tokenize=True)`; the mask
    from the same conversation under the template's generation-marked variant."""
    processor = setup.processor
    out = processor.apply_chat_template(hf_messages(conversation, images), tokenize=True,
                                        return_dict=True)
    ids = [int(i) for i in out["input_ids"][0]]
    mask = None
    if setup.marked_template is not None:
        marked = processor.apply_chat_template(
            hf_messages(conversation, images), chat_template=setup.marked_template,
            tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
        assert [int(i) for i in marked["input_ids"][0]] == ids, "variant renders other text"
        mask = [int(m) for m in marked["assistant_masks"][0]]
    return ids, mask


def plain_text(setup: Setup, parts, eos: bool = True) -> str:
    """The documented plain-document text: text parts joined by "\\n", each image the
    family's placeholder, then the EOS token; what a user hands `processor(text=...)`."""
    from mixdata.tokens.families import plain_placeholder

    tok = setup.processor.tokenizer
    spellings = setup.tokenizer().spellings
    text, previous_text = "", False
    for part in parts:
        if isinstance(part, TextPart):
            text += ("\n" if previous_text else "") + part.text
        else:
            text += plain_placeholder(setup.family, spellings)
        previous_text = isinstance(part, TextPart)
    return text + (tok.eos_token if eos else "")


def plain_samples(images: list[bytes]) -> list[Sample]:
    """Caption, interleaved and text documents, with 0, 1 and 2 images."""
    def part(x):
        return ImagePart(data=images[x]) if isinstance(x, int) else TextPart(text=x)

    specs = [("caption", [0, "A red square on the left."]),
             ("caption", [1, "A small thing."]),
             ("interleaved", ["The page shows two pictures.", 2, "The first is tall.",
                              "The second", 3, "is square.\n\nThat is all."]),
             ("text", ["Hello world.\n\nThe cat sat on the mat."])]
    return [Sample(id=f"p{i}", source="s", kind=kind, parts=tuple(part(x) for x in parts))
            for i, (kind, parts) in enumerate(specs)]


def reference_plain(setup: Setup, sample: Sample) -> list[int]:
    """`processor(text=..., images=...)` for a plain document."""
    text = plain_text(setup, sample.parts)
    images = [pil(p.data) for p in sample.images] or None
    out = setup.processor(text=text, images=images)
    return [int(i) for i in out["input_ids"][0]]


def auto_tokenizer(folder: Path):
    """The tokenizer as a processor loads it: AutoTokenizer on the folder."""
    return AutoTokenizer.from_pretrained(str(folder))


def random_conversation(rng: np.random.Generator, n_images: int, *, system: bool = True
                        ) -> list[dict]:
    """A conversation of 1-3 rounds with 0-2 images placed anywhere in user turns, and text
    with the awkward bits real data has: blank lines, double spaces, trailing spaces."""
    def text() -> str:
        pieces = sentences(rng, int(rng.integers(1, 3)))
        glue = str(rng.choice([" ", "\n", "\n\n", "  "]))
        return glue.join(pieces) + str(rng.choice(["", " ", "\n"]))

    images = list(rng.permutation(n_images)[:int(rng.integers(0, 3))])
    messages = []
    if system and rng.random() < 0.3:
        messages.append({"role": "system", "content": [txt(text())]})
    rounds = int(rng.integers(1, 4))
    for r in range(rounds):
        content = [txt(text().strip() or "Hello.")]
        while images and (r == rounds - 1 or rng.random() < 0.5):
            content.insert(int(rng.integers(0, len(content) + 1)), img(int(images.pop())))
        messages.append({"role": "user", "content": content})
        messages.append({"role": "assistant", "content": [txt(text().strip() or "Yes.")]})
    return messages


def random_sizes(rng: np.random.Generator, n: int, tile: int) -> list[tuple[int, int]]:
    """Image sizes from well under a tile to several tiles, aspect ratios up to 1:6."""
    out = []
    for _ in range(n):
        long = int(rng.integers(max(2, tile // 4), tile * 6))
        short = max(1, int(long / rng.uniform(1, 6)))
        out.append((long, short) if rng.random() < 0.5 else (short, long))
    return out
