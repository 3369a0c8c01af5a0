"""`mixdata inspect DIR --index K [--png FILE] [--html FILE]`: one packed sequence, decoded."""
from __future__ import annotations

import argparse


def register(sub) -> None:
    parser = sub.add_parser(
        "inspect", help="show one packed sequence of a built stage, as text or as a picture",
        description="Decode packed sequence K of a shard folder: each document's source and "
                    "sample id, its text with image markers (placeholder runs collapsed), its "
                    "supervised (loss) spans, and each image's size, grid and token span. "
                    "--png draws it: the token strip (document starts, each image's tokens in "
                    "its own colour, supervised tokens, padding), every image's views in their "
                    "grid labelled with their <row_r_col_c> / <global-img> markers, each "
                    "document's text, and a legend. --html writes the same as a web page "
                    "(hover a token to read it).")
    parser.add_argument("dir", help="shard folder (with manifest.json)")
    parser.add_argument("--index", type=int, default=0,
                        help="sequence index in the stage (default 0)")
    parser.add_argument("--width", type=int, default=400,
                        help="characters of text shown per document (default 400; 0 = all)")
    parser.add_argument("--png", metavar="FILE", default=None,
                        help="also draw the sequence into this PNG file")
    parser.add_argument("--html", metavar="FILE", default=None,
                        help="also write the sequence as a self-contained HTML page")
    parser.set_defaults(run=run)


def find_sequence(folder: str, manifest, index: int):
    from ..errors import MixdataError
    from ..shards import iter_shard
    from ..storage import open_binary

    if not 0 <= index < manifest.samples:
        raise MixdataError(f"--index {index} is out of range: the stage has "
                           f"{manifest.samples} sequences")
    for shard in manifest.shards:
        if index < shard.samples:
            with open_binary(f"{folder.rstrip('/')}/{shard.name}") as fh:
                for i, seq in enumerate(iter_shard(fh)):
                    if i == index:
                        return shard.name, seq
        index -= shard.samples
    raise MixdataError("manifest and shards disagree; rebuild the stage")


def summary(index: int, name: str, seq, seq_len: int) -> str:
    return (f"sequence {index} ({name}, key {seq.key}): {len(seq.tokens)} tokens of {seq_len}, "
            f"{len(seq.docs) - 1} documents, {len(seq.meta['images'])} images, "
            f"{int(seq.loss.sum())} supervised")


def print_text(seq, tok, width: int) -> None:
    from ..inspect_image import clip, compact, spans

    for d, (start, end) in enumerate(zip(seq.docs[:-1], seq.docs[1:])):
        info = seq.meta["docs"][d]
        print(f"doc {d} [{start}:{end}) source={info['source']} id={info['id']}")
        print("  text: " + clip(compact(tok.decode(seq.tokens[start:end].tolist())), width))
        for a, b in spans(seq.loss[start:end]):
            text = compact(tok.decode(seq.tokens[start + a:start + b].tolist()))
            print(f"  loss [{start + a}:{start + b}): {clip(text, width)!r}")
    for i, image in enumerate(seq.meta["images"]):
        plan = image["plan"]
        w, h = plan["resized_size"]
        print(f"image {i} (doc {image['doc']}): {w}x{h}, grid {plan['rows']}x{plan['cols']}, "
              f"tile {plan['tile']}, global view {plan['global_view']}, "
              f"tokens [{image['span'][0]}:{image['span'][1]})")


def load_manifest_tokenizer(manifest):
    """The tokenizer the build used; for a model family, the model folder with the tokens
    the build added, so they decode by name."""
    from ..tokens import load_tokenizer

    dialect = manifest.dialect
    if dialect.family == "mixdata":
        return load_tokenizer(dialect.tokenizer)
    return load_tokenizer(dialect.tokenizer, family=dialect.family,
                          add_tokens=bool(dialect.added_tokens))


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..manifest import read_manifest

    manifest = read_manifest(args.dir)
    tok = load_manifest_tokenizer(manifest)
    name, seq = find_sequence(args.dir, manifest, args.index)
    title = summary(args.index, name, seq, manifest.seq_len)
    print(title)
    print_text(seq, tok, args.width)
    if args.png or args.html:
        from ..inspect_image import draw_sequence, sequence_html

        heading = f"{Path(args.dir.rstrip('/')).name}: {title}"
        if args.png:
            picture = draw_sequence(seq, tok, manifest.seq_len, title=heading,
                                    text_width=args.width)
            picture.save(args.png)
            print(f"wrote {args.png} ({picture.image.width}x{picture.image.height})")
        if args.html:
            Path(args.html).write_text(sequence_html(seq, tok, manifest.seq_len, title=heading))
            print(f"wrote {args.html}")
    return 0
