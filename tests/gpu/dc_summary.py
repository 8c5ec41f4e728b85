#!/usr/bin/env python3
"""The JSON summary of tests/gpu/device-check.sh: one file, rewritten (write + rename) after every
stage, so a check killed halfway still leaves the stages it finished.

  dc_summary.py init   --out F --budget S --build DIR
  dc_summary.py gpu    --out F --smi CSV_LINE --info CUDA_LINE --count N
  dc_summary.py stage  --out F --name N --status passed|failed|skipped|timeout --seconds T --budget B --rc R
                       [--note TEXT] [--log PATH] [--json PATH] [--ctest-log PATH]
  dc_summary.py finish --out F          prints the summary; exit 0 passed and targets met, 1 a stage
                                        failed or ran out of time, 2 the stages passed but a target was
                                        missed, 3 no usable GPU (nothing measured)"""
import argparse
import json
import os
import platform
import re
import sys
import time


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {"stages": []}


def save(path, doc):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


CTEST_LINE = re.compile(r"\d+/\d+ Test +#\d+: (\S+) \.*\s*(\*\*\*)?(Passed|Failed|Not Run|Skipped|Timeout|Exception"
                        r"[^0-9]*|\S[^0-9]*?)\s+([0-9.]+) sec")


def ctest_results(path):
    tests = []
    try:
        text = open(path, errors="replace").read()
    except OSError:
        return {"tests": tests}
    for m in CTEST_LINE.finditer(text):
        status = m.group(3).strip().lower().replace(" ", "_")
        tests.append({"name": m.group(1), "status": status, "seconds": float(m.group(4))})
    count = lambda s: sum(1 for t in tests if t["status"] == s)  # noqa: E731
    return {"tests": tests, "passed": count("passed"), "skipped": count("skipped"),
            "failed": len(tests) - count("passed") - count("skipped")}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("cmd", choices=("init", "gpu", "stage", "finish"))
    ap.add_argument("--out", required=True)
    for k in ("budget", "build", "smi", "info", "count", "name", "status", "seconds", "rc", "note", "log", "json",
              "ctest_log"):
        ap.add_argument("--" + k.replace("_", "-"), dest=k)
    a = ap.parse_args()
    doc = load(a.out)
    if a.cmd == "init":
        doc = {"device_check": "tests/gpu/device-check.sh", "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
               "t0": time.time(), "budget_s": float(a.budget), "build_dir": a.build,
               "host": {"name": platform.node(), "cpus": os.cpu_count(), "kernel": platform.release()},
               "gpu": None, "stages": [], "result": "incomplete"}
    elif a.cmd == "gpu":
        f = [x.strip() for x in (a.smi or "").split(",")]
        keys = ("name", "driver_version", "memory_total", "clocks_max_sm", "clocks_max_mem", "power_limit")
        doc["gpu"] = {"devices": int(a.count or 0), "cuda_line": a.info, "nvidia_smi": dict(zip(keys, f)) if a.smi else None}
    elif a.cmd == "stage":
        st = {"name": a.name, "status": a.status, "seconds": round(float(a.seconds), 1), "budget_s": float(a.budget),
              "rc": int(a.rc)}
        if a.note:
            st["note"] = a.note
        if a.log:
            st["log"] = a.log
        if a.json:
            try:
                with open(a.json) as f:
                    st["figures"] = json.load(f)
            except (OSError, ValueError) as e:
                st["figures"] = None
                st["note"] = (st.get("note", "") + f"; no report ({e})").lstrip("; ")
        if a.ctest_log:
            st["figures"] = ctest_results(a.ctest_log)
        doc["stages"] = [s for s in doc.get("stages", []) if s.get("name") != a.name] + [st]
    elif a.cmd == "finish":
        stages = doc.get("stages", [])
        bad = [s["name"] for s in stages if s["status"] in ("failed", "timeout")]
        no_gpu = not (doc.get("gpu") or {}).get("devices")
        targets = {}
        for s in stages:  # the targets are defined on the GLM-4-9B-Chat shape: its bench
            t = (s.get("figures") or {}).get("targets") if s["name"].startswith("bench") else None
            if t:
                targets[s["name"]] = t
        t9 = targets.get("bench-glm4-9b-chat", {})
        missed = [k for k in ("decode", "prefill", "topk") if (t9.get(k) or {}).get("met") is False]
        unmeasured = [k for k in ("decode", "prefill", "topk") if (t9.get(k) or {}).get("met") is None]
        doc["targets"] = {"glm4-9b-chat": t9 or None, "missed": missed, "not_measured": unmeasured}
        doc["elapsed_s"] = round(time.time() - doc.get("t0", time.time()), 1)
        doc["result"] = ("no_gpu" if no_gpu else "failed" if bad else "targets_missed" if missed or unmeasured
                         else "passed")
        save(a.out, doc)
        print(f"device check: {doc['result']} in {doc['elapsed_s']} s (budget {doc.get('budget_s')} s)")
        for s in stages:
            print(f"  {s['name']:<22} {s['status']:<8} {s['seconds']:7.1f} s  {s.get('note', '')}")
        for k, v in (t9 or {}).items():
            if isinstance(v, dict):
                print(f"  target {k:<8} {'met' if v.get('met') else 'not measured' if v.get('met') is None else 'MISSED'}"
                      f"  {json.dumps({x: y for x, y in v.items() if x != 'met'})}")
        return 3 if no_gpu else 1 if bad else 2 if missed or unmeasured else 0
    save(a.out, doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
