"""`mixdata inspect`: the text view, and the picture (`--png`) of a real packed sequence
written to a real shard: its size, and the colour of the strip at known spans."""
import io
import json

import numpy as np
import pytest
from PIL import Image
from shard_fixtures import fixture_manifest

from mixdata.cli import main
from mixdata.image import ImagePolicy
from mixdata.inspect_image import (
    BOUNDARY,
    CELL,
    IMAGE_COLOURS,
    LABEL,
    MARGIN,
    PADDING,
    STRIP_COLUMNS,
    SUPERVISED,
    draw_sequence,
    marker_colour,
    strip_width,
)
from mixdata.manifest import write_manifest
from mixdata.shards import write_shard
from mixdata.tokens import load_tokenizer
from mixdata.tokens.dialect import mixdata_dialect
from mixdata.train.batch import pack_row
from mixdata.train.evaluate import EvalSetup, render_example

SEQ_LEN = 512
POLICY = ImagePolicy(preset="idefics3", longest_edge=128, tile=64, upscale=False)


def png(width: int, height: int, colour) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("bytes")


@pytest.fixture(scope="module")
def sequence(tokenizer):
    """Two SFT documents, each with one image (a 2x2 grid + global, then a single view),
    rendered and laid out by the real image step and tokenizer."""
    import torch

    setup = EvalSetup(tokenizer=tokenizer, policy=POLICY, tokens_per_tile=16, seq_len=SEQ_LEN,
                      device=torch.device("cpu"))
    first = render_example(setup, png(128, 128, (200, 30, 30)),
                           [("What colour is it?", "user"), ("red", "assistant")], "sft")
    second = render_example(setup, png(64, 64, (30, 30, 200)),
                            [("And this one?", "user"), ("blue", "assistant")], "sft")
    return pack_row([first, second], key="000000000")


@pytest.fixture(scope="module")
def stage(tmp_path_factory, sequence, tokenizer):
    folder = tmp_path_factory.mktemp("stage")
    info = write_shard(folder / "shard-000000.tar", [sequence])
    write_manifest(folder, fixture_manifest([info], 0, seq_len=SEQ_LEN, tokens_per_tile=16,
                                            policy=POLICY,
                                            dialect=mixdata_dialect(tokenizer, 16, POLICY)))
    return folder


def centre(picture, t: int) -> tuple:
    x0, y0, x1, y1 = picture.cell(t)
    return picture.image.getpixel(((x0 + x1) // 2, (y0 + y1) // 2))


def test_strip_pixels_have_the_colour_of_their_span(sequence, tokenizer):
    picture = draw_sequence(sequence, tokenizer, SEQ_LEN)
    tokens, image_id = sequence.tokens, tokenizer.image_id
    (a0, b0), (a1, b1) = (tuple(m["span"]) for m in sequence.meta["images"])
    assert (b0 - a0, b1 - a1) > (5 * 16, 16)  # 2x2 + global; one view
    for index, (start, end) in enumerate(((a0, b0), (a1, b1))):
        placeholders = [t for t in range(start, end) if tokens[t] == image_id]
        markers = [t for t in range(start, end) if tokens[t] != image_id]
        assert {centre(picture, t) for t in placeholders} == {IMAGE_COLOURS[index]}
        assert {centre(picture, t) for t in markers} == {marker_colour(index)}
    answers = np.flatnonzero(sequence.loss)
    assert len(answers) == len("red") + len("blue") + 2  # each answer and its <|end|>
    assert {centre(picture, int(t)) for t in answers} == {SUPERVISED}
    assert {centre(picture, t) for t in range(len(tokens), SEQ_LEN)} == {PADDING}
    text = [t for t in range(len(tokens)) if not sequence.loss[t]
            and not (a0 <= t < b0 or a1 <= t < b1)]
    assert not {centre(picture, t) for t in text} & {SUPERVISED, PADDING, *IMAGE_COLOURS}
    for start in sequence.docs[:-1]:  # a black bar at each document's first cell
        x0, y0, _, y1 = picture.cell(int(start))
        assert picture.image.getpixel((x0, (y0 + y1) // 2)) == BOUNDARY


def test_picture_size_follows_the_strip(sequence, tokenizer):
    short = draw_sequence(sequence, tokenizer, SEQ_LEN).image
    long = draw_sequence(sequence, tokenizer, 2 * SEQ_LEN).image
    assert short.width == long.width == 2 * MARGIN + strip_width() == 2 * MARGIN + STRIP_COLUMNS * CELL - 1
    assert long.height - short.height == (SEQ_LEN // STRIP_COLUMNS) * (CELL + LABEL)


def test_png_and_html_from_the_command(stage, sequence, tokenizer, tmp_path, capsys):
    out, page = tmp_path / "seq.png", tmp_path / "seq.html"
    assert main(["inspect", str(stage), "--index", "0", "--png", str(out),
                 "--html", str(page)]) == 0
    printed = capsys.readouterr().out
    assert "2 documents, 2 images, 9 supervised" in printed and f"wrote {out}" in printed
    with Image.open(out) as image:
        assert image.format == "PNG"
        title = f"{stage.name}: {printed.splitlines()[0]}"  # what the command puts on top
        expected = draw_sequence(sequence, tokenizer, SEQ_LEN, title=title).image
        assert image.size == expected.size
        assert np.array_equal(np.asarray(image.convert("RGB")), np.asarray(expected))
    text = page.read_text()
    assert text.count("<figcaption>&lt;row_1_col_1&gt;</figcaption>") == 1
    assert text.count("<figcaption>&lt;global-img&gt;</figcaption>") == 2
    assert text.count("<span title=") == SEQ_LEN


def test_views_are_labelled_with_their_markers(sequence, tokenizer):
    from mixdata.inspect_image import image_views

    grid, single = image_views(sequence, tokenizer)
    assert grid.labels == ["<row_1_col_1>", "<row_1_col_2>", "<row_2_col_1>", "<row_2_col_2>",
                           "<global-img>"]
    assert single.labels == ["<global-img>"] and single.views.shape == (1, 64, 64, 3)
    assert tuple(grid.views[0, 10, 10]) == pytest.approx((200, 30, 30), abs=6)


def test_text_output_and_bad_index(stage, capsys):
    assert main(["inspect", str(stage)]) == 0
    out = capsys.readouterr().out
    assert "loss" in out and "'red<|end|>'" in out and "grid 2x2" in out
    assert main(["inspect", str(stage), "--index", "5"]) == 1
    assert "out of range" in capsys.readouterr().err
    assert json.loads((stage / "manifest.json").read_text())["seq_len"] == SEQ_LEN
