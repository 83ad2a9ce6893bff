"""Build a Rust `tokenizers.Tokenizer` from the vocabulary a GGUF file carries in its metadata.

A GGUF has no tokenizer.json: it stores llama.cpp's view of the vocabulary under
`tokenizer.ggml.*`. Two families matter for the models chatforge serves:

- `gpt2`: byte-level BPE. Tokens are spelled in GPT-2's byte alphabet ("Ġ" for a space), merges
  are listed, and the text is split before BPE by a regex that llama.cpp picks from
  `tokenizer.ggml.pre`. We use the same split as llama.cpp for each name (`_PRE_TOKENIZERS`).
- `llama`: SentencePiece BPE. Tokens use "▁" for a space, `<0xNN>` tokens cover raw bytes, and
  there are no merges, only a score per token: a pair is merged into the token it forms, best
  score first. We turn the scores into an ordered merge list for `tokenizers.models.BPE`.

Token types (`tokenizer.ggml.token_type`): 1 normal, 2 unknown, 3 control, 4 user-defined,
5 unused, 6 byte. Control tokens become special added tokens (matched whole in text, skipped
when decoding with skip_special_tokens); user-defined ones become plain added tokens (matched
whole, always decoded), which is how llama.cpp treats both.
"""

from __future__ import annotations

from array import array
from typing import Any

import numpy as np
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

from chatforge.text.errors import TokenizerError

TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNUSED, TOKEN_BYTE = 1, 2, 3, 4, 5, 6


# The split regexes llama.cpp applies before byte-level BPE, by `tokenizer.ggml.pre`.
_LLAMA3 = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Qwen2 is llama3's pattern with each digit on its own.
_QWEN2 = _LLAMA3.replace(r"\p{N}{1,3}", r"\p{N}")
_TEKKEN = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_GPT4O = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_REGEX_PRE = {
    **dict.fromkeys(("llama3", "llama-v3", "llama-bpe", "falcon3", "smaug-bpe", "dbrx", "pixtral"), _LLAMA3),
    **dict.fromkeys(("qwen2", "deepseek-r1-qwen", "stablelm2", "megrez"), _QWEN2),
    "tekken": _TEKKEN,
    **dict.fromkeys(("gpt-4o", "llama4"), _GPT4O),
}
# Every digit on its own, then GPT-2's regex on the text between digits (llama.cpp's `\p{N}` step
# followed by its GPT-2 expression; the same as these models' own tokenizer.json).
_DIGITS_PRE = frozenset(("smollm", "starcoder", "refact", "codeshell", "command-r", "exaone", "minerva"))
# llama.cpp takes a pre-token that is already a vocabulary entry whole, without merging, for these.
_IGNORE_MERGES_PRE = frozenset(("llama3", "llama-v3", "llama-bpe", "falcon3", "smaug-bpe", "dbrx", "pixtral"))


def build_gguf_backend(metadata: dict[str, Any]) -> Tokenizer:
    """The `tokenizers.Tokenizer` that the GGUF metadata describes (model, splitting, decoding, specials)."""
    kind = metadata.get("tokenizer.ggml.model")
    tokens = metadata.get("tokenizer.ggml.tokens")
    if not tokens:
        raise TokenizerError("the GGUF file has no tokenizer.ggml.tokens")
    types = list(metadata.get("tokenizer.ggml.token_type") or [TOKEN_NORMAL] * len(tokens))
    if len(types) != len(tokens):
        raise TokenizerError(f"GGUF tokenizer: {len(tokens)} tokens but {len(types)} token types")
    if kind == "gpt2":
        backend = _byte_level_bpe(metadata, tokens)
        default_bos = False
    elif kind == "llama":
        backend = _sentencepiece_bpe(metadata, tokens, types)
        default_bos = True  # llama.cpp adds BOS to a SentencePiece vocabulary that does not say otherwise
    else:
        raise TokenizerError(f"unsupported GGUF tokenizer model {kind!r} (supported: 'gpt2', 'llama')")
    _add_special_tokens(backend, tokens, types, metadata)
    add_bos = bool(metadata.get("tokenizer.ggml.add_bos_token", default_bos))
    add_eos = bool(metadata.get("tokenizer.ggml.add_eos_token", False))
    backend.post_processor = _bos_eos_processor(metadata, tokens, add_bos, add_eos)
    return backend


def _byte_level_bpe(metadata: dict[str, Any], tokens: list[str]) -> Tokenizer:
    merges = metadata.get("tokenizer.ggml.merges")
    if merges is None:
        raise TokenizerError("a gpt2 GGUF tokenizer needs tokenizer.ggml.merges")
    vocab = {token: i for i, token in enumerate(tokens)}
    pairs = [tuple(m.split(" ", 1)) for m in merges]
    pre = metadata.get("tokenizer.ggml.pre", "default")
    backend = Tokenizer(_bpe(vocab, pairs, ignore_merges=pre in _IGNORE_MERGES_PRE))
    backend.pre_tokenizer = _byte_level_pre_tokenizer(pre)
    backend.decoder = decoders.ByteLevel()
    return backend


def _byte_level_pre_tokenizer(pre: str):
    if pre in _REGEX_PRE:
        return pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(_REGEX_PRE[pre]), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    if pre in _DIGITS_PRE:
        return pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ])
    # "default", "gpt2" and names we do not know: GPT-2's own regex.
    return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)


def _sentencepiece_bpe(metadata: dict[str, Any], tokens: list[str], types: list[int]) -> Tokenizer:
    scores = metadata.get("tokenizer.ggml.scores")
    if scores is None or len(scores) != len(tokens):
        raise TokenizerError("a llama (SentencePiece) GGUF tokenizer needs one score per token")
    vocab = {token: i for i, token in enumerate(tokens)}
    unk_id = metadata.get("tokenizer.ggml.unknown_token_id")
    unk = tokens[unk_id] if unk_id is not None else None
    merges = merges_from_scores(tokens, scores, vocab)
    backend = Tokenizer(_bpe(vocab, merges, unk_token=unk, fuse_unk=True, byte_fallback=True))
    add_prefix = bool(metadata.get("tokenizer.ggml.add_space_prefix", True))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(
        replacement="▁", prepend_scheme="first" if add_prefix else "never", split=False
    )
    steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if add_prefix:  # the space the encoder put in front of the text is not part of it
        steps.append(decoders.Strip(content=" ", left=1, right=0))
    backend.decoder = decoders.Sequence(steps)
    return backend


def _bpe(vocab: dict[str, int], merges: list[tuple[str, str]], **options: Any) -> models.BPE:
    try:
        return models.BPE(vocab, merges, **options)
    except Exception as exc:  # the Rust side raises a bare Exception, e.g. for a merge of unknown tokens
        raise TokenizerError(f"the GGUF vocabulary is inconsistent: {exc}") from exc


def merges_from_scores(tokens: list[str], scores: list[float], vocab: dict[str, int] | None = None) -> list[tuple[str, str]]:
    """SentencePiece scores as a BPE merge list: every way to cut a token into two vocabulary
    entries is a merge, ranked by the score of the token it forms (higher merges first).

    Ties keep a fixed order: the longer left piece first, then the longer right piece, then the
    merged token's position in the vocabulary and the pieces' ids.

    The cuts are kept as ids in flat arrays and ranked by numpy, and each merge names the
    vocabulary's own strings: for Gemma 3's 262,144 tokens (514,847 merges) a tuple of five per
    merge peaked at ~150 MiB of Python objects, and left much of it fragmented after freeing.
    """
    vocab = vocab if vocab is not None else {token: i for i, token in enumerate(tokens)}  # token -> id
    merged, lefts, rights, left_lengths = array("q"), array("q"), array("q"), array("q")
    # NOTE: bound methods: this loop runs ~2 million times for a 262,144-token vocabulary.
    lookup, add_merged, add_left, add_right, add_length = (
        vocab.get, merged.append, lefts.append, rights.append, left_lengths.append)
    for i, token in enumerate(tokens):
        for k in range(1, len(token)):
            left = lookup(token[:k])
            if left is not None:
                right = lookup(token[k:])
                if right is not None:
                    add_merged(i)
                    add_left(left)
                    add_right(right)
                    add_length(k)
    merged_ids, left_len = np.frombuffer(merged, np.int64), np.frombuffer(left_lengths, np.int64)
    lengths = np.fromiter(map(len, tokens), np.int64, len(tokens))
    score = np.asarray(scores, np.float64)[merged_ids]
    right_len = lengths[merged_ids] - left_len
    left_ids, right_ids = np.frombuffer(lefts, np.int64), np.frombuffer(rights, np.int64)
    # np.lexsort: the last key ranks first.
    order = np.lexsort((right_ids, left_ids, merged_ids, -right_len, -left_len, -score))
    return [(tokens[a], tokens[b]) for a, b in zip(left_ids[order].tolist(), right_ids[order].tolist())]


def _add_special_tokens(backend: Tokenizer, tokens: list[str], types: list[int], metadata: dict[str, Any]) -> None:
    special_ids = {i for i, t in enumerate(types) if t == TOKEN_CONTROL}
    for key in ("bos", "eos", "unknown", "padding", "eot", "eom"):
        token_id = metadata.get(f"tokenizer.ggml.{key}_token_id")
        if token_id is not None and 0 <= token_id < len(tokens) and types[token_id] != TOKEN_BYTE:
            special_ids.add(token_id)
    backend.add_special_tokens([AddedToken(tokens[i], normalized=False, special=True) for i in sorted(special_ids)])
    user = [AddedToken(tokens[i], normalized=False, special=False)
            for i, t in enumerate(types) if t == TOKEN_USER_DEFINED and i not in special_ids]
    backend.add_tokens(user)


def _bos_eos_processor(metadata: dict[str, Any], tokens: list[str], add_bos: bool, add_eos: bool):
    """What `encode(..., add_special_tokens=True)` puts around the text."""
    pieces: dict[str, int] = {}
    single = ["$A"]
    if add_bos and metadata.get("tokenizer.ggml.bos_token_id") is not None:
        bos_id = metadata["tokenizer.ggml.bos_token_id"]
        pieces[tokens[bos_id]] = bos_id
        single.insert(0, tokens[bos_id])
    if add_eos and metadata.get("tokenizer.ggml.eos_token_id") is not None:
        eos_id = metadata["tokenizer.ggml.eos_token_id"]
        pieces[tokens[eos_id]] = eos_id
        single.append(tokens[eos_id])
    pair = [*single, *("$B:1" if piece == "$A" else piece for piece in single)]
    return processors.TemplateProcessing(single=single, pair=pair, special_tokens=list(pieces.items()))
