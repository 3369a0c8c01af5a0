"""Benchmark: rendering SFT records in a model's own dialect, against transformers' processor.

A local Idefics3 folder (a byte-level BPE trained here, the Idefics3 chat template, the
reference image settings: longest edge 1456, 364 px tiles, 169 tokens per tile) and
conversations of 3-6 rounds generated with a fixed seed. Paths compared in one run, records
in, ids + loss mask out (both checked equal):

1. text only: mixdata `render` vs `Idefics3Processor.apply_chat_template(tokenize=True)` with
   `return_assistant_tokens_mask=True` on the template's `{% generation %}` variant (mixdata
   finds the replies by prefix rendering on the plain template, as it would on a real one);
2. with two 640x480 JPEG photos per record: mixdata `process` (decode, resize, encode) +
   `render` vs the processor on the decoded images (its PIL backend, float32 pixels out).

Usage: python tools/bench_dialect.py [--records 40] [--repeat 3]   (needs transformers)
"""
from __future__ import annotations

import argparse
import io
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

WORDS = ("the", "a", "red", "green", "blue", "small", "big", "square", "circle", "left", "right",
         "top", "picture", "photo", "what", "is", "in", "on", "of", "and", "this", "that",
         "colour", "shape", "two", "one", "there", "are", "shows", "describe", "compare", "yes",
         "no", "city", "capital", "country", "word", "page", "text", "number")
LOOP = ("{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
        "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}")
HEAD = ("<|begin_of_text|>{% for message in messages %}{{message['role'] | capitalize}}"
        "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}")
TAIL = "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
TEMPLATE = HEAD + LOOP + "<end_of_utterance>\n" + TAIL
MARKED = HEAD + ("{% if message['role'] == 'assistant' %}{% generation %}" + LOOP
                 + "<end_of_utterance>{% endgeneration %}{{ '\\n' }}{% else %}" + LOOP
                 + "<end_of_utterance>\n{% endif %}") + TAIL


def sentence(rng) -> str:
    return " ".join(rng.choice(WORDS, int(rng.integers(6, 30)))).capitalize() + "."


def make_folder(root: Path) -> Path:
    from tokenizers import (
        AddedToken,
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    rng = np.random.default_rng(0)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([sentence(rng) for _ in range(3000)], trainers.BpeTrainer(
        vocab_size=2000, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<end_of_utterance>",
                "<fake_token_around_image>", "<image>", "<global-img>",
                *[f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)]]
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    tok.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", 0 + tok.token_to_id(
            "<|begin_of_text|>"))])
    folder = root / "idefics3"
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|begin_of_text|>",
                            eos_token="<end_of_utterance>",
                            pad_token="<|end_of_text|>").save_pretrained(str(folder))
    (folder / "chat_template.jinja").write_text(TEMPLATE)
    (folder / "processor_config.json").write_text(json.dumps(
        {"processor_class": "Idefics3Processor", "image_seq_len": 169}))
    return folder


def photo(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (12, 16, 3), np.uint8)
    image = Image.fromarray(small).resize((640, 480), Image.Resampling.BICUBIC)
    noisy = np.asarray(image, np.int16) + rng.integers(-8, 8, (480, 640, 3))
    out = io.BytesIO()
    Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(out, "JPEG", quality=90)
    return out.getvalue()


def conversations(rng, n: int, images: int) -> list[list[dict]]:
    out = []
    for _ in range(n):
        messages = []
        for r in range(int(rng.integers(3, 7))):
            content = [{"type": "text", "text": sentence(rng)}]
            if r == 0:
                content = [{"type": "image", "index": i} for i in range(images)] + content
            messages += [{"role": "user", "content": content},
                         {"role": "assistant", "content": [{"type": "text",
                                                            "text": sentence(rng)}]}]
        out.append(messages)
    return out


def inputs(convs, photos, decoded):
    """mixdata Samples and HF messages of the same conversations."""
    from mixdata.sample import ImagePart, Sample, TextPart

    samples = [Sample(id=str(k), source="s", kind="sft", parts=tuple(
        ImagePart(data=photos[c["index"]]) if c["type"] == "image"
        else TextPart(text=c["text"], role=m["role"]) for m in conv for c in m["content"]))
        for k, conv in enumerate(convs)]
    messages = [[{"role": m["role"], "content": [
        {"type": "image", "image": decoded[c["index"]]} if c["type"] == "image" else c
        for c in m["content"]]} for m in conv] for conv in convs]
    return samples, messages


def measure(paths: dict, repeat: int, check) -> dict[str, float]:
    """Best seconds per path over `repeat` passes, paths taking turns; `check(results)`."""
    times = {name: [] for name in paths}
    for _ in range(repeat):
        results = {}
        for name, fn in paths.items():
            start = time.perf_counter()
            results[name] = fn()
            times[name].append(time.perf_counter() - start)
        check(results)
    return {name: min(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=40)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    from transformers import AutoTokenizer, Idefics3ImageProcessorPil, Idefics3Processor

    from mixdata.image import ImagePolicy, process
    from mixdata.tokens import load_tokenizer, render

    folder = make_folder(Path(tempfile.mkdtemp()))
    tok = load_tokenizer(str(folder), family="idefics3", grid=4)
    processor = Idefics3Processor(Idefics3ImageProcessorPil(), AutoTokenizer.from_pretrained(
        str(folder)), image_seq_len=169, chat_template=TEMPLATE)
    policy = ImagePolicy(preset="idefics3")
    photos = [photo(i) for i in range(2)]
    decoded = [Image.open(io.BytesIO(p)).convert("RGB") for p in photos]
    rng = np.random.default_rng(1)
    print(f"machine: {platform.processor() or platform.machine()}, python "
          f"{platform.python_version()}; {args.records} records, best of {args.repeat}")
    for images in (0, 2):
        samples, messages = inputs(conversations(rng, args.records, images), photos, decoded)

        def ours(samples=samples):
            return [render(s, [process(p.data, policy, len(s.images)).plan for p in s.images],
                           tok, tokens_per_tile=169, seq_len=1 << 20)[0] for s in samples]

        def theirs(messages=messages):
            return [processor.apply_chat_template(m, chat_template=MARKED, tokenize=True,
                                                  return_dict=True,
                                                  return_assistant_tokens_mask=True)
                    for m in messages]

        def check(results):
            for doc, ref in zip(results["mixdata"], results["transformers"]):
                assert doc.ids.tolist() == list(ref["input_ids"][0])
                assert doc.loss.tolist() == list(ref["assistant_masks"][0])
            check.tokens = sum(len(d.ids) for d in results["mixdata"]) / len(samples)

        best = measure({"mixdata": ours, "transformers": theirs}, args.repeat, check)
        rate = {name: args.records / seconds for name, seconds in best.items()}
        print(f"{images} images/record ({check.tokens:.0f} tokens/record): mixdata "
              f"{rate['mixdata']:.1f} records/s, transformers {rate['transformers']:.1f} "
              f"records/s, ratio {rate['mixdata'] / rate['transformers']:.2f}x")


if __name__ == "__main__":
    main()
