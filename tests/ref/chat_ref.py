"""chat_ref.py — reference renderings of the GLM chat formats, written from the published descriptions
(docs/GLM.md §5), independent of mtok's C code:

  GLM-4:    the Hugging Face chat-template route: a Jinja template shaped like glm-4-9b-chat's (same control
            structure; the built-in tools' descriptions here are our own placeholder text), rendered by jinja2
            with transformers' settings (trim_blocks, lstrip_blocks, tojson = json.dumps(ensure_ascii=False)),
            then the whole text tokenized with special strings as ids;
  ChatGLM3: THUDM's build_chat_input at the token level: per message <|role|> + encode(metadata + "\\n") +
            encode(content), tools appended to the system content as json.dumps(tools, indent=4,
            ensure_ascii=False) (a system message made for the tools says THUDM's API-demo sentence), [gMASK] sop
            first, <|assistant|> last.
"""
import json

GLM4_SENTENCE = ("你是一个名为 ChatGLM 的人工智能助手。你是基于智谱AI训练的语言模型 GLM-4 模型开发的，"
                 "你的任务是针对用户的问题和要求提供适当的答复和支持。")

GLM3_TOOLS_SYSTEM = "Answer the following questions as best as you can. You have access to the following tools:"

# glm-4-9b-chat's template structure; only the three built-in descriptions are placeholders of ours.
GLM4_TEMPLATE = (
    "[gMASK]<sop>{% for item in messages %}{% if item['tools'] is defined %}<|system|>\n" + GLM4_SENTENCE +
    "\n\n# 可用工具{% set tools = item['tools'] %}{% for tool in tools %}{% if tool['type'] == 'function' %}\n\n"
    "## {{ tool['function']['name'] }}\n\n{{ tool['function'] | tojson(indent=4) }}\n"
    "在调用上述函数时，请使用 Json 格式表示调用的参数。{% elif tool['type'] == 'python' %}\n\n## python\n\n"
    "Placeholder: python runs code in a notebook.\n  Second line, indented.{% elif tool['type'] == 'simple_browser' %}\n\n"
    "## simple_browser\n\nPlaceholder: search(query), open_url(url).\n    {% elif tool['type'] == 'cogview' %}\n\n"
    "## cogview\n\nPlaceholder: draws images from English prompts.{% endif %}{% endfor %}{% endif %}"
    "{% if item['content'] %}<|{{ item['role'] }}|>{{ item['metadata'] }}\n{{ item['content'] }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}")


def attach_tools(messages, tools):
    """mtok tokenize --tools: on the first message when it is a system message, else on a new one first."""
    msgs = [dict(m, role="observation" if m["role"] == "tool" else m["role"]) for m in messages]
    if tools is None:
        return msgs
    if msgs and msgs[0]["role"] == "system":
        msgs[0]["tools"] = tools
    else:
        msgs.insert(0, {"role": "system", "content": None, "tools": tools})
    return msgs


def render_glm4(messages, tools, add_generation_prompt):
    import jinja2
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
    env.filters["tojson"] = lambda x, indent=None: json.dumps(x, ensure_ascii=False, indent=indent)
    msgs = attach_tools(messages, tools)
    for m in msgs:
        m.setdefault("metadata", "")
    return env.from_string(GLM4_TEMPLATE).render(messages=msgs, add_generation_prompt=add_generation_prompt)


def glm3_ids(encode, special, messages, tools, add_generation_prompt):
    """encode: text -> ids (SentencePiece); special: name -> id."""
    ids = [special["[gMASK]"], special["sop"]]
    for item in attach_tools(messages, tools):
        content = item.get("content") or ""
        if item["role"] == "system" and "tools" in item and item.get("content") is None:
            # no system text of the caller's: THUDM's ChatGLM3 API demo puts this sentence first
            content = GLM3_TOOLS_SYSTEM
        if item["role"] == "system" and "tools" in item:
            # mtok unwraps OpenAI's {"type": "function", "function": F} to F, as THUDM's API demo does
            plain = [t["function"] if isinstance(t, dict) and t.get("type") == "function" and
                     isinstance(t.get("function"), dict) else t for t in item["tools"]]
            content = content + "\n" + json.dumps(plain, indent=4, ensure_ascii=False)
        ids += [special[f"<|{item['role']}|>"]] + encode((item.get("metadata") or "") + "\n") + encode(content)
    if add_generation_prompt:
        ids.append(special["<|assistant|>"])
    return ids
