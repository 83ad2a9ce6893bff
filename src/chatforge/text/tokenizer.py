"""The tokenizer chatforge uses for every model: the Rust `tokenizers` library, built from a GGUF
file's metadata or a Hugging Face folder, plus what serving needs around it (special tokens,
end-of-turn ids, the chat template, each token's bytes for logprobs).

`encode` parses special-token strings inside the text as the special tokens themselves, as
transformers does when it tokenizes a rendered chat template, so a rendered prompt and its
`<|im_start|>` markers come out as the model was trained on them.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer as _Backend

from chatforge.models.source import ModelSource
from chatforge.text.errors import TokenizerError
from chatforge.text.gguf_vocab import build_gguf_backend
from chatforge.text.token_bytes import TokenBytes

__all__ = ["Tokenizer", "TokenizerError", "load_tokenizer"]

# Tokens that end an assistant turn in the chat formats of the families we serve. Any of them
# that the vocabulary holds as a special token stops generation, like the EOS token.
END_OF_TURN_TOKENS = (
    "<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>",
    "<|end_of_text|>", "</s>", "<|return|>", "<EOT>",
)
_GGUF_SPECIAL_IDS = {"bos_token": "bos", "eos_token": "eos", "unk_token": "unknown", "pad_token": "padding"}


class Tokenizer:
    """Text <-> token ids for one model. Build it with `from_gguf`, `from_hf_folder` or `load_tokenizer`."""

    def __init__(
        self,
        backend: _Backend,
        special_tokens: dict[str, str | None],
        chat_templates: dict[str, str] | None = None,
        extra_end_of_turn_ids: Iterable[int] = (),
    ):
        self._backend = backend
        self._vocab_size = backend.get_vocab_size(with_added_tokens=True)  # fixed once wrapped: read per token
        # Template variables (bos_token, eos_token, ...): only the names the model sets.
        self.special_tokens = {k: v for k, v in special_tokens.items() if v is not None}
        # "default" is the model's own template; other names (e.g. "tool_use") are alternatives.
        self.chat_templates = dict(chat_templates or {})
        self._special_ids = frozenset(
            i for i, tok in backend.get_added_tokens_decoder().items() if tok.special
        )
        # NOTE: the backend counts its vocabulary anew on every call (0.25 ms for 262,144 tokens),
        # and every decode checks its ids against the size: count once.
        self._vocab_size = backend.get_vocab_size(with_added_tokens=True)
        self.end_of_turn_ids = self._end_of_turn_ids(extra_end_of_turn_ids)
        self._bytes = TokenBytes(backend)

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def from_gguf(cls, metadata: dict[str, Any]) -> Tokenizer:
        """From `GGUFFile(path).metadata`."""
        backend = build_gguf_backend(metadata)
        tokens = metadata["tokenizer.ggml.tokens"]
        special = {}
        for name, key in _GGUF_SPECIAL_IDS.items():
            token_id = metadata.get(f"tokenizer.ggml.{key}_token_id")
            special[name] = tokens[token_id] if token_id is not None and 0 <= token_id < len(tokens) else None
        templates = {}
        if metadata.get("tokenizer.chat_template"):
            templates["default"] = metadata["tokenizer.chat_template"]
        for name in metadata.get("tokenizer.chat_templates") or ():
            source = metadata.get(f"tokenizer.chat_template.{name}")
            if source:
                templates[name] = source
        extra = [metadata[k] for k in ("tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id") if k in metadata]
        return cls(backend, special, templates, extra)

    @classmethod
    def from_hf_folder(cls, path: str | Path) -> Tokenizer:
        """From tokenizer.json, with tokenizer_config.json, special_tokens_map.json, the chat
        template files and generation_config.json's EOS ids when the folder has them."""
        from chatforge.text.hf_folder import read_hf_tokenizer_folder

        folder = read_hf_tokenizer_folder(Path(path))
        return cls(folder.backend, folder.special_tokens, folder.chat_templates, folder.end_of_turn_ids)

    # -- text <-> ids ------------------------------------------------------------------------
    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids of `text`; with `add_special_tokens`, the model's BOS/EOS around it (if it uses them)."""
        if not isinstance(text, str):
            raise TypeError(f"encode() takes a str, not {type(text).__name__}")
        return self._backend.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        ids = list(ids)
        self.check_ids(ids)
        return self._backend.decode(ids, skip_special_tokens=skip_special_tokens)

    def id_to_token(self, token_id: int) -> str:
        """The vocabulary entry, as the vocabulary spells it (e.g. "Ġthe", "▁the", "<0x0A>")."""
        self.check_ids([token_id])
        return self._backend.id_to_token(token_id)

    def token_to_id(self, token: str) -> int | None:
        return self._backend.token_to_id(token)

    def token_bytes(self, token_id: int) -> bytes:
        """The UTF-8 bytes the token stands for (possibly part of a character), as logprobs report them."""
        self.check_ids([token_id])
        return self._bytes(token_id)

    def token_bytes_table(self) -> list[bytes]:
        """Every token's bytes, in id order (computed together, not cached: a grammar engine's
        copy of the vocabulary)."""
        return self._bytes.table(self.vocab_size)

    def is_special(self, token_id: int) -> bool:
        return token_id in self._special_ids

    @property
    def special_ids(self) -> frozenset[int]:
        return self._special_ids

    # -- properties --------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    @property
    def backend(self) -> _Backend:
        """The underlying `tokenizers.Tokenizer` (for streaming decoders and grammar engines)."""
        return self._backend

    @property
    def chat_template(self) -> str | None:
        """The model's default chat template, or None when it has none."""
        return self.chat_templates.get("default")

    def get_chat_template(self, name: str | None = None, *, with_tools: bool = False) -> str | None:
        """A named template; for no name, "tool_use" when tools are given and the model has one,
        otherwise the default."""
        if name is not None:
            if name not in self.chat_templates:
                raise TokenizerError(f"no chat template named {name!r} (have {sorted(self.chat_templates)})")
            return self.chat_templates[name]
        if with_tools and "tool_use" in self.chat_templates:
            return self.chat_templates["tool_use"]
        return self.chat_template

    bos_token = property(lambda self: self.special_tokens.get("bos_token"))
    eos_token = property(lambda self: self.special_tokens.get("eos_token"))
    pad_token = property(lambda self: self.special_tokens.get("pad_token"))
    unk_token = property(lambda self: self.special_tokens.get("unk_token"))
    bos_token_id = property(lambda self: self._id_of(self.bos_token))
    eos_token_id = property(lambda self: self._id_of(self.eos_token))
    pad_token_id = property(lambda self: self._id_of(self.pad_token))

    # -- helpers -----------------------------------------------------------------------------
    def _id_of(self, token: str | None) -> int | None:
        return None if token is None else self._backend.token_to_id(token)

    def _end_of_turn_ids(self, extra: Iterable[int]) -> frozenset[int]:
        ids = {i for i in extra if i is not None}
        if self.eos_token_id is not None:
            ids.add(self.eos_token_id)
        for token in END_OF_TURN_TOKENS:
            token_id = self._backend.token_to_id(token)
            if token_id is not None and token_id in self._special_ids:
                ids.add(token_id)
        return frozenset(ids)

    def check_ids(self, ids: Iterable[int]) -> None:
        """TokenizerError unless every id is in the vocabulary (a model's padded rows are not)."""
        size = self._vocab_size
        for i in ids:
            if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < size:
                raise TokenizerError(f"token id {i!r} is outside the vocabulary (size {size})")


def load_tokenizer(source: ModelSource) -> Tokenizer:
    """The tokenizer of a resolved model: from its GGUF metadata or its Hugging Face folder."""
    if source.kind == "gguf":
        from chatforge.models.gguf_file import GGUFFile

        gguf = GGUFFile(source.path)
        try:
            return Tokenizer.from_gguf(gguf.metadata)
        finally:
            gguf.close()
    if source.kind == "hf":
        return Tokenizer.from_hf_folder(source.path)
    raise TokenizerError(f"unknown model source kind {source.kind!r} for {source.path}")
