#!/usr/bin/env python3
"""Parses Prometheus text exposition (format 0.0.4) from stdin with the reference Python
client's parser (PyPI prometheus-client), which rejects malformed text, and prints what it
read as JSON: {"families": {name: type}, "samples": [{"name", "labels", "value"}]}.

Exits non-zero, naming the problem, when the text does not parse or breaks a convention the
dualbus tests rely on (every family has a known TYPE and HELP; counters end in _total).
"""
import json
import sys

from prometheus_client.parser import text_string_to_metric_families

text = sys.stdin.read()
families = {}
samples = []
problems = []
try:
    for fam in text_string_to_metric_families(text):
        families[fam.name] = fam.type
        if fam.type == "unknown":
            problems.append(f"{fam.name}: no TYPE line")
        if not fam.documentation:
            problems.append(f"{fam.name}: no HELP line")
        for s in fam.samples:
            if fam.type == "counter" and not s.name.endswith(("_total", "_created")):
                problems.append(f"counter sample {s.name} does not end in _total")
            samples.append({"name": s.name, "labels": s.labels, "value": s.value})
except Exception as e:  # the parser raises ValueError and others on malformed text
    print(f"unparsable Prometheus text: {e!r}", file=sys.stderr)
    sys.exit(2)
if problems:
    print("\n".join(problems), file=sys.stderr)
    sys.exit(3)
json.dump({"families": families, "samples": samples}, sys.stdout)
