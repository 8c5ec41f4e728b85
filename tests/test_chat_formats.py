#!/usr/bin/env python3
"""`mtok tokenize --messages` against tests/ref/chat_ref.py: the ids of GLM-4 conversations (the chat-template
route, rendered by jinja2 and tokenized whole) and of ChatGLM3 conversations (THUDM's build_chat_input with the
`sentencepiece` package), with tools whose JSON is hard to reproduce (floats, big integers, escapes, duplicate
keys, entries the template skips, built-in tools described by the checkpoint's template). Every id must match,
so one token off fails. Also the refusals: built-in tools without a template, bad messages files."""
import json
import os
import shutil
import subprocess
import sys
import tempfile

from harness import args

a = args()
sys.path.insert(0, os.path.join(a.src, "tests", "ref"))
import chat_ref  # noqa: E402
from bpe_ref import RefTokenizer  # noqa: E402

try:
    import jinja2  # noqa: F401
    have_jinja = True
except ImportError:
    have_jinja = False
try:
    import sentencepiece
except ImportError:
    sentencepiece = None
if not have_jinja and sentencepiece is None:
    print("neither jinja2 nor sentencepiece installed: skipped")
    sys.exit(77)

failures = []


def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what)
    if not ok:
        failures.append(what)


# Tool JSON as raw text: what json.dumps makes of it is the point (0.1, 1e100, 1E5, -0, -0.0, 2^70, escapes in
# upper case, a surrogate pair, a repeated key, empty containers, a bare function object and an unknown type
# that GLM-4's template skips).
TOOLS_RAW = r'''[
 {"type": "function", "function": {"name": "get_weather", "description": "Weather of a city, \u00e9t\u00e9 \ud83c\udf1e\u001B\/",
  "parameters": {"type": "object", "properties": {"city": {"type": "string", "enum": ["北京", "Paris"]},
   "days": {"type": "integer", "minimum": 0.1, "maximum": 1e100, "default": 1E5, "big": 1180591620717411303424,
            "neg": -0, "negf": -0.0, "small": 1e-05, "edge": 1e16, "p": 1.5e15, "tiny": 0.0001, "x": 100.0,
            "ex": 12.5e-3, "nest": [{}, [], {"a": [1, [2, {"b": null}]]}], "t": true, "f": false}},
   "required": ["city"], "required": ["city", "days"]}}},
 {"name": "bare_function_object", "description": "ChatGLM3's own form"},
 {"type": "retrieval", "whatever": 1},
 {"type": "function", "function": {"name": "tab\tin_description_is_fine", "description": "tab\there \"quoted\" back\\slash", "parameters": {}}}
]'''
BUILTIN_RAW = '[{"type": "python"}, {"type": "simple_browser"}, {"type": "cogview"}, ' \
              '{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]'

CONVERSATIONS = [
    ("plain", [{"role": "user", "content": "你好"}], None, True),
    ("multi-turn", [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi there!"},
                    {"role": "assistant", "content": "Hello. 有什么可以帮你？"},
                    {"role": "user", "content": "Count: 1 2 3"}], None, True),
    ("no generation prompt", [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}], None, False),
    ("tools, no system", [{"role": "user", "content": "Weather in Paris?"}], TOOLS_RAW, True),
    ("tools on the system message", [{"role": "system", "content": "Use tools."},
                                     {"role": "user", "content": "Weather?"}], TOOLS_RAW, True),
    ("tool call replayed", [{"role": "user", "content": "Weather in Paris?"},
                            {"role": "assistant", "metadata": "get_weather", "content": '{"city": "Paris"}'},
                            {"role": "tool", "content": '{"temp": 21}'}], TOOLS_RAW, True),
    ("empty content", [{"role": "user", "content": ""}, {"role": "user", "content": "second"}], None, True),
]

tmp = tempfile.mkdtemp(prefix="mtok-chatfmt-")
try:
    def mtok_ids(model_dir, messages, tools_raw, gen):
        mf = os.path.join(tmp, "messages.json")
        with open(mf, "w", encoding="utf-8") as f:
            json.dump(messages, f, ensure_ascii=False)
        cmd = [a.mtok, "tokenize", "-m", model_dir, "--messages", mf]
        if tools_raw is not None:
            tf = os.path.join(tmp, "tools.json")
            with open(tf, "w", encoding="utf-8") as f:
                f.write(tools_raw)
            cmd += ["--tools", tf]
        if gen:
            cmd.append("--generation-prompt")
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        return (json.loads(p.stdout) if p.returncode == 0 else None), p

    def first_diff(x, y):
        return next((i for i, (u, v) in enumerate(zip(x, y)) if u != v), min(len(x), len(y)))

    # ---- GLM-4: tiktoken fixture + a tokenizer_config.json holding the template (for the built-in tools) ----
    if have_jinja:
        g4 = os.path.join(tmp, "glm4")
        os.makedirs(g4)
        shutil.copy(os.path.join(a.src, "tests", "data", "tok", "tokenizer.model"), g4)
        with open(os.path.join(g4, "tokenizer_config.json"), "w", encoding="utf-8") as f:
            json.dump({"chat_template": chat_ref.GLM4_TEMPLATE}, f, ensure_ascii=False)
        ref = RefTokenizer.from_tiktoken_file(os.path.join(g4, "tokenizer.model"))
        for name, msgs, tools_raw, gen in CONVERSATIONS + [("built-in tools", [{"role": "user", "content": "draw"}],
                                                             BUILTIN_RAW, True)]:
            tools = json.loads(tools_raw) if tools_raw else None
            want = ref.encode(chat_ref.render_glm4(msgs, tools, gen), allow_special=True)
            got, p = mtok_ids(g4, msgs, tools_raw, gen)
            ok = got == want
            check(ok, f"GLM-4 {name}: {len(want)} ids" + ("" if ok or got is None else
                  f" (first difference at {first_diff(got, want)}: got {got[first_diff(got, want):][:6]}, "
                  f"want {want[first_diff(got, want):][:6]})") + ("" if got is not None else f" rc={p.returncode} {p.stderr}"))
        # the template's "\n## name" line: one newline, as trim_blocks leaves it
        text = chat_ref.render_glm4([{"role": "user", "content": "q"}], json.loads(TOOLS_RAW), True)
        check("工具\n## get_weather\n\n{" in text and "\n\n## bare_function_object" not in text,
              "GLM-4 reference renders \"\\n## name\" and skips the bare object")
        # built-in tools need the checkpoint's template: without one they are refused, saying why
        bare = os.path.join(tmp, "glm4-bare")
        os.makedirs(bare)
        shutil.copy(os.path.join(a.src, "tests", "data", "tok", "tokenizer.model"), bare)
        got, p = mtok_ids(bare, [{"role": "user", "content": "x"}], BUILTIN_RAW, True)
        check(got is None and p.returncode == 2 and "python" in p.stderr and "chat template" in p.stderr,
              f"GLM-4 built-in tool without a template refused: {p.stderr.strip()}")

    # ---- ChatGLM3: the SentencePiece fixture ----
    if sentencepiece is not None:
        spm_dir = os.path.join(a.src, "tests", "data", "tok", "spm")
        sp = sentencepiece.SentencePieceProcessor(model_file=os.path.join(spm_dir, "tokenizer.model"))
        n = sp.get_piece_size()
        names = ["[MASK]", "[gMASK]", "[sMASK]", "sop", "eop", "<|system|>", "<|user|>", "<|assistant|>",
                 "<|observation|>"]
        special = {s: n + k for k, s in enumerate(names)}
        glm3_tools = '[{"name": "get_weather", "description": "天气 \\u001B", "parameters": {"type": "object", ' \
                     '"properties": {"city": {"type": "string"}, "n": {"type": "number", "maximum": 0.1, "big": ' \
                     '123456789012345678901234567890}}}}, {"type": "function", "function": {"name": "wrapped"}}]'
        for name, msgs, tools_raw, gen in CONVERSATIONS:
            if tools_raw is not None:
                tools_raw = glm3_tools
            tools = json.loads(tools_raw) if tools_raw else None
            want = chat_ref.glm3_ids(lambda s: sp.encode(s), special, msgs, tools, gen)
            got, p = mtok_ids(spm_dir, msgs, tools_raw, gen)
            ok = got == want
            check(ok, f"ChatGLM3 {name}: {len(want)} ids" + ("" if ok or got is None else
                  f" (first difference at {first_diff(got, want)})") + ("" if got is not None else f" {p.stderr}"))

    # ---- bad input, named ----
    spm_dir = os.path.join(a.src, "tests", "data", "tok", "spm")
    for label, raw, want in [("not an array", '{"role": "user"}', "expected a JSON array of messages"),
                             ("no role", '[{"content": "x"}]', 'message 0 has no "role"'),
                             ("unknown role", '[{"role": "robot", "content": "x"}]', "role 'robot'"),
                             ("content not a string", '[{"role": "user", "content": 5}]', '"content" must be a string'),
                             ("bad JSON", '[{"role": ', "not valid JSON")]:
        mf = os.path.join(tmp, "bad.json")
        with open(mf, "w") as f:
            f.write(raw)
        p = subprocess.run([a.mtok, "tokenize", "-m", spm_dir, "--messages", mf], capture_output=True, text=True)
        check(p.returncode == 2 and want in p.stderr, f"--messages {label}: rc={p.returncode} {p.stderr.strip()}")
    p = subprocess.run([a.mtok, "tokenize", "-m", spm_dir, "--text", "x", "--tools", "t.json"], capture_output=True,
                       text=True)
    check(p.returncode == 1 and "--messages" in p.stderr, "--tools without --messages is a usage error")
finally:
    shutil.rmtree(tmp, ignore_errors=True)

if failures:
    print(f"{len(failures)} failed")
    sys.exit(1)
