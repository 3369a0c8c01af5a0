"""A model's own tokenizer folder, through transformers: the model dialect's tokenizer.

`load_model_tokenizer(spec, family, ...)` reads an HF tokenizer or model folder (a local path
or any fsspec URL; a remote folder's few small files are copied to
`$MIXDATA_CACHE/tokenizers/<content hash>/` first) with `transformers.AutoTokenizer`, exactly
as the family's processor would load it. It adds nothing unless `add_tokens` is set, and then
only the family's missing image tokens, which `added_tokens` records.

transformers is an optional extra (`pip install mixdata[hf]`); it is imported only here, when
a recipe names a tokenizer folder.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from functools import cached_property
from pathlib import Path

import numpy as np
from tokenizers import AddedToken

from ..errors import MixdataError, RecordRejected
from ..storage import with_retries
from .families import FAMILY, PROCESSOR_CLASSES, required_tokens
from .tokenizer import Tokenizer, _digest

# Files of a tokenizer / processor folder that the dialect reads (weights are never fetched).
FOLDER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                "added_tokens.json", "chat_template.jinja", "chat_template.json",
                "processor_config.json", "preprocessor_config.json", "config.json")
HASH_FORMAT = "mixdata-model-tokenizer-v1"
# Private-use characters around source text that spells a control token, so that it is
# encoded as text; the same pair transformers' `sanitize_control_tokens` uses.
MARK_START, MARK_END = "\U000f0000", "\U000f0001"
REPLY_PROBE = "\U000f0002"  # stands in for a reply when locating it (chat._reply_start)
GENERATION_TAG = re.compile(r"\{\%-?\s*generation\s*-?\%\}")


def cache_root() -> Path:
    return Path(os.environ.get("MIXDATA_CACHE", "~/.cache/mixdata")).expanduser()


def resolve_folder(spec: str) -> Path:
    """A local folder holding the tokenizer files of `spec` (a path, or an fsspec URL whose
    files are copied once into the cache, keyed by their content)."""
    if "://" not in spec:
        path = Path(spec).expanduser()
        if not (path / "tokenizer.json").is_file():
            raise MixdataError(f"tokenizer {spec!r}: expected an HF tokenizer or model folder "
                               f"holding tokenizer.json; {path / 'tokenizer.json'} does not "
                               "exist (name a tokenizer.json file itself for mixdata's own "
                               "dialect)")
        return path
    files = _fetch_files(spec)
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + hashlib.sha256(files[name]).digest())
    target = cache_root() / "tokenizers" / digest.hexdigest()[:24]
    if not target.is_dir():
        tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for name, data in files.items():
            (tmp / name).write_bytes(data)
        try:
            os.replace(tmp, target)
        except OSError:  # another process finished the same copy first
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _fetch_files(spec: str) -> dict[str, bytes]:
    import fsspec

    fs, root = fsspec.core.url_to_fs(spec)
    files = {}
    for name in FOLDER_FILES:
        path = f"{root.rstrip('/')}/{name}"
        try:
            files[name] = with_retries(lambda: fs.cat_file(path))
        except FileNotFoundError:
            continue
        except OSError as err:
            raise MixdataError(f"tokenizer {spec!r}: cannot read {name} ({err})") from None
    if "tokenizer.json" not in files:
        raise MixdataError(f"tokenizer {spec!r}: the folder has no tokenizer.json")
    return files


def _import_transformers():
    try:
        import transformers
    except ImportError:
        raise MixdataError("an HF tokenizer folder needs transformers, an optional extra of "
                           "mixdata: pip install mixdata[hf]") from None
    transformers.logging.set_verbosity_error()  # its advisory warnings would flood a build
    return transformers


def read_json(folder: Path, name: str) -> dict:
    """A folder's JSON config as a dict; {} when the file is absent."""
    path = folder / name
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise MixdataError(f"{path} is not valid JSON ({err})") from None
    return data if isinstance(data, dict) else {}


def chat_template_of(folder: Path, tokenizer_template) -> str | None:
    """The template `processor.apply_chat_template` uses: the processor's (processor_config
    "chat_template", then chat_template.json, then chat_template.jinja), else the tokenizer's."""
    template = read_json(folder, "processor_config.json").get("chat_template")
    if template is None:
        template = read_json(folder, "chat_template.json").get("chat_template")
    if template is None and (folder / "chat_template.jinja").is_file():
        template = (folder / "chat_template.jinja").read_text(encoding="utf-8")
    if template is None:
        template = tokenizer_template
    if isinstance(template, dict):
        template = template.get("default")
    return template if isinstance(template, str) and template else None


class ModelTokenizer(Tokenizer):
    """A model folder's tokenizer and chat template, with one family's image tokens.

    - `hf`: the transformers tokenizer; `chat_template` (or None) and `template_sha256`.
    - `spellings`: family role -> token text; `roles`: dialect role -> id (pad, bos, eos,
      image and the family's tokens; pad falls back to eos, as trainers do, `pad_is_eos`).
    - `prefix_ids` / `suffix_ids`: what the tokenizer's post-processor adds around a text
      (e.g. Llama's BOS), which plain documents follow.
    - `added_tokens`: token -> id of what `add_tokens` added (the model must grow its
      embeddings to match); empty otherwise.
    - `processor_config` / `image_config`: processor_config.json / preprocessor_config.json.
    `encode` never produces a special token: text spelling one stays text.
    """

    def __init__(self, spec: str, folder: Path, family: str, *, add_tokens: bool = False,
                 grid: int = 0) -> None:
        transformers = _import_transformers()
        self.spec, self.identity, self.folder, self.family = spec, spec, Path(folder), family
        self._args = (spec, str(folder), family, add_tokens, grid)
        try:
            self.hf = transformers.AutoTokenizer.from_pretrained(str(folder))
        except Exception as err:  # noqa: BLE001 - transformers raises anything on a bad folder
            raise MixdataError(f"tokenizer {spec!r}: {folder} does not load as an HF tokenizer "
                               f"({type(err).__name__}: {err}); is tokenizer.json valid?") from None
        self.spellings = FAMILY[family].spellings(self.hf)
        self.added_tokens = self._ensure_tokens(required_tokens(family, self.spellings, grid),
                                                add_tokens)
        self.chat_template = chat_template_of(self.folder, getattr(self.hf, "chat_template", None))
        self.template_sha256 = (hashlib.sha256(self.chat_template.encode()).hexdigest()
                                if self.chat_template else None)
        self.processor_config = read_json(self.folder, "processor_config.json")
        self.image_config = read_json(self.folder, "preprocessor_config.json")
        self.vocab_size = len(self.hf)
        self.roles = self._roles()
        self.special_ids = {self.hf.convert_ids_to_tokens(i): i for i in self.roles.values()}
        self.prefix_ids, self.suffix_ids = self._post_processor_ids()
        self.sha256 = self._vocab_hash()

    def _ensure_tokens(self, needed: list[str], add_tokens: bool) -> dict[str, int]:
        """Check (or, with add_tokens, add) every token the family's layouts write."""
        known = self.hf.added_tokens_encoder
        missing = [t for t in dict.fromkeys(needed) if t not in known]
        if not missing:
            return {}
        if not add_tokens:
            raise MixdataError(
                f"tokenizer {self.spec!r} lacks the {self.family} image token(s) "
                f"{', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''} ({len(missing)} "
                "in all; a token in the base vocabulary only does not count: text would not "
                "map to it). Use the model's own tokenizer folder, or set tokenizer: {path: ..., "
                "add_tokens: true} to add them (the model's embeddings must then grow to match)")
        self.hf.add_tokens([AddedToken(t, special=True, normalized=False) for t in missing],
                           special_tokens=True)
        return {t: self.hf.added_tokens_encoder[t] for t in missing}

    def _roles(self) -> dict[str, int]:
        roles = {}
        for role in ("bos", "eos", "pad"):
            value = getattr(self.hf, f"{role}_token_id", None)
            if value is not None:
                roles[role] = int(value)
        self.pad_is_eos = "pad" not in roles and "eos" in roles
        if self.pad_is_eos:
            roles["pad"] = roles["eos"]
        if "pad" not in roles:
            raise MixdataError(f"tokenizer {self.spec!r} has neither a pad nor an eos token; "
                               "the loader needs one to pad batches")
        for role, text in self.spellings.items():
            roles[role] = int(self.hf.added_tokens_encoder[text])
        return roles

    def _post_processor_ids(self) -> tuple[list[int], list[int]]:
        bare = self.hf("a", add_special_tokens=False)["input_ids"]
        full = self.hf("a", add_special_tokens=True)["input_ids"]
        for start in range(len(full) - len(bare) + 1):
            if full[start:start + len(bare)] == bare:
                return full[:start], full[start + len(bare):]
        raise MixdataError(f"tokenizer {self.spec!r}: its post-processor does more than add "
                           "tokens around the text; mixdata cannot follow it")

    def _vocab_hash(self) -> str:
        backend = json.loads(self.hf.backend_tokenizer.to_str())
        model = backend.get("model", {})
        vocab = sorted(self.hf.get_vocab().items(), key=lambda kv: kv[1])
        merges = [m.split(" ", 1) if isinstance(m, str) else list(m)
                  for m in model.get("merges", [])]
        added = [[t["id"], t["content"], t["special"]] for t in backend.get("added_tokens", [])]
        return _digest({"format": HASH_FORMAT, "model": model.get("type"), "vocab": vocab,
                        "merges": merges, "added": added, "roles": self.roles,
                        "parts": [type(getattr(self.hf.backend_tokenizer, name)).__name__
                                  for name in ("normalizer", "pre_tokenizer", "post_processor")]})

    @cached_property
    def control_tokens(self) -> tuple[str, ...]:
        """Tokens that source text may spell but must never become: every special added
        token, every added token the chat template writes, and the family's tokens; longest
        first, so a token is matched before the ones it contains."""
        template = self.chat_template or ""
        tokens = {t.content for t in self.hf.added_tokens_decoder.values()
                  if t.special or (t.content in template and not t.content.isspace())}
        tokens |= set(self.spellings.values()) | set(self.added_tokens)
        tokens |= {t for t in self.hf.added_tokens_encoder if re.fullmatch(r"<row_\d+_col_\d+>", t)}
        return tuple(sorted(tokens, key=lambda t: (-len(t), t)))

    @cached_property
    def control_pattern(self) -> re.Pattern:
        return re.compile("|".join(map(re.escape, self.control_tokens)) or "(?!)")

    @cached_property
    def _split_pattern(self) -> re.Pattern:
        """A marked control token (group 1), or a lone marker that only breaks the text."""
        return re.compile(f"{MARK_START}({self.control_pattern.pattern}){MARK_END}"
                          f"|[{MARK_START}{MARK_END}]")

    def mark(self, text: str) -> str:
        """`text` with every control token it spells wrapped in the private markers."""
        for private in (MARK_START, MARK_END, REPLY_PROBE):
            text = text.replace(private, "")
        return self.control_pattern.sub(lambda m: f"{MARK_START}{m.group(0)}{MARK_END}", text)

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text, add_special_tokens=False, split_special_tokens=True)

    def decode(self, ids) -> str:
        return self.hf.decode([int(i) for i in ids], skip_special_tokens=False)

    @property
    def pad_id(self) -> int:
        return self.roles["pad"]

    @property
    def bos_id(self) -> int | None:
        return self.roles.get("bos")

    @property
    def eos_id(self) -> int | None:
        return self.roles.get("eos")

    @property
    def image_id(self) -> int:
        return self.roles["image"]

    def special_id(self, name: str) -> int:
        if name in self.roles:
            return self.roles[name]
        return super().special_id(name)

    def __reduce__(self):
        return _restore, self._args

    def encode_prompt(self, text: str, add_special_tokens: bool) -> tuple[np.ndarray, np.ndarray]:
        """ids int64 [n] and character offsets int64 [n, 2] of a rendered prompt.

        Without markers this is the tokenizer on the whole string, as the processor calls it.
        Marked control tokens are encoded as plain text the way transformers'
        `encode_marked_chat` does (the text around them encoded as pieces); the tokenizer's
        post-processor tokens then go around the result.
        """
        if MARK_START not in text and MARK_END not in text:
            out = self.hf(text, add_special_tokens=add_special_tokens,
                          return_offsets_mapping=True)
            return (np.asarray(out["input_ids"], np.int64),
                    np.asarray(out["offset_mapping"], np.int64).reshape(-1, 2))
        ids, offsets = _encode_marked(self, text)
        if add_special_tokens:
            ids = self.prefix_ids + ids + self.suffix_ids
            offsets = ([(0, 0)] * len(self.prefix_ids) + offsets
                       + [(len(text), len(text))] * len(self.suffix_ids))
        return np.asarray(ids, np.int64), np.asarray(offsets, np.int64).reshape(-1, 2)


def _encode_piece(tok: ModelTokenizer, piece: str, as_text: bool, first: bool):
    """(ids, offsets within `piece`) of one piece of a marked prompt."""
    def run(text: str):
        out = tok.hf(text, add_special_tokens=False, return_offsets_mapping=True,
                     split_special_tokens=as_text)
        return out["input_ids"], [tuple(o) for o in out["offset_mapping"]]

    if first:
        return run(piece)
    # As transformers does: encode after a newline, so a SentencePiece-style tokenizer adds
    # no prefix space mid-prompt, then drop the newline's tokens again.
    newline = tok.hf("\n", add_special_tokens=False)["input_ids"]
    ids, offsets = run("\n" + piece)
    if ids[:len(newline)] == newline:
        return ids[len(newline):], [(max(0, a - 1), max(0, b - 1))
                                    for a, b in offsets[len(newline):]]
    return run(piece)


def _encode_marked(tok: ModelTokenizer, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    ids, offsets, position, first = [], [], 0, True
    pieces = []
    for match in tok._split_pattern.finditer(text):
        pieces.append((text[position:match.start()], position, False))
        if match.group(1):
            pieces.append((match.group(1), match.start(1), True))
        position = match.end()
    pieces.append((text[position:], position, False))
    for piece, start, as_text in pieces:
        if not piece and not first:
            continue
        piece_ids, piece_offsets = _encode_piece(tok, piece, as_text, first)
        first = False
        if as_text and tok.hf.added_tokens_encoder.get(piece) in piece_ids:
            raise RecordRejected("special_text", f"the text {piece!r} cannot be encoded as "
                                 "text: this tokenizer produces the token from plain text")
        ids += piece_ids
        offsets += [(a + start, b + start) for a, b in piece_offsets]
    return ids, offsets


def _restore(spec, folder, family, add_tokens, grid) -> ModelTokenizer:
    return ModelTokenizer(spec, Path(folder), family, add_tokens=add_tokens, grid=grid)


def folder_family(folder: Path) -> str | None:
    """The family of a folder's processor class (processor_config.json, else the
    preprocessor's or tokenizer's config), or None."""
    for name in ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json"):
        family = PROCESSOR_CLASSES.get(str(read_json(folder, name).get("processor_class")))
        if family:
            return family
    return None


def load_model_tokenizer(spec: str, family: str | None, *, add_tokens: bool = False,
                         grid: int = 0) -> ModelTokenizer:
    """The model dialect's tokenizer for `spec`, checked to hold every token the family's
    layouts write (idefics3: tile markers up to `grid` rows and columns), or adding the
    missing ones when `add_tokens` is set. `family` None: the folder's processor class."""
    _import_transformers()  # first, so a missing extra is the first error a user sees
    folder = resolve_folder(spec)
    family = family or folder_family(folder)
    if family not in FAMILY:
        raise MixdataError(f"tokenizer {spec!r}: cannot tell its image family (no known "
                           "processor_class); name it: " + ", ".join(FAMILY))
    return ModelTokenizer(spec, folder, family, add_tokens=add_tokens, grid=grid)
