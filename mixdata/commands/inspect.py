"""`mixdata inspect DIR --index K`: one packed sequence, decoded."""
from __future__ import annotations

import argparse
import re

_RUN = re.compile(r"(?:<image>){2,}")


def register(sub) -> None:
    parser = sub.add_parser(
        "inspect", help="print one packed sequence of a built stage, decoded",
        description="Decode packed sequence K of a shard folder: each document's source and "
                    "sample id, its text with image markers (placeholder runs collapsed), its "
                    "supervised (loss) spans, and each image's size, grid and token span.")
    parser.add_argument("dir", help="shard folder (with manifest.json)")
    parser.add_argument("--index", type=int, default=0,
                        help="sequence index in the stage (default 0)")
    parser.add_argument("--width", type=int, default=400,
                        help="characters of text shown per document (default 400; 0 = all)")
    parser.set_defaults(run=run)


def _compact(text: str) -> str:
    return _RUN.sub(lambda m: f"<image>x{len(m.group(0)) // len('<image>')}", text)


def _clip(text: str, width: int) -> str:
    if not width or len(text) <= width:
        return text
    return text[:width] + f"... (+{len(text) - width} chars)"


def spans(mask) -> list[tuple[int, int]]:
    """Maximal [start, end) runs where mask is true."""
    out, start = [], None
    for i, flag in enumerate([*list(mask), 0]):
        if flag and start is None:
            start = i
        elif not flag and start is not None:
            out.append((start, i))
            start = None
    return out


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


def run(args: argparse.Namespace) -> int:
    from ..manifest import read_manifest
    from ..tokens import load_tokenizer

    manifest = read_manifest(args.dir)
    dialect = manifest.dialect
    if dialect.family == "mixdata":
        tok = load_tokenizer(dialect.tokenizer)
    else:  # the model folder, with the tokens the build added, to decode them by name
        tok = load_tokenizer(dialect.tokenizer, family=dialect.family,
                             add_tokens=bool(dialect.added_tokens))
    name, seq = find_sequence(args.dir, manifest, args.index)
    n_img = len(seq.meta["images"])
    print(f"sequence {args.index} ({name}, key {seq.key}): {len(seq.tokens)} tokens of "
          f"{manifest.seq_len}, {len(seq.docs) - 1} documents, {n_img} images, "
          f"{int(seq.loss.sum())} supervised")
    for d, (start, end) in enumerate(zip(seq.docs[:-1], seq.docs[1:])):
        info = seq.meta["docs"][d]
        print(f"doc {d} [{start}:{end}) source={info['source']} id={info['id']}")
        print("  text: " + _clip(_compact(tok.decode(seq.tokens[start:end].tolist())), args.width))
        for a, b in spans(seq.loss[start:end]):
            text = _compact(tok.decode(seq.tokens[start + a:start + b].tolist()))
            print(f"  loss [{start + a}:{start + b}): {_clip(text, args.width)!r}")
    for i, image in enumerate(seq.meta["images"]):
        plan = image["plan"]
        w, h = plan["resized_size"]
        print(f"image {i} (doc {image['doc']}): {w}x{h}, grid {plan['rows']}x{plan['cols']}, "
              f"tile {plan['tile']}, global view {plan['global_view']}, "
              f"tokens [{image['span'][0]}:{image['span'][1]})")
    return 0
