"""bpe_ref.py — an independent, deliberately simple reference of tiktoken-style byte-level BPE.

Written from the published semantics, not from tiktoken's code:
  * the text is cut into pieces by the pre-tokenizer regex (the PyPI `regex` module, which knows \\p{L});
  * a piece that is itself a token is emitted as that token;
  * otherwise the piece starts as single bytes and, while some adjacent pair's concatenated bytes form a
    token, the pair with the lowest such rank is merged (the leftmost one when several tie);
  * special-token strings are plain text unless allowed; allowed ones are cut out leftmost-longest.
It is quadratic per piece on purpose: easy to check by eye, and only used on short test strings.

Usage as a library: RefTokenizer.from_tiktoken_file(path).encode(text, allow_special=False)
"""
import base64

import regex

GLM4_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

# GPT-2's pattern: what a bare ByteLevel(use_regex=true) pre-tokenizer of a tokenizer.json splits with.
GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"

GLM4_SPECIALS = ["<|endoftext|>", "[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>", "<|system|>", "<|user|>",
                 "<|assistant|>", "<|observation|>", "<|begin_of_image|>", "<|end_of_image|>",
                 "<|begin_of_video|>", "<|end_of_video|>"]


def bpe(ranks, piece):
    """Token ids of one piece (bytes) under tiktoken semantics."""
    if piece in ranks:
        return [ranks[piece]]
    parts = [bytes([b]) for b in piece]
    while len(parts) > 1:
        best = None  # (rank, index)
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and (best is None or r < best[0]):
                best = (r, i)  # strict < keeps the leftmost on ties
        if best is None:
            break
        i = best[1]
        parts[i:i + 2] = [parts[i] + parts[i + 1]]
    missing = [p for p in parts if p not in ranks]
    if missing:
        raise KeyError(f"bytes {missing[0]!r} have no rank")
    return [ranks[p] for p in parts]


class RefTokenizer:
    def __init__(self, ranks, specials, pattern=GLM4_PATTERN, add_prefix_space=False):
        self.ranks = dict(ranks)  # bytes -> id
        self.specials = dict(specials)  # str -> id
        self.pat = regex.compile(pattern)
        # tokenizer.json ByteLevel(add_prefix_space): each text segment between specials gets a leading
        # space unless it has one
        self.add_prefix_space = add_prefix_space

    @classmethod
    def from_tiktoken_file(cls, path, specials=None):
        ranks = {}
        with open(path, "rb") as f:
            for line in f.read().splitlines():
                if line.strip():
                    tok, rank = line.split()
                    ranks[base64.b64decode(tok, validate=True)] = int(rank)
        if specials is None:
            specials = {s: len(ranks) + i for i, s in enumerate(GLM4_SPECIALS)}
        return cls(ranks, specials)

    def encode_ordinary(self, text):
        if self.add_prefix_space and text and not text.startswith(" "):
            text = " " + text
        ids = []
        for m in self.pat.finditer(text):
            ids += bpe(self.ranks, m.group(0).encode("utf-8"))
        return ids

    def encode(self, text, allow_special=False):
        if not allow_special or not self.specials:
            return self.encode_ordinary(text)
        ids, seg, i = [], 0, 0
        by_len = sorted(self.specials, key=len, reverse=True)
        while i < len(text):
            hit = next((s for s in by_len if text.startswith(s, i)), None)
            if hit is None:
                i += 1
                continue
            ids += self.encode_ordinary(text[seg:i])
            ids.append(self.specials[hit])
            i += len(hit)
            seg = i
        return ids + self.encode_ordinary(text[seg:])

    def decode_bytes(self, ids):
        inv = {v: k for k, v in self.ranks.items()}
        inv.update({v: k.encode("utf-8") for k, v in self.specials.items()})
        return b"".join(inv[i] for i in ids)
