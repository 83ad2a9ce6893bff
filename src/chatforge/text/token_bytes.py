"""The raw bytes each token stands for, as OpenAI-style logprobs report them (`bytes`).

A token is often a fragment of a character (one byte of a 4-byte emoji), so its text alone
cannot say this: we undo the vocabulary's own spelling instead.

- Byte-level BPE (GPT-2 family): every byte is spelled as one printable character; invert that.
- SentencePiece with byte fallback: "▁" is a space and `<0xNN>` is the byte NN.
- Anything else: the UTF-8 of the token decoded alone.

Added tokens (specials such as `<|im_end|>`, user-defined ones) are stored as plain text.
"""

from __future__ import annotations

import json
import re

from tokenizers import Tokenizer as _Backend

_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def byte_level_alphabet() -> dict[str, int]:
    """GPT-2's byte alphabet inverted: printable Latin-1 bytes spell themselves, the other 68
    bytes (controls, space, a few Latin-1 gaps) take the characters from U+0100 on, in order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + extra)
            extra += 1
    return {c: b for b, c in chars.items()}


class TokenBytes:
    """`token_bytes(i)`: bytes of token i, computed once per token and cached (logprobs ask for
    a few tokens at a time). `table()`: every token's bytes at once, not cached (a grammar
    engine's copy of the vocabulary, built once)."""

    def __init__(self, backend: _Backend):
        self._backend = backend
        self._added = {i: tok.content for i, tok in backend.get_added_tokens_decoder().items()}
        decoder_types = _decoder_types(backend)
        if "ByteLevel" in decoder_types:
            self._scheme = "byte_level"
            self._alphabet = byte_level_alphabet()
            # For the whole table: the alphabet as a translation to Latin-1 code points, and the
            # characters outside it (a token holding one takes the per-character path).
            self._to_latin1 = str.maketrans({c: chr(b) for c, b in self._alphabet.items()})
            self._outside = re.compile("[^" + "".join(re.escape(c) for c in self._alphabet) + "]")
        elif "ByteFallback" in decoder_types or "Metaspace" in decoder_types:
            self._scheme = "sentencepiece"
        else:
            self._scheme = "decode"
        self._cache: dict[int, bytes] = {}

    def __call__(self, token_id: int) -> bytes:
        cached = self._cache.get(token_id)
        if cached is None:
            cached = self._cache[token_id] = self._compute(token_id)
        return cached

    def table(self, size: int) -> list[bytes]:
        """The bytes of tokens 0..size-1, in id order: `self(i)` for each, byte-level tokens
        translated whole rather than character by character (SmolLM2's 49,152: 0.10 -> 0.04 s;
        Gemma 3's 262,144 SentencePiece tokens: 0.23 s)."""
        to_token = self._backend.id_to_token
        out = []
        for token_id in range(size):
            token = to_token(token_id)
            if token_id in self._added:
                out.append(self._compute(token_id))
            elif self._scheme == "byte_level" and not self._outside.search(token):
                out.append(token.translate(self._to_latin1).encode("latin-1"))
            elif self._scheme == "sentencepiece" and not token.startswith("<0x"):
                out.append(token.replace("▁", " ").encode("utf-8"))
            else:
                out.append(self._compute(token_id))
        return out

    def _compute(self, token_id: int) -> bytes:
        if token_id in self._added:
            return self._added[token_id].encode("utf-8")
        token = self._backend.id_to_token(token_id)
        if self._scheme == "byte_level":
            # A character outside the alphabet can only come from a mislabelled vocabulary entry;
            # it stands for its own UTF-8.
            return b"".join(
                bytes([self._alphabet[c]]) if c in self._alphabet else c.encode("utf-8") for c in token
            )
        if self._scheme == "sentencepiece":
            match = _BYTE_TOKEN.fullmatch(token)
            if match:
                return bytes([int(match.group(1), 16)])
            return token.replace("▁", " ").encode("utf-8")
        return self._backend.decode([token_id], skip_special_tokens=False).encode("utf-8")


def _decoder_types(backend: _Backend) -> set[str]:
    """Every decoder type named in the backend's decoder (nested sequences included)."""
    decoder = json.loads(backend.decoder.__getstate__()) if backend.decoder is not None else None
    found: set[str] = set()
    stack = [decoder]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if "type" in node:
                found.add(node["type"])
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return found
