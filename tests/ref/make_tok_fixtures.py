#!/usr/bin/env python3
"""make_tok_fixtures.py — writes the tokenizer fixtures of tests/test_tokenizer.c into tests/data/tok/:

  tokenizer.model  a small GLM-4-format tiktoken rank file (base64 bytes, space, rank per line): the 256
                   single bytes first, then the merges learned by plain BPE training on the corpus below;
  tokenizer.json   the same vocabulary as a Hugging Face byte-level BPE tokenizer.json, merges recovered
                   from the ranks the way transformers' TikTokenConverter does, GLM-4 specials as
                   added_tokens, pre_tokenizer Split(GLM-4 regex) + ByteLevel(use_regex=false);
  goldens.jsonl    {"text", "special", "ids"} per test string, ids from tiktoken, cross-checked against
                   tests/ref/bpe_ref.py and (if installed) the `tokenizers` package loading tokenizer.json;
  goldens_variants.jsonl  {"variant", "text", "special", "ids"}: the same vocabulary with tokenizer.json's
                   pre_tokenizer replaced by a bare ByteLevel(use_regex=true) ("bytelevel": GPT-2's regex)
                   and by ByteLevel(add_prefix_space=true, use_regex=true) ("bytelevel_prefix"); ids from
                   bpe_ref (and tiktoken where it can express it), checked against `tokenizers` if installed.

Needs: pip install regex tiktoken (tokenizers optional). Deterministic: rerunning rewrites identical files.
CI does not run this; the C test reads the committed outputs.
"""
import base64
import collections
import json
import os
import sys

import regex

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from bpe_ref import GLM4_PATTERN, GLM4_SPECIALS, GPT2_PATTERN, RefTokenizer  # noqa: E402

OUT = os.path.join(HERE, "..", "data", "tok")
N_RANKS = 3000

ENGLISH = """
The lighthouse keeper climbed the hundred and twelve steps every evening, counting them under his breath.
At the top he trimmed the wick, polished the great lens, and wrote the time in the log: the weather, the
ships that passed, the birds that struck the glass. He had kept the light for thirty-one years, and in all
that time it had never once gone dark. People in the village said he talked to the sea. He said he only
listened. When the storm of the century came, it came at night, as they always do. The wind tore the
shutters from the cottage and the rain ran sideways across the rocks. He was not afraid; he was busy.
There is a difference, he would tell the children later, between being afraid and being busy, and the
trick of a long life is to be busy when you would otherwise be afraid. I'll tell you what I told them:
you're never as alone as you think. We've all heard the stories. They'd say the light kept him alive,
but it's truer to say he kept the light alive. Don't believe everything you hear; DON'T believe nothing.
I'M SURE YOU'LL AGREE THAT IT'S A GOOD STORY. She said: "It isn't over." He replied, 'It never is.'
Information theory tells us how many bits a message needs; tokenization tells us how many pieces.
A tokenizer splits text into tokens, and a language model predicts the next token from the previous ones.
The model reads the context, attends to the relevant positions, and writes the answer one token at a time.
Long context models can read a whole book: a needle hidden in a haystack of a million tokens must still
be found, whether it sits at the beginning, in the middle, or at the very end of the document.
The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs. How vexingly quick
daft zebras jump! Sphinx of black quartz, judge my vow. The five boxing wizards jump quickly.
In the beginning was the word, and the word was split into subwords, and the subwords were merged again.
Mr. and Mrs. Dursley, of number four, Privet Drive, were proud to say that they were perfectly normal.
Call me Ishmael. Some years ago, never mind how long precisely, having little or no money in my purse,
I thought I would sail about a little and see the watery part of the world. It is a way I have of
driving off the spleen and regulating the circulation. Whenever I find myself growing grim about the mouth.
"""

CHINESE = """
你好！很高兴见到你。今天天气很好，我们一起去公园散步吧。人工智能是计算机科学的一个分支，
它试图理解智能的本质，并生产出一种新的能以人类智能相似的方式做出反应的智能机器。
语言模型通过预测下一个词来学习语言的规律。长文本模型可以阅读整本书，在一百万个词中找到一根针。
晚上睡不着应该怎么办？可以试着听一些轻音乐，或者读一本书，不要看手机。有什么可以帮助你的吗？
中华人民共和国成立于一九四九年。北京是中国的首都，上海是中国最大的城市。我爱学习，学习使我快乐。
"""

JAPANESE = """
こんにちは、世界！今日はいい天気ですね。東京は日本の首都です。ひらがなとカタカナと漢字を使います。
私は毎朝コーヒーを飲みます。トークナイザーはテキストをトークンに分割します。ありがとうございました。
"""

OTHER_SCRIPTS = """
Ελληνικά: Καλημέρα κόσμε. Русский: Привет, мир! Как дела? Español: ¿Dónde está la biblioteca? Señor.
Français: naïve café, résumé, À bientôt. Deutsch: Grüße aus München, Straße, Übermäßig. 한국어: 안녕하세요.
العربية: مرحبا بالعالم. हिन्दी: नमस्ते दुनिया। ไทย: สวัสดีครับ
"""

EMOJI = """
Emoji: 😀 😃 😄 😁 😆 😅 😂 🤣 😊 😇 🙂 🙃 😉 😌 😍 🥰 😘 👋 👋 👋 👍 👍 🎉 🎉 🔥 🔥 ✨ ❤️ ❤️ 💯
Families and sequences: 👨‍👩‍👧 👨‍👩‍👧 👨‍👩‍👧‍👦 👩‍💻 👩‍💻 👨‍🚀 🏳️‍🌈 🏳️‍🌈 👍🏽 👍🏿 🇨🇳 🇯🇵 🇺🇸 🇩🇪
"""

CODE = '''
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
    for (int i = 0; i < argc; i++) {
        printf("%d: %s\\n", i, argv[i]);
    }
    if (argc > 1 && argv[1][0] == '-') {
        fprintf(stderr, "usage: %s [file]\\n", argv[0]);
        return 1;
    }
    return 0;
}

def tokenize(text: str, allow_special: bool = False) -> list[int]:
\t"""Split text into pieces, then merge bytes."""
\tids = []
\tfor piece in pattern.findall(text):
\t\tif piece in ranks:
\t\t\tids.append(ranks[piece])
\t\telse:
\t\t\tids.extend(bpe(piece))
\treturn ids

class Model:
    def __init__(self, config):
        self.config = config
        self.layers = [Layer(i) for i in range(config.n_layers)]

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x
{"name": "mtok", "version": "0.1.0", "tools": [{"type": "function", "parameters": {"x": 1}}]}
SELECT id, name FROM users WHERE age >= 18 ORDER BY name;  -- comment
<html><body><div class="main">Hello</div></body></html>
'''

NUMBERS_AND_SPACE = """
Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 100 256 1024 2048 4096 65536 1000000 3.14159 2.71828 1e-5 0x1F 0b1010
Dates: 2024-01-15 2023-12-31 12:30:45 1999 2000 2001 2010 2020 2021 2022 2023 2024 2025 $19.99 €5 ¥100 50%
Ranks: 151329 151331 151333 151336 151337 151552 9281 6313 118295 1234567 7654321 999 888 777
Whitespace:    four spaces,\ttab,\t\ttwo tabs,        eight spaces.
  indented two
    indented four
        indented eight
line\r\nwindows line\r\n\r\nblank line above
trailing spaces   
"""


def corpus():
    text = ENGLISH * 3 + CHINESE * 3 + JAPANESE * 2 + OTHER_SCRIPTS * 2 + EMOJI * 2 + CODE * 3 + NUMBERS_AND_SPACE * 2
    text += " ".join(str(n) for n in range(0, 1000, 7)) + "\n"
    return text


def train(text, n_ranks):
    """Plain BPE over pre-split words: repeatedly merge the most frequent adjacent pair."""
    words = collections.Counter(m.encode("utf-8") for m in regex.findall(GLM4_PATTERN, text))
    ranks = {bytes([b]): b for b in range(256)}
    seqs = [[bytes([b]) for b in w] for w in words]
    freq = list(words.values())
    pairs = collections.Counter()
    where = collections.defaultdict(set)

    def account(wi, sign):
        s = seqs[wi]
        for a, b in zip(s, s[1:]):
            pairs[(a, b)] += sign * freq[wi]
            if sign > 0:
                where[(a, b)].add(wi)

    for wi in range(len(seqs)):
        account(wi, +1)
    while len(ranks) < n_ranks:
        (a, b), count = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))
        if count < 2:
            break
        if a + b not in ranks:
            ranks[a + b] = len(ranks)
        for wi in list(where.pop((a, b))):
            account(wi, -1)
            s, out, i = seqs[wi], [], 0
            while i < len(s):
                if i + 1 < len(s) and s[i] == a and s[i + 1] == b:
                    out.append(a + b)
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            seqs[wi] = out
            account(wi, +1)
        for p in [p for p, c in pairs.items() if c <= 0]:
            del pairs[p]
    return ranks


def bytes_to_unicode():
    """GPT-2's reversible byte -> printable character table."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def hf_merges(ranks):
    """As TikTokenConverter: every split of a token into two tokens is a merge; sorted by the rank of the
    result, then by the ranks of the parts."""
    merges = []
    for tok, rank in ranks.items():
        local = [(tok[:i], tok[i:], rank) for i in range(1, len(tok)) if tok[:i] in ranks and tok[i:] in ranks]
        local.sort(key=lambda m: (ranks[m[0]], ranks[m[1]]))
        merges += local
    merges.sort(key=lambda m: m[2])
    return merges


BYTE_LEVEL_VARIANTS = {  # name -> (pre_tokenizer, add_prefix_space)
    "bytelevel": ({"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}, False),
    "bytelevel_prefix": ({"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
                         True),
}


def write_tokenizer_json(path, ranks, specials, pre_tokenizer=None):
    enc = bytes_to_unicode()
    s = lambda b: "".join(enc[x] for x in b)  # noqa: E731
    doc = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [{"id": i, "content": c, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": True} for c, i in specials.items()],
        "normalizer": None,
        "pre_tokenizer": pre_tokenizer or {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": GLM4_PATTERN}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": True,
                  "vocab": {s(t): r for t, r in sorted(ranks.items(), key=lambda kv: kv[1])},
                  "merges": [[s(a), s(b)] for a, b, _ in hf_merges(ranks)]},
    }
    with open(path, "w", encoding="utf-8") as f:
        json.dump(doc, f, ensure_ascii=False, indent=1)
        f.write("\n")


# (text, allow_special)
CASES = [
    ("Hello, world!", False),
    ("The quick brown fox jumps over the lazy dog.", False),
    ("I'LL be there; you'RE late, he'S gone, we'VE won, they'D know, I'M here, don't stop, It'll do.", False),
    ("你好", False),
    ("你好👋！很高兴见到你，有什么可以帮助你的吗？", False),
    ("晚上睡不着应该怎么办", False),
    ("東京は日本の首都です。ひらがなとカタカナ、漢字を使います。", False),
    ("👨‍👩‍👧 family, 👩🏽‍💻 coder, 🏳️‍🌈 flag, 🦀🦀 crabs", False),
    ("🦀", False),
    ("❤️ and e\u0301 (combining accent)", False),
    ("def f(x):\n\tif x > 0:\n\t\treturn x * 2\n    return -x\n", False),
    ("int main(void) {\n    printf(\"%d\\n\", 42);\n    return 0;\n}\n", False),
    ("1234567 and 3.14159, 2024-06-01, 1e10, -42, 0x1F, 12345678901234567890", False),
    ("a    b\t\t\tc     \n\n\n   d", False),
    ("line one\r\nline two\r\n\r\nend", False),
    ("trailing spaces   ", False),
    ("   leading spaces", False),
    ("  \t  mixed \t whitespace\t", False),
    ("\n\n\n", False),
    ("  \n  \n", False),
    (" ", False),
    ("\t", False),
    ("a", False),
    ("", False),
    ("naïve café résumé Ünïcödé", False),
    ("Ελληνικά και русский текст", False),
    ("مرحبا بالعالم", False),
    ("안녕하세요 세계", False),
    ("สวัสดีครับ", False),
    ("\u00a0non-breaking\u00a0space and\u3000ideographic space", False),
    ("a\u0085b next-line, x\u2028y line separator", False),
    ("a\x00b NUL and \x1b[0m escape", False),
    ("x\x85\x85 y and \x85\n, a\x1cb\x1fc, a\u200bb, \u180e x", False),
    ("IT'\u017f K 'K \u212a", False),
    ("\U0001F9FF\U0001FAE8 newer emoji", False),
    ("١٢٣٤٥ ①②③ Ⅷ ½ digits", False),
    ("Supercalifragilisticexpialidocious antidisestablishmentarianism", False),
    ("https://example.com/path?query=1&x=y#frag", False),
    ("$$$ !!! ??? ... --- *** ```python", False),
    ("Mr. O'Neil's car isn't HIS'N", False),
    ("CamelCaseWordsHere and snake_case_words", False),
    ('{"name": "mtok", "tools": [1, 2, 3]}', False),
    ("∑∫√∞ ≠ ≤ ≥ ± → ←", False),
    ("[gMASK]<sop><|user|>\n你好<|assistant|>", False),
    ("[gMASK]<sop><|user|>\n你好<|assistant|>", True),
    ("<|endoftext|>", False),
    ("<|endoftext|>", True),
    ("abc<|user|>def<|user|><|observation|> tail", True),
    ("[MASK] and [gMASK] differ; [gMASK][sMASK]<eop>", True),
    ("<|<|user|>|> <|user <sop", True),
    ("<|system|>\nYou are helpful.<|user|>\nHi<|assistant|>\nHello!", True),
]


def main():
    import tiktoken

    os.makedirs(OUT, exist_ok=True)
    ranks = train(corpus(), N_RANKS)
    specials = {s: len(ranks) + i for i, s in enumerate(GLM4_SPECIALS)}
    with open(os.path.join(OUT, "tokenizer.model"), "w", encoding="ascii") as f:
        for tok, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
            f.write(f"{base64.b64encode(tok).decode()} {rank}\n")
    json_path = os.path.join(OUT, "tokenizer.json")
    write_tokenizer_json(json_path, ranks, specials)

    enc = tiktoken.Encoding(name="mtok-test", pat_str=GLM4_PATTERN, mergeable_ranks=ranks, special_tokens=specials)
    ref = RefTokenizer.from_tiktoken_file(os.path.join(OUT, "tokenizer.model"))
    assert ref.ranks == ranks and ref.specials == specials
    try:
        from tokenizers import Tokenizer
        hf = Tokenizer.from_file(json_path)
    except ImportError:
        hf = None
        print("tokenizers not installed: tokenizer.json not cross-checked", file=sys.stderr)

    lines = []
    for text, special in CASES:
        ids = enc.encode(text, allowed_special="all") if special else enc.encode(text, disallowed_special=())
        assert ids == ref.encode(text, special), (text, ids, ref.encode(text, special))
        assert enc.decode_bytes(ids) == text.encode("utf-8")
        if hf is not None:
            hf.encode_special_tokens = not special
            hf_ids = hf.encode(text, add_special_tokens=False).ids
            assert hf_ids == ids, (text, ids, hf_ids)
        lines.append(json.dumps({"text": text, "special": special, "ids": ids}, ensure_ascii=False))
    with open(os.path.join(OUT, "goldens.jsonl"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    write_variant_goldens(ranks, specials, hf is not None)
    print(f"{len(ranks)} ranks, {len(CASES)} goldens agree (tiktoken, bpe_ref{', tokenizers' if hf else ''})")


def write_variant_goldens(ranks, specials, check_hf):
    import tempfile

    import tiktoken
    gpt2 = tiktoken.Encoding(name="mtok-test-gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                             special_tokens=specials)
    cases = CASES[:20] + [c for c in CASES if c[1]]
    lines = []
    for name, (pre, prefix) in BYTE_LEVEL_VARIANTS.items():
        ref = RefTokenizer(ranks, specials, GPT2_PATTERN, add_prefix_space=prefix)
        hf = None
        if check_hf:
            from tokenizers import Tokenizer
            with tempfile.TemporaryDirectory() as d:
                write_tokenizer_json(os.path.join(d, "t.json"), ranks, specials, pre)
                hf = Tokenizer.from_file(os.path.join(d, "t.json"))
        for text, special in cases:
            ids = ref.encode(text, special)
            if not prefix:
                want = gpt2.encode(text, allowed_special="all") if special else gpt2.encode(text, disallowed_special=())
                assert ids == want, (name, text, ids, want)
            if hf is not None:
                hf.encode_special_tokens = not special
                hf_ids = hf.encode(text, add_special_tokens=False).ids
                assert hf_ids == ids, (name, text, ids, hf_ids)
            lines.append(json.dumps({"variant": name, "text": text, "special": special, "ids": ids},
                                    ensure_ascii=False))
    with open(os.path.join(OUT, "goldens_variants.jsonl"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
