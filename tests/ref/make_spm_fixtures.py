#!/usr/bin/env python3
"""make_spm_fixtures.py — writes tests/data/tok/spm/: a small SentencePiece model trained the way ChatGLM3's
tokenizer.model is configured (BPE, byte fallback, dummy prefix, white space kept as it is, identity
normalisation, digits split), and goldens.jsonl with the ids the `sentencepiece` package gives for TEXTS below
and THUDM's decode of them (tests/test_tok_spm.c reads both; tests/test_tok_spm_live.py re-checks the ids
against the package itself when it is installed).

Needs: pip install sentencepiece. Deterministic (one thread, fixed seed corpus): rerunning rewrites the same
model. CI does not run this; the tests read the committed files.
"""
import io
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "data", "tok", "spm")

# The test texts (bytes, so invalid UTF-8 can be among them): SentencePiece's normaliser turns each invalid
# byte into U+FFFD, which byte fallback then spells as its three UTF-8 bytes (docs/GLM.md §4.2).
TEXTS = [
    b"Hello world",
    b"\n",
    b"The quick brown fox jumps over the lazy dog.",
    "你好".encode(),
    "晚上睡不着应该怎么办？北京的天气很好。".encode(),
    b"def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
    "emoji 👋🏽 and 🇨🇳 flags, ZWJ 👩‍💻".encode(),
    b"   leading spaces, trailing   ",
    b"tabs\tand\r\nCRLF\n\n\nthree newlines",
    b"          ten spaces then text",
    b"<|user|> hello <|assistant|> [gMASK]sop desops",
    b"numbers 1234567890 3.14159 -42",
    "mixed 中文 English 123 符号！@#￥%……&*（）".encode(),
    "rare: ÆØÅ ß ﬁ ½ Ⅻ ｆｕｌｌｗｉｄｔｈ".encode(),
    b"bad utf8 \xff\xfe end",
    b"truncated \xe4\xbd",
    b"lone continuation \x80\x80 x",
    b"\x00nul byte",
    b"",
    b" ",
]

ENGLISH = """The quick brown fox jumps over the lazy dog. A long context model reads the whole book before it answers.
Tokenizers split text into pieces; the pieces map to ids, and the ids feed the embedding table.
How are you today? I am fine, thank you. What is the weather like in Beijing and in Shanghai?
Please summarise the following document in three sentences, keeping every number exact.
"""
CHINESE = """你好，很高兴见到你。今天天气怎么样？北京的天气很好，上海在下雨。
人工智能助手可以回答问题、写代码、翻译文章。长文本模型能够阅读整本书然后回答问题。
我们使用分词器把文本切分成词元，再把词元映射成编号。晚上睡不着应该怎么办？
"""
CODE = """def fib(n):
    if n < 2:
        return n
    return fib(n - 1) + fib(n - 2)

for (int i = 0; i < n; i++) {
    sum += a[i] * b[i];
}
print(json.dumps({"name": "get_weather", "parameters": {"city": "Beijing"}}, indent=4))
"""


def corpus_lines():
    text = (ENGLISH + CHINESE + CODE) * 3
    return [l for l in text.split("\n") if l.strip()]


def train(path_prefix, vocab_size=600):
    import sentencepiece as spm
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus_lines()), model_writer=model, model_type="bpe", vocab_size=vocab_size,
        byte_fallback=True, add_dummy_prefix=True, remove_extra_whitespaces=False,
        normalization_rule_name="identity", split_digits=True, character_coverage=1.0, num_threads=1,
        allow_whitespace_only_pieces=True, minloglevel=2)
    with open(path_prefix, "wb") as f:
        f.write(model.getvalue())


GLM3_SPECIALS = ["[MASK]", "[gMASK]", "[sMASK]", "sop", "eop", "<|system|>", "<|user|>", "<|assistant|>",
                 "<|observation|>"]


def thudm_decode(sp, special, ids):
    """THUDM's SPTokenizer.decode: SentencePiece-decode each run of ordinary ids, specials as their text."""
    text, run = "", []
    for i in ids:
        if i in special:
            text += sp.decode(run) if run else ""
            run = []
            text += special[i]
        else:
            run.append(i)
    return text + (sp.decode(run) if run else "")


def main():
    import sentencepiece as spm
    os.makedirs(OUT, exist_ok=True)
    path = os.path.join(OUT, "tokenizer.model")
    train(path)
    sp = spm.SentencePieceProcessor(model_file=path)
    n = sp.get_piece_size()
    special = {n + k: s for k, s in enumerate(GLM3_SPECIALS)}
    with open(os.path.join(OUT, "goldens.jsonl"), "w", encoding="utf-8") as f:
        for t in TEXTS:
            ids = sp.encode(t)
            f.write(json.dumps({"text_hex": t.hex(), "ids": ids, "decoded": thudm_decode(sp, special, ids)}) + "\n")
        # decode-only sequences: specials between runs, a run opening with "▁", bos/eos, lone byte pieces
        byte = lambda b: sp.piece_to_id(f"<0x{b:02X}>")
        seqs = [[n + 6] + sp.encode("hi") + [n + 7] + sp.encode("\n") + sp.encode("Hello world"),
                [n + 1, n + 3, n + 6] + sp.encode("\n") + sp.encode("你好") + [n + 7],
                [1] + sp.encode(" x") + [2] + sp.encode(" y"),
                [byte(0xE4), byte(0xBD)] + sp.encode("x"),
                [byte(0xE4), byte(0xBD), n + 8, byte(0xA0)],
                sp.encode("a") + [n + 3] + sp.encode("b")]
        for ids in seqs:
            f.write(json.dumps({"ids": ids, "decoded": thudm_decode(sp, special, ids)}) + "\n")
    print(f"{path}: {sp.get_piece_size()} pieces, {os.path.getsize(path)} bytes; {len(TEXTS)} goldens")


if __name__ == "__main__":
    main()
