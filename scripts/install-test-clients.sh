#!/usr/bin/env bash
# Installs the Python clients that the server tests drive against `mtok serve` (docs/SERVER.md):
# the `openai` client and lm-evaluation-harness (`lm_eval`) for its API models local-completions
# and local-chat-completions; and the packages LongBench's own metric code uses (rouge, fuzzywuzzy,
# jieba), which tests/test_eval_longbench.py computes its reference scores with (docs/EVAL.md §2).
#
# Usage: scripts/install-test-clients.sh [PYTHON]   (default python3; called by install-deps.sh)
#
# Why lm-eval goes in with --no-deps: its declared dependencies (evaluate, scikit-learn with scipy,
# rouge-score with nltk, ...) serve task metrics and local models that the API-model path never
# imports; lm-eval 0.4.13 loads model classes lazily, so local-completions needs neither torch nor
# transformers. The list below is what `lm_eval --model local-completions|local-chat-completions`
# imports (checked with a module probe): datasets (task loading), sacrebleu (lm_eval.api.metrics
# imports it at load), pytablewriter (the results table), jinja2 (prompt templates), and the API
# extra (aiohttp, requests, tenacity; tqdm and pyyaml come with datasets). Measured on Debian 12
# (python 3.11, fresh venv): about 25 s and 555 MB (pyarrow and pandas, for datasets, are half),
# against 32 s and 780 MB for `lm-eval[api]` with every dependency. `pip check` lists the declared
# dependencies left out; a task whose metric needs scikit-learn or HF evaluate wants
# `pip install lm-eval[api]==0.4.13` in full (still no torch).
#
# Idempotent: every module that already imports is left as it is (including its version); the
# versions below pin what is installed when it does not.
set -euo pipefail
PY="${1:-python3}"

# module to import -> pip requirement that provides it
# sentencepiece and PIL are test oracles too: ChatGLM3's tokenizer (the Python binding of the library
# mtok links; 0.1.99 is the nearest release with wheels for current Pythons to Debian 12's 0.1.97) and
# GLM-4V's image preprocessing (Pillow's bicubic resize)
mods=(openai datasets sacrebleu pytablewriter jinja2 aiohttp requests tenacity rouge fuzzywuzzy jieba
      sentencepiece PIL)
reqs=(openai==3.63.0 datasets==5.2.0 sacrebleu==2.6.0 pytablewriter==1.2.1 jinja2==3.1.6
      aiohttp==3.14.5 requests==2.34.2 tenacity==9.2.1 rouge==1.0.1 fuzzywuzzy==0.18.0 jieba==0.42.1
      sentencepiece==0.1.99 pillow==10.4.0)
LM_EVAL=lm-eval==0.4.13

# Debian's own python refuses pip installs into it (PEP 668); install-deps.sh falls back the same way
pip_install() {
  "$PY" -m pip install --quiet --disable-pip-version-check "$@" 2>/dev/null ||
    "$PY" -m pip install --quiet --disable-pip-version-check --break-system-packages "$@"
}
importable() { "$PY" -c "import $1" >/dev/null 2>&1; }

missing=()
for i in "${!mods[@]}"; do
  importable "${mods[$i]}" || missing+=("${reqs[$i]}")
done
if [ "${#missing[@]}" -gt 0 ]; then
  pip_install "${missing[@]}"
  for r in "${missing[@]}"; do echo "install-test-clients: installed $r"; done
fi
if ! importable lm_eval; then
  pip_install --no-deps "$LM_EVAL"
  echo "install-test-clients: installed $LM_EVAL (--no-deps: the API models only, no torch)"
fi

# The API-model path must now load end to end: registry lookup of both models (their modules import
# aiohttp, tenacity, requests), the evaluator, task loading and the results table. An lm_eval that
# was already installed in another version may fail here: then reinstall the pinned one.
if ! "$PY" - <<'EOF'
from lm_eval.api.registry import get_model
for name in ("local-completions", "local-chat-completions"):
    get_model(name)
import lm_eval.evaluator, lm_eval.tasks, lm_eval.api.metrics, pytablewriter, openai  # noqa: E401,F401
EOF
then
  echo "install-test-clients: lm_eval's API models do not load with $PY (see above);" \
       "try: $PY -m pip install --no-deps --force-reinstall $LM_EVAL" >&2
  exit 1
fi
