"""Tokenizers with mixdata's special tokens: the built-in byte tokenizer and HF tokenizer.json.

Both expose the same small interface (`Tokenizer`), as does a model folder's own tokenizer
(`mixdata.tokens.hf.ModelTokenizer`, the model dialect). Special tokens are never produced by
`encode`: text that happens to spell `<image>` or `<s>` stays text, so a source cannot inject
placeholders or document boundaries. Only `render` places specials, by id.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import tokenizers

from ..errors import MixdataError
from ..image import special_tokens

PAD, BOS, EOS, END = "<pad>", "<s>", "</s>", "<|end|>"
IMAGE = "<image>"
ROLE_TOKENS = {"system": "<|system|>", "user": "<|user|>", "assistant": "<|assistant|>"}
BASE_SPECIALS: tuple[str, ...] = (PAD, BOS, EOS, *ROLE_TOKENS.values(), END)
HASH_FORMAT = "mixdata-tokenizer-v1"


def special_names() -> list[str]:
    """Every special token mixdata uses, in id order: the base set, then the image symbols."""
    names = list(BASE_SPECIALS)
    names += [n for n in special_tokens() if n not in names]
    if IMAGE not in names:
        raise MixdataError(f"mixdata.image.special_tokens() lacks the placeholder {IMAGE!r}")
    return names


class Tokenizer:
    """The interface `render`, the build and the loader use.

    Subclasses set `identity` (what the manifest names: "bytes" or the tokenizer.json path),
    `special_ids` (name -> id for every special), `vocab_size` (ids are < vocab_size) and
    `sha256` (of the vocabulary including specials). Pickling sends only what rebuilds it.
    """

    spec: str
    identity: str
    special_ids: dict[str, int]
    vocab_size: int
    sha256: str

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, with no specials added."""
        raise NotImplementedError

    def decode(self, ids) -> str:
        """Text of `ids`; special tokens are rendered by name."""
        raise NotImplementedError

    def special_id(self, name: str) -> int:
        try:
            return self.special_ids[name]
        except KeyError:
            raise KeyError(f"{name!r} is not a special token of {self.identity}; "
                           f"known: {sorted(self.special_ids)}") from None

    @property
    def pad_id(self) -> int:
        return self.special_ids[PAD]

    @property
    def bos_id(self) -> int:
        return self.special_ids[BOS]

    @property
    def eos_id(self) -> int:
        return self.special_ids[EOS]

    @property
    def image_id(self) -> int:
        return self.special_ids[IMAGE]

    def __reduce__(self):
        raise NotImplementedError  # each tokenizer pickles as the arguments that rebuild it

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.identity!r}, vocab_size={self.vocab_size})"


def _digest(payload: dict) -> str:
    text = json.dumps(payload, sort_keys=True, ensure_ascii=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


class ByteTokenizer(Tokenizer):
    """Ids 0-255 are the UTF-8 bytes of the text; specials follow from 256 on."""

    def __init__(self) -> None:
        self.spec = self.identity = "bytes"
        names = special_names()
        self.special_ids = {name: 256 + i for i, name in enumerate(names)}
        self._names = {i: name for name, i in self.special_ids.items()}
        self.vocab_size = 256 + len(names)
        self.sha256 = _digest({"format": HASH_FORMAT, "model": "bytes",
                               "specials": self.special_ids})

    def __reduce__(self):
        return ByteTokenizer, ()

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids) -> str:
        out, run = [], bytearray()
        for i in (int(x) for x in ids):
            if i < 256:
                run.append(i)
                continue
            out.append(run.decode("utf-8", errors="replace"))
            run = bytearray()
            out.append(self._names.get(i, f"<unk:{i}>"))
        out.append(run.decode("utf-8", errors="replace"))
        return "".join(out)


class HFTokenizer(Tokenizer):
    """A HF `tokenizers` tokenizer.json, with mixdata's specials added where missing."""

    def __init__(self, spec: str, path: Path) -> None:
        self.spec, self.identity, self.path = spec, str(path), path
        try:
            tok = tokenizers.Tokenizer.from_file(str(path))
        except Exception as exc:  # the tokenizers library raises bare Exceptions on bad files
            raise MixdataError(f"tokenizer {spec!r}: {path} is not a valid tokenizer.json "
                               f"({exc})") from exc
        tok.no_padding()
        tok.no_truncation()
        names = special_names()
        tok.add_special_tokens([n for n in names if tok.token_to_id(n) is None])
        tok.encode_special_tokens = True  # a special's name inside text is encoded as text
        self._tok = tok
        self.special_ids = {n: tok.token_to_id(n) for n in names}
        self.vocab_size = tok.get_vocab_size(with_added_tokens=True)
        self.sha256 = self._vocab_hash()

    def __reduce__(self):
        return HFTokenizer, (self.spec, self.path)

    def _vocab_hash(self) -> str:
        # Vocabulary and merges only: serialisation details of other sections change between
        # `tokenizers` versions, and the hash must be stable across machines.
        vocab = sorted(self._tok.get_vocab(with_added_tokens=True).items(), key=lambda kv: kv[1])
        model = json.loads(self._tok.to_str()).get("model", {})
        merges = [m.split(" ", 1) if isinstance(m, str) else list(m)
                  for m in model.get("merges", [])]
        return _digest({"format": HASH_FORMAT, "model": model.get("type"), "vocab": vocab,
                        "merges": merges, "specials": self.special_ids})

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)
