#!/usr/bin/env python3
"""Images in `mtok serve`'s /v1/chat/completions (docs/SERVER.md "Images"), through the official
`openai` client, on the glm4v-tiny synthetic model.

- an image_url part with a data: URI (PNG, JPEG) beside a text part gives exactly what
  `mtok generate --chat --image F -p TEXT --temperature 0` prints, streamed and not;
- usage.prompt_tokens counts the expanded rows: the template's ids (/tokenize, holding the boi, pad,
  eoi triple once) - 3 + (image_size / patch_size / 2)^2 + 2 from config.json;
- no prefix reuse across images: with one session, PNG, JPEG, PNG again each give the CLI's answer for
  their own image and report cached_tokens 0, and the text request after an image reuses nothing,
  while the same text request once more does (so the 0 can be told from "never reuses");
- logprobs come with an image;
- stop strings with an image end the answer as they do without one (mtok_generate's decode loop):
  the greedy answer is generated in full first, a piece of it that spans two tokens becomes the stop
  string, and the answer, streamed and not, is then the text before its first occurrence, finish
  "stop", completion_tokens counting the token that completed it; the same procedure on a text-only
  request shows these are the text path's semantics;
- the 400s, each with its param: a http URL, a non-image data: URL, bad base64, bytes that are no
  image, two images, an image on an assistant message, and a model without a vision tower.
Without the openai package the test is skipped (exit 77), unless $CI is set."""
import base64
import json
import os
import struct
import subprocess
import sys
import zlib

from harness import args
from serve_util import Checks, Server, synth, test_env, workdir

a = args()
try:
    import openai
    from openai import OpenAI
except ImportError:
    print("the openai package is missing" + ("" if os.environ.get("CI") else ": skipped"))
    sys.exit(1 if os.environ.get("CI") else 77)

check = Checks()
work = workdir("mtok-serve-image-")
env = test_env(work)
N = 8
TEXT = "What is in this picture?"


def png(w, h, seed):
    """An RGB PNG written here (zlib + CRCs), pixels from a small LCG so two seeds differ."""
    x, rows = seed, b""
    for _ in range(h):
        row = bytearray([0])
        for _ in range(w * 3):
            x = (x * 1103515245 + 12345) & 0x7FFFFFFF
            row.append(x >> 16 & 0xFF)
        rows += bytes(row)

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) +
            chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def per_byte_text(b):
    """The server's JSON text of raw bytes: each byte that is not part of valid UTF-8 becomes U+FFFD."""
    s = b.decode("utf-8", errors="surrogateescape")
    return "".join("\ufffd" if 0xDC80 <= ord(ch) <= 0xDCFF else ch for ch in s)


def cli_image(model, img):
    p = subprocess.run([a.mtok, "generate", "-m", model, "--chat", "--image", img, "-p", TEXT, "-n", str(N),
                        "--temperature", "0"], capture_output=True, timeout=120, env=env)
    if p.returncode != 0:
        raise RuntimeError(f"mtok generate --image failed: {p.stderr.decode(errors='replace')}")
    assert p.stdout.endswith(b"\n"), p.stdout
    return per_byte_text(p.stdout[:-1])


def uri(path, mime):
    with open(path, "rb") as f:
        return f"data:{mime};base64," + base64.b64encode(f.read()).decode()


def user(url, text=TEXT):
    return {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url, "detail": "high"}},
                                        {"type": "text", "text": text}]}


def bad(client, messages, param, words, **kw):
    """Expects a 400 whose param is param and whose message holds every one of words."""
    try:
        r = client.chat.completions.create(model="m", messages=messages, max_tokens=2, **kw)
        check(False, f"{param}: expected a 400, got {str(r)[:200]}")
        return
    except openai.BadRequestError as e:
        msg = e.body.get("message", "") if isinstance(e.body, dict) else str(e)
        check(e.status_code == 400 and e.param == param and all(w in msg for w in words),
              f"400 param={e.param!r} {msg!r} (want {param!r} with {words})")
    except Exception as e:  # noqa: BLE001 - another exception is a failed check, shown in full
        check(False, f"{param}: expected BadRequestError, got {type(e).__name__}: {e}")


def stop_pick(r):
    """A stop string from a finished greedy answer: the last two characters of one token and the first
    two of the next, in the plain-text run of tokens at the answer's start (byte tokens and special
    tokens end it: their text is not theirs alone). It must start past the first character and occur
    nowhere before, so the answer has something to keep. Returns (stop, its offset, tokens generated
    up to and including the one that completes it) or None."""
    toks = [e.token for e in (r.choices[0].logprobs.content if r.choices[0].logprobs else [])]
    text, ends = "", []
    for t in toks:
        if t.startswith("bytes:") or t.startswith("<|"):
            break
        text += t
        ends.append(len(text))
    if not r.choices[0].message.content.startswith(text):
        return None
    for b in reversed(ends[:-1]):  # the latest boundary: the most text kept
        stop = text[b - 2:b + 2]
        if b >= 3 and len(stop) == 4 and stop.isascii() and stop.isprintable() and text.find(stop) == b - 2:
            return stop, b - 2, next(i for i, e in enumerate(ends) if e >= b + 2) + 1
    return None


def stop_case(client, greedy, label, messages):
    """The stop-string checks on one request (see the docstring); False when no stop string could be
    picked from its answer."""
    full = client.chat.completions.create(messages=messages, logprobs=True, **greedy)
    pick = stop_pick(full)
    if not pick:
        print(f"{label}: no stop string to pick from {full.choices[0].message.content!r}")
        return False
    stop, at, n_tok = pick
    want = full.choices[0].message.content[:at]
    stops = [stop, "\u0001never"]  # a second string that never occurs changes nothing
    r = client.chat.completions.create(messages=messages, stop=stops, **greedy)
    check(r.choices[0].message.content == want and r.choices[0].finish_reason == "stop" and
          r.usage.completion_tokens == n_tok,
          f"{label}: stop {stop!r} ends {full.choices[0].message.content!r} as {r.choices[0].message.content!r} "
          f"(want {want!r}), finish {r.choices[0].finish_reason}, completion_tokens {r.usage.completion_tokens} "
          f"(want {n_tok}: the one that completed it counts)")
    parts, finish = [], None
    for ev in client.chat.completions.create(messages=messages, stop=stops, stream=True, **greedy):
        for ch in ev.choices:
            parts.append(ch.delta.content or "")
            finish = ch.finish_reason or finish
    check("".join(parts) == want and finish == "stop",
          f"{label}: streamed with stop {stop!r}: {parts} (joined, want {want!r}), finish {finish}")
    return True


model = synth(a.mtok, "glm4v-tiny", os.path.join(work, "m"), env=env)
text_model = synth(a.mtok, "glm4-tiny", os.path.join(work, "t"), env=env)
vc = json.load(open(os.path.join(model, "config.json")))
rows = (vc["vision_config"]["image_size"] // vc["vision_config"]["patch_size"] // 2) ** 2 + 2
triple = [vc.get("boi_token_id", 151339), vc.get("pad_token_id", 151329), vc.get("eoi_token_id", 151340)]
imgs = {"png": os.path.join(work, "a.png"), "png2": os.path.join(work, "b.png"), "jpg": os.path.join(work, "c.jpg")}
# a baseline JPEG from the image fuzz corpus, whose files carry one selector byte before the file
with open(os.path.join(a.src, "tests", "fuzz", "corpus", "image", "baseline.jpg"), "rb") as f:
    jpeg = f.read()[1:]
assert jpeg[:2] == b"\xff\xd8", "the corpus JPEG no longer has its selector byte first"
with open(imgs["jpg"], "wb") as f:
    f.write(jpeg)
for k, seed in (("png", 1), ("png2", 2)):
    with open(imgs[k], "wb") as f:
        f.write(png(23 + seed, 17, seed))
mime = {"png": "image/png", "png2": "image/png", "jpg": "image/jpeg"}
ref = {k: cli_image(model, p) for k, p in imgs.items()}
print(f"CLI answers: {ref}")

# one session: every request lands on the session the one before it used; chunk 8 lets short
# prompts be reused at all (reuse is in whole chunks), so a missing reuse is visible
with Server(a.mtok, model, "--sessions", "1", "--chunk", "8", "--ctx", "1024", env=env) as srv:
    client = OpenAI(base_url=srv.base + "/v1", api_key="unused", max_retries=0, timeout=120)
    greedy = dict(model="m", max_tokens=N, temperature=0)
    tk = srv.post("/tokenize", {"messages": [user(uri(imgs["png"], "image/png"))]})
    ids = tk.json.get("tokens", []) if tk.json else []
    check(tk.status == 200 and sum(ids[i:i + 3] == triple for i in range(len(ids))) == 1,
          f"/tokenize renders the image as its boi, pad, eoi triple once: {tk}")
    want_prompt = len(ids) - 3 + rows

    # a text request first: the image request after it must not reuse its prefix
    client.chat.completions.create(messages=[{"role": "user", "content": TEXT}], **greedy)
    for k in ("png", "jpg", "png", "png2"):
        r = client.chat.completions.create(messages=[user(uri(imgs[k], mime[k]))], **greedy)
        check(r.choices[0].message.content == ref[k], f"{k}: answer {r.choices[0].message.content!r} == CLI's")
        check(r.usage.prompt_tokens == want_prompt and r.usage.prompt_tokens_details.cached_tokens == 0,
              f"{k}: prompt_tokens {r.usage.prompt_tokens} == {want_prompt} (expanded), cached "
              f"{r.usage.prompt_tokens_details.cached_tokens} == 0")

    # after an image the session is not reused; the same text request once more is
    t1 = client.chat.completions.create(messages=[{"role": "user", "content": TEXT}], **greedy)
    t2 = client.chat.completions.create(messages=[{"role": "user", "content": TEXT}], **greedy)
    check(t1.usage.prompt_tokens_details.cached_tokens == 0 and t2.usage.prompt_tokens_details.cached_tokens > 0,
          f"text after an image reuses nothing ({t1.usage.prompt_tokens_details.cached_tokens}), text after "
          f"text does ({t2.usage.prompt_tokens_details.cached_tokens})")

    # streaming, with the usage chunk
    parts, usage = [], None
    for ev in client.chat.completions.create(messages=[user(uri(imgs["jpg"], "image/jpeg"))], stream=True,
                                             stream_options={"include_usage": True}, **greedy):
        if ev.usage:
            usage = ev.usage
        for ch in ev.choices:
            parts.append(ch.delta.content or "")
    check("".join(parts) == ref["jpg"], f"stream: {''.join(parts)!r} == CLI's")
    check(usage is not None and usage.prompt_tokens == want_prompt, f"stream usage: {usage}")

    # logprobs fall out of the decode loop: one entry per generated token
    r = client.chat.completions.create(messages=[user(uri(imgs["png"], "image/png"))], logprobs=True,
                                       top_logprobs=2, **greedy)
    lp = r.choices[0].logprobs.content if r.choices[0].logprobs else []
    stopped = r.choices[0].finish_reason == "stop"
    check(r.choices[0].message.content == ref["png"] and len(lp) == r.usage.completion_tokens
          and len(lp) >= 1 and all(len(e.top_logprobs) == 2 and e.top_logprobs[0].logprob >= e.logprob for e in lp),
          f"logprobs with an image: {len(lp)} entries, completion_tokens {r.usage.completion_tokens}, "
          f"finish {r.choices[0].finish_reason} ({'a stop id counts' if stopped else 'length'})")

    png_uri = uri(imgs["png"], "image/png")
    # tools render as a system message before the user's: the image stays on the user message
    tools = [{"type": "function", "function": {"name": "describe", "parameters": {"type": "object"}}}]
    tk = srv.post("/tokenize", {"messages": [user(png_uri)], "tools": tools})
    ids = tk.json.get("tokens", []) if tk.json else []
    r = client.chat.completions.create(messages=[user(png_uri)], tools=tools, **greedy)
    check(sum(ids[i:i + 3] == triple for i in range(len(ids))) == 1 and r.usage.prompt_tokens == len(ids) - 3 + rows,
          f"tools with an image: prompt_tokens {r.usage.prompt_tokens} == {len(ids)} - 3 + {rows}")
    # the first answer of each kind that has a stop string to pick (stop_pick) is tested
    texts = [(f"text only {t!r}", [{"role": "user", "content": t}]) for t in (TEXT, "What colour is it?", "Hello")]
    images = [(f"image {k}", [user(uri(imgs[k], mime[k]))]) for k in ("png", "png2", "jpg")]
    for kind, cases in (("text", texts), ("image", images)):
        check(any(stop_case(client, greedy, label, msgs) for label, msgs in cases),
              f"stop strings, {kind}: an answer had two plain tokens to put a stop string across")
    bad(client, [user("https://example.com/cat.png")], "messages[0].content[0].image_url",
        ["only data: URLs are accepted; mtok does not fetch"])
    bad(client, [user("data:text/plain;base64,aGVsbG8=")], "messages[0].content[0].image_url", ["data:image/png"])
    bad(client, [user("data:image/png;base64,iVBO!w0K")], "messages[0].content[0].image_url", ["bad base64", "4"])
    bad(client, [user("data:image/png;base64,iVBORw0KGgo")], "messages[0].content[0].image_url", ["bad base64"])
    bad(client, [user("data:image/png;base64," + base64.b64encode(b"not an image, only text").decode())],
        "messages[0].content[0].image_url", ["image"])
    bad(client, [user(png_uri), {"role": "assistant", "content": "a cat"}, user(png_uri)],
        "messages[2].content[0].image_url", ["one image per conversation"])
    bad(client, [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": png_uri}},
                                               {"type": "image_url", "image_url": {"url": png_uri}}]}],
        "messages[0].content[1].image_url", ["one image per conversation"])
    bad(client, [{"role": "user", "content": "hi"},
                 {"role": "assistant", "content": [{"type": "image_url", "image_url": {"url": png_uri}}]}],
        "messages[1].content[0].image_url", ["user messages"])
    # the server still answers after all that
    r = client.chat.completions.create(messages=[user(png_uri)], **greedy)
    check(r.choices[0].message.content == ref["png"], "an image request after the errors")
    # every answer above came from one tower: loaded at the first image, kept (core/vision.h's cache)
    loads = [l for l in srv.log_text().splitlines() if "vision tower: " in l and " layers" in l]
    check(len(loads) == 1, f"the tower was loaded once for all the image requests: {len(loads)} loads {loads[:2]}")
    check(srv.stop() == 0, "the server stops cleanly on SIGTERM")

with Server(a.mtok, text_model, "--ctx", "512", env=env) as srv:
    client = OpenAI(base_url=srv.base + "/v1", api_key="unused", max_retries=0, timeout=120)
    bad(client, [user(uri(imgs["png"], "image/png"))], "messages[0].content[0].image_url", ["no vision tower"])
    check(srv.stop() == 0, "the text model's server stops cleanly")

check.exit()
