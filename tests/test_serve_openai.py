#!/usr/bin/env python3
"""`mtok serve` through the official `openai` Python client, on the glm4-tiny synthetic model.

Greedy output is checked against the command line, not against stored strings: a string prompt must
give exactly what `mtok generate -p TEXT --temperature 0` gives (the same [gMASK]<sop> + text ids, the
same tokens, the same text), and every other way of asking (token ids, lists, streaming, PUT /generate,
chat over the template's ids) must give what the completion of the same ids gives.

- completions: string, [string], [ids], [[ids]] prompts; stop strings; logprobs (shapes, the argmax's
  value bit-identical in token_logprobs and top_logprobs); echo (also with max_tokens 0); streaming with
  include_usage (the usage chunk last, choices []);
- chat: system + two consecutive user turns (the prompt is the GLM-4 template's ids, built here from
  the role ids `mtok tokenize --special` reports), streamed and not;
- tools: a forced tool_choice puts "name\\n" after <|assistant|> (prompt_tokens counts it); the reply is a
  tool call exactly when the greedy continuation parses as a JSON object; "required" is refused;
- errors as the client raises them: n=2, unknown role, context_length_exceeded, a wrong API key, an
  unknown path; /v1/models, /tokenize (special text -> one id), /detokenize, PUT /generate.
Without the openai package the test is skipped (exit 77), unless $CI is set: there it must be installed."""
import json
import os
import shutil
import subprocess
import sys

from harness import args
from serve_util import Checks, Server, cli_generate, cli_tokenize, synth, test_env, workdir

a = args()
try:
    import openai
    from openai import OpenAI
except ImportError:
    print("the openai package is missing" + ("" if os.environ.get("CI") else ": skipped"))
    sys.exit(1 if os.environ.get("CI") else 77)

check = Checks()
work = workdir("mtok-serve-openai-")
env = test_env(work)
CTX = 1024   # small, so that a context overflow is cheap to provoke
N = 10       # generated tokens per request: a few seconds for the whole test on 2 cores
P1, P2 = "Hello world, the river", "Once upon a time in the north"
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Current weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]


def raises(fn, cls):
    """Calls fn; returns the exception if it is a cls, else None (and prints what happened instead)."""
    try:
        r = fn()
    except cls as e:
        return e
    except Exception as e:  # noqa: BLE001 - a wrong exception type is a failed check, shown in full
        print(f"     expected {cls.__name__}, got {type(e).__name__}: {e}")
        return None
    print(f"     expected {cls.__name__}, got a response: {str(r)[:300]}")
    return None


def choices_text(r):
    return [c.text for c in sorted(r.choices, key=lambda c: c.index)]


def pick_stop(text):
    """A stop string inside text: 3 printable ASCII characters whose first occurrence is past the first
    third (so the reply is cut visibly short), else any 2 characters without U+FFFD; None if text is too short."""
    for width in (3, 2, 1):
        for k in range(max(1, len(text) // 3), len(text) - width + 1):
            s = text[k:k + width]
            if text.find(s) == k and "\ufffd" not in s and (width < 3 or all(" " <= ch <= "~" for ch in s)):
                return s, k
    return None, None


try:
    model = synth(a.mtok, "glm4-tiny", os.path.join(work, "tiny"), env)
    name = os.path.basename(model)
    # references from the command line, before any server exists
    ref = {}
    for p in (P1, P2):
        text, n_prompt = cli_generate(a.mtok, model, p, N, "--ctx", str(CTX), env=env)
        ref[p] = (text, n_prompt)
    special = {s: cli_tokenize(a.mtok, model, s, special=True, env=env)
               for s in ("[gMASK]", "<sop>", "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>",
                         "<|endoftext|>")}
    check(all(len(v) == 1 for v in special.values()), f"every special token text is one id: {special}")
    special = {k: v[0] for k, v in special.items()}
    prefix = [special["[gMASK]"], special["<sop>"]]
    ids = {p: prefix + cli_tokenize(a.mtok, model, p, env=env) for p in (P1, P2)}
    check(all(len(ids[p]) == ref[p][1] for p in ids), "mtok generate prefills [gMASK]<sop> + the text's ids")

    with Server(a.mtok, model, "--ctx", str(CTX), env=env) as srv:
        client = OpenAI(base_url=srv.base + "/v1", api_key="unused", max_retries=0, timeout=120)

        # ---- /v1/models, /tokenize, /detokenize, /tokenizer_info ----
        ms = client.models.list().data
        check(len(ms) == 1 and ms[0].id == name and ms[0].owned_by == "mtok"
              and (ms[0].model_extra or {}).get("max_model_len") == CTX, f"/v1/models: {ms}")
        r = srv.post("/tokenize", {"prompt": P1, "add_special_tokens": True})
        check(r.status == 200 and r.json.get("tokens") == ids[P1] and r.json.get("count") == len(ids[P1])
              and r.json.get("max_model_len") == CTX, f"/tokenize with add_special_tokens: {r} want {ids[P1]}")
        check(srv.tokenize(P1) == ids[P1][2:], "/tokenize without special tokens: the text's ids alone")
        check(srv.tokenize("<|endoftext|>") == [special["<|endoftext|>"]],
              "/tokenize parses special-token text (<|endoftext|> -> one id, as lm-eval's eos lookup needs)")
        mixed = "a<|user|>b " + P2
        toks = srv.tokenize(mixed)
        r = srv.post("/detokenize", {"tokens": toks})
        check(special["<|user|>"] in toks and r.status == 200 and r.json.get("prompt") == mixed,
              f"/detokenize(/tokenize(text)) == text with a special token inside: {r}")
        r = srv.request("GET", "/tokenizer_info")
        info = r.json if r.status == 200 and isinstance(r.json, dict) else {}
        check("eos_token" in info and len(srv.tokenize(info["eos_token"])) == 1 and info.get("model_max_length") == CTX
              and isinstance(info.get("chat_template"), str), f"/tokenizer_info: {str(info)[:300]}")

        # ---- completions: every prompt form, greedy == mtok generate ----
        comp = dict(model=name, max_tokens=N, temperature=0)
        r = client.completions.create(prompt=P1, **comp)
        c = r.choices[0]
        check(c.text == ref[P1][0], f"string prompt == mtok generate: {c.text!r} vs {ref[P1][0]!r}")
        check(r.object == "text_completion" and r.id.startswith("cmpl-") and r.model == name
              and c.finish_reason == "length" and c.logprobs is None,
              f"completion object: {r.object} {r.id} {r.model} finish {c.finish_reason}")
        u = r.usage
        check(u.prompt_tokens == len(ids[P1]) and u.completion_tokens == N and u.total_tokens == u.prompt_tokens + N,
              f"usage {u} for a {len(ids[P1])}-token prompt")
        check(u.prompt_tokens_details is not None and u.prompt_tokens_details.cached_tokens is not None,
              f"usage.prompt_tokens_details.cached_tokens present: {u.prompt_tokens_details}")
        n_gen2 = client.completions.create(prompt=P2, **comp).usage.completion_tokens  # may stop early (eos)
        r = client.completions.create(prompt=[P1, P2], **comp)
        check(choices_text(r) == [ref[P1][0], ref[P2][0]] and [c.index for c in r.choices] == [0, 1]
              if len(r.choices) == 2 else False, f"[string, string]: {choices_text(r)}")
        check(r.usage.prompt_tokens == len(ids[P1]) + len(ids[P2]) and r.usage.completion_tokens == N + n_gen2,
              f"usage of two prompts is their sum: {r.usage}")
        r = client.completions.create(prompt=ids[P1], **comp)
        check(choices_text(r) == [ref[P1][0]] and r.usage.prompt_tokens == len(ids[P1]),
              "token-id prompt == the same text prompt (ids taken as they are, no second [gMASK]<sop>)")
        r = client.completions.create(prompt=[ids[P2], ids[P1]], **comp)
        check(choices_text(r) == [ref[P2][0], ref[P1][0]], f"[[ids], [ids]]: {choices_text(r)}")

        # ---- stop strings ----
        T = ref[P1][0]
        stop, at = pick_stop(T)
        if stop is None:
            check(False, f"greedy text {T!r} too short to pick a stop string from")
        else:
            r = client.completions.create(prompt=P1, stop=["qqqzzzqqq", stop], **comp)
            c = r.choices[0]
            check(c.text == T[:at] and c.finish_reason == "stop",
                  f"stop {stop!r}: text ends before it ({c.text!r} want {T[:at]!r}), finish {c.finish_reason}")
            r = client.completions.create(prompt=P1, stop=stop, **comp)
            check(r.choices[0].text == T[:at], "stop as one string == as a list")
        r = client.completions.create(prompt=P1, stop="qqqzzzqqq", **comp)
        check(r.choices[0].text == T and r.choices[0].finish_reason == "length", "a stop string never produced")

        # ---- logprobs ----
        K = 3
        r = client.completions.create(prompt=P1, logprobs=K, **comp)
        c, lp = r.choices[0], r.choices[0].logprobs
        check(c.text == T, "asking for logprobs does not change the greedy text")
        if check(lp is not None, "logprobs object present"):
            n = len(lp.tokens)
            check(n == N == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset),
                  f"logprobs arrays hold the {N} generated tokens: {n}, {len(lp.token_logprobs)}, "
                  f"{len(lp.top_logprobs)}, {len(lp.text_offset)}")
            # keys are token strings: byte tokens that are not whole UTF-8 characters all read U+FFFD and
            # share one key, so a dict may hold fewer than K entries
            sizes = [len(t) for t in lp.top_logprobs]
            full = [len(t) == K for t, tok in zip(lp.top_logprobs, lp.tokens) if "\ufffd" not in "".join(t)]
            check(all(1 <= s <= K for s in sizes) and all(full), f"top_logprobs hold {K} entries each: {sizes}")
            greedy = all(t.get(tok) == v and v == max(t.values()) and v <= 0
                         for tok, v, t in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs))
            check(greedy, "greedy: each token's logprob is the top entry, bit-identical in token_logprobs and "
                  f"top_logprobs: {list(zip(lp.tokens, lp.token_logprobs, lp.top_logprobs))[:4]}")
            check(all(x <= y for x, y in zip(lp.text_offset, lp.text_offset[1:])), f"text_offset monotonic: "
                  f"{lp.text_offset}")
            if not any("\ufffd" in t or t.startswith("bytes:") for t in lp.tokens):
                check("".join(lp.tokens) == c.text, f"tokens join to the text: {lp.tokens}")

        # ---- echo ----
        r = client.completions.create(prompt=P1, echo=True, logprobs=1, **comp)
        c, lp = r.choices[0], r.choices[0].logprobs
        n_p = len(ids[P1])
        check(c.text == P1 + T, f"echo: prompt + completion: {c.text!r}")
        if check(lp is not None, "echo logprobs present"):
            check(len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == n_p + N,
                  f"echo: logprobs arrays hold every prompt token and the generated ones ({n_p}+{N}): "
                  f"{len(lp.tokens)}")
            check(lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
                  and all(v is not None for v in lp.token_logprobs[1:]),
                  f"echo: only the first entry is null: {lp.token_logprobs[:3]}")
            check(lp.text_offset[0] == 0 and all(x <= y for x, y in zip(lp.text_offset, lp.text_offset[1:])),
                  f"echo: text_offset from 0, monotonic: {lp.text_offset}")
        r = client.completions.create(prompt=P1, echo=True, **dict(comp, max_tokens=0))
        check(r.choices[0].text == P1 and r.usage.completion_tokens == 0, f"echo with max_tokens 0: {r.choices[0]}")
        # lm-eval's loglikelihood request: ids, echo, max_tokens 1, logprobs 1
        r = client.completions.create(prompt=[ids[P2]], echo=True, logprobs=1, seed=1234, **dict(comp, max_tokens=1))
        lp = r.choices[0].logprobs
        check(lp is not None and len(lp.token_logprobs) == len(ids[P2]) + 1,
              "lm-eval loglikelihood shape: every prompt token plus the generated one")

        # ---- streaming completions ----
        chunks = list(client.completions.create(prompt=P1, stream=True, stream_options={"include_usage": True},
                                                **comp))
        body, last = chunks[:-1], chunks[-1] if chunks else None
        joined = "".join(c.choices[0].text for c in body if c.choices)
        check(joined == T, f"streamed text == non-streamed: {joined!r}")
        check(last is not None and last.choices == [] and last.usage is not None
              and last.usage.completion_tokens == N and last.usage.prompt_tokens == n_p,
              f"the last chunk is the usage chunk (choices [], totals): {last}")
        check(all(c.usage is None for c in body), "every other chunk has usage null")
        fin = [c.choices[0].finish_reason for c in body if c.choices and c.choices[0].finish_reason]
        check(fin == ["length"] and body[-1].choices[0].finish_reason == "length",
              f"one finish_reason, in the last content chunk: {fin}")
        chunks = list(client.completions.create(prompt=P1, stream=True, **comp))
        check(all(c.choices for c in chunks) and "".join(c.choices[0].text for c in chunks) == T,
              "without include_usage: no usage chunk, same text")

        # ---- chat: system + two consecutive user turns ----
        msgs = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Some context here."},
                {"role": "user", "content": [{"type": "text", "text": "What is "}, {"type": "text", "text": "it?"}]}]

        def turn(role, text):
            # chat.c's rule: <|role|> + encode(metadata + "\n") + encode(content), text parts without specials
            return [special[f"<|{role}|>"]] + cli_tokenize(a.mtok, model, "\n", env=env) + \
                cli_tokenize(a.mtok, model, text, env=env)
        want = prefix + turn("system", "You are terse.") + turn("user", "Some context here.") + \
            turn("user", "What is it?") + [special["<|assistant|>"]]
        got = srv.tokenize(messages=msgs, add_generation_prompt=True)
        check(got == want, f"/tokenize messages: the GLM-4 template's ids ({len(got)} vs {len(want)})")
        T_chat = client.completions.create(prompt=want, **comp).choices[0].text
        # a GLM-4 assistant turn begins with its (empty) metadata line: the reply is the text after that "\n"
        T_chat = T_chat[1:] if T_chat.startswith("\n") else T_chat
        r = client.chat.completions.create(model="any-name-works", messages=msgs, max_tokens=N, temperature=0)
        c = r.choices[0]
        check(r.object == "chat.completion" and c.message.role == "assistant" and r.usage.prompt_tokens == len(want),
              f"chat: object {r.object}, role {c.message.role}, prompt_tokens {r.usage.prompt_tokens} "
              f"want {len(want)}")
        check(c.message.content == T_chat and not c.message.tool_calls,
              f"chat content == the completion of the template's ids: {c.message.content!r} vs {T_chat!r}")
        check(c.finish_reason in ("length", "stop") and r.usage.completion_tokens <= N, f"chat finish {c.finish_reason}")
        chunks = list(client.chat.completions.create(model=name, messages=msgs, max_tokens=N, temperature=0,
                                                     stream=True, stream_options={"include_usage": True}))
        body, last = chunks[:-1], chunks[-1] if chunks else None
        check(bool(body) and body[0].choices[0].delta.role == "assistant" and body[0].choices[0].delta.content == "",
              f"chat stream: first delta is role assistant, content '': {body[0] if body else None}")
        joined = "".join(ch.choices[0].delta.content or "" for ch in body if ch.choices)
        check(joined == c.message.content, f"chat stream: joined deltas == non-streamed content: {joined!r}")
        check(last is not None and last.choices == [] and last.usage is not None
              and last.usage.prompt_tokens == len(want) and all(ch.usage is None for ch in body),
              f"chat stream: usage chunk last, usage null elsewhere: {last}")
        fin = [ch.choices[0].finish_reason for ch in body if ch.choices and ch.choices[0].finish_reason]
        check(fin == [c.finish_reason], f"chat stream: one finish_reason, the same: {fin}")
        check(all(ch.object == "chat.completion.chunk" for ch in chunks), "chat stream: chunk objects")

        # ---- tools ----
        user = [{"role": "user", "content": "Weather in Paris?"}]
        tools_file = os.path.join(work, "tools.json")
        with open(tools_file, "w") as f:
            json.dump(TOOLS, f)
        # the template with tools, counted by the command line (system message with the tool list)
        p = subprocess.run([a.mtok, "generate", "-m", model, "--chat", "--tools", tools_file, "-p", "Weather in Paris?",
                            "-n", "1", "--ctx", str(CTX)], capture_output=True, text=True, timeout=120, env=env)
        n_tools_cli = int(p.stderr.split("prompt ")[1].split()[0]) if "prompt " in p.stderr else -1
        base = srv.tokenize(messages=user, tools=TOOLS, add_generation_prompt=True)
        check(len(base) == n_tools_cli, f"/tokenize messages + tools == mtok generate --chat --tools: "
              f"{len(base)} vs {n_tools_cli} tokens")
        forced = base + cli_tokenize(a.mtok, model, "get_weather\n", env=env)
        T_tool = client.completions.create(prompt=forced, **comp).choices[0].text
        # the reply is read as "get_weather\n" + T_tool (mtok_reply_parse): a call when T_tool is a JSON object
        r = client.chat.completions.create(model=name, messages=user, tools=TOOLS, max_tokens=N, temperature=0,
                                           tool_choice={"type": "function", "function": {"name": "get_weather"}})
        c = r.choices[0]
        check(r.usage.prompt_tokens == len(forced),
              f"forced tool_choice: the prompt ends with <|assistant|>get_weather\\n ({r.usage.prompt_tokens} vs "
              f"{len(forced)})")
        try:
            args_obj = json.loads(T_tool)
        except ValueError:
            args_obj = None
        if isinstance(args_obj, dict):
            tc = c.message.tool_calls or []
            check(c.finish_reason == "tool_calls" and c.message.content is None and len(tc) == 1
                  and tc[0].type == "function" and tc[0].id.startswith("call_")
                  and tc[0].function.name == "get_weather" and json.loads(tc[0].function.arguments) == args_obj,
                  f"forced call whose arguments parse: a tool call {c.message}")
        else:
            # the synthetic model's continuation is not JSON: no call can be claimed, the text is the content
            T_text = T_tool[1:] if T_tool.startswith("\n") else T_tool
            check(not c.message.tool_calls and c.message.content == T_text and c.finish_reason in ("length", "stop"),
                  f"forced call whose arguments do not parse ({T_tool!r}): plain content, finish "
                  f"{c.finish_reason}: {c.message}")
        # streamed, the same reply: the call as one tool_calls delta, or the text as content deltas
        chunks = list(client.chat.completions.create(
            model=name, messages=user, tools=TOOLS, max_tokens=N, temperature=0, stream=True,
            tool_choice={"type": "function", "function": {"name": "get_weather"}}))
        deltas = [ch.choices[0].delta for ch in chunks if ch.choices]
        s_calls = [tc for d in deltas for tc in (d.tool_calls or [])]
        s_text = "".join(d.content or "" for d in deltas)
        s_fin = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
        if c.message.tool_calls:
            same = len(s_calls) == 1 and s_calls[0].function.name == "get_weather" and \
                s_calls[0].function.arguments == c.message.tool_calls[0].function.arguments and s_text == ""
        else:
            same = not s_calls and s_text == c.message.content
        check(same and s_fin == [c.finish_reason], f"forced call streamed == not streamed: {s_calls} {s_text!r} {s_fin}")
        r = client.chat.completions.create(model=name, messages=user, tools=TOOLS, tool_choice="none", max_tokens=1,
                                           temperature=0)
        check(r.usage.prompt_tokens == len(srv.tokenize(messages=user, add_generation_prompt=True)),
              "tool_choice none: the tools are left out of the prompt")
        e = raises(lambda: client.chat.completions.create(model=name, messages=user, tools=TOOLS,
                                                          tool_choice="required", max_tokens=1), openai.BadRequestError)
        check(e is not None and e.param == "tool_choice", f"tool_choice required -> 400 naming it: {e}")
        # a conversation with a call and its result: the observation turn is in the prompt
        hist = user + [{"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21}'}]
        hist_ids = srv.tokenize(messages=hist, tools=TOOLS, add_generation_prompt=True)
        r = client.chat.completions.create(model=name, messages=hist, tools=TOOLS, max_tokens=2, temperature=0)
        check(special["<|observation|>"] in hist_ids and r.usage.prompt_tokens == len(hist_ids),
              f"assistant tool_calls + tool result accepted; observation turn in the prompt ({r.usage.prompt_tokens})")

        # ---- errors, as the client raises them ----
        e = raises(lambda: client.completions.create(prompt=P1, n=2, **comp), openai.BadRequestError)
        check(e is not None and e.status_code == 400 and e.param == "n", f"n=2 -> 400 param n: {e}")
        e = raises(lambda: client.chat.completions.create(model=name, messages=[{"role": "wizard", "content": "x"}],
                                                          max_tokens=1), openai.BadRequestError)
        check(e is not None and "role" in str(e.param) + e.body.get("message", "") and
              str(e.param).startswith("messages"), f"unknown role -> 400 naming messages/role: {e}")
        long_ids = (ids[P1] * (CTX // len(ids[P1]) + 2))[:CTX + 76]
        e = raises(lambda: client.completions.create(prompt=long_ids, **comp), openai.BadRequestError)
        msg = e.body.get("message", "") if e is not None and isinstance(e.body, dict) else ""
        check(e is not None and e.code == "context_length_exceeded" and str(CTX) in msg and str(len(long_ids)) in msg,
              f"a {len(long_ids)}-token prompt: context_length_exceeded naming both lengths: {msg!r}")
        e = raises(lambda: client.completions.create(prompt=long_ids[:CTX - 50], **dict(comp, max_tokens=100)),
                   openai.BadRequestError)
        msg = e.body.get("message", "") if e is not None and isinstance(e.body, dict) else ""
        check(e is not None and e.code == "context_length_exceeded" and str(CTX) in msg,
              f"prompt + max_tokens past the context: context_length_exceeded: {msg!r}")
        e = raises(lambda: client.post("/no/such/path", cast_to=object, body={}), openai.NotFoundError)
        check(e is not None and e.status_code == 404, f"unknown path -> NotFoundError: {e}")
        check(client.completions.create(prompt=P1, **comp).choices[0].text == T, "still serving after the errors")

        # ---- PUT /generate (RULER's vLLM client; its greedy setting keeps top_k/top_p) ----
        r = srv.request("PUT", "/generate", {"prompt": P1, "max_tokens": N, "temperature": 0.0, "top_k": 32,
                                             "top_p": 1.0, "stop": None})
        check(r.status == 200 and r.json == {"text": [T]}, f"PUT /generate: {r} want text [{T!r}]")
        rc = srv.stop()
        check(rc == 0 and "mtok serve: stopped" in srv.log_text(), f"SIGTERM: exit {rc}")

    # ---- --api-key ----
    with Server(a.mtok, model, "--ctx", str(CTX), env=env, api_key="sekrit") as srv:
        bad = OpenAI(base_url=srv.base + "/v1", api_key="wrong", max_retries=0, timeout=60)
        good = OpenAI(base_url=srv.base + "/v1", api_key="sekrit", max_retries=0, timeout=60)
        e = raises(lambda: bad.completions.create(prompt=P1, model=name, max_tokens=1), openai.AuthenticationError)
        check(e is not None and e.status_code == 401, f"wrong key -> AuthenticationError: {e}")
        e = raises(lambda: bad.models.list(), openai.AuthenticationError)
        check(e is not None, "wrong key on /v1/models -> AuthenticationError")
        check(good.models.list().data[0].id == name, "the right key works")
        r = srv.request("GET", "/health", headers={"Authorization": "Bearer nope"})
        check(r.status == 200, f"/health needs no key: {r}")
        check(srv.stop() == 0, "SIGTERM: exit 0")
except Exception as e:  # noqa: BLE001 - any crash of the test itself is a failure with its trace
    import traceback
    traceback.print_exc()
    check(False, f"test aborted: {type(e).__name__}: {e}")
finally:
    shutil.rmtree(work, ignore_errors=True)
check.exit()
