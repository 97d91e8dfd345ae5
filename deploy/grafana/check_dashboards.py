#!/usr/bin/env python3
"""Offline checks of the Grafana dashboards in deploy/grafana/dashboards/*.json.

Structure (uid, title, panels with ids, grid positions and targets), unique dashboard uids,
unique panel ids within a dashboard, every `$variable` a query uses declared in its templating
list, and every PromQL query parsed by promtool: the queries, with variables replaced by
sample values, are written as recording rules to a temporary file for `promtool check rules`.
Exits non-zero naming each problem.
"""

import json
import pathlib
import re
import subprocess
import sys
import tempfile

# Grafana's built-in variables and a value each that keeps the query valid PromQL.
BUILTINS = {
    "__rate_interval": "1m",
    "__interval": "1m",
    "__range": "1h",
    "__interval_ms": "60000",
    "__range_s": "3600",
}
VARIABLE = re.compile(r"\$(?:\{(\w+)(?::\w+)?\}|(\w+))")


def problems_of(path, seen_uids, rules):
    out = []
    try:
        d = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        return [f"{path}: not JSON: {e}"]
    for key in ("uid", "title", "panels", "templating", "schemaVersion"):
        if key not in d:
            out.append(f"{path}: missing {key!r}")
    uid = d.get("uid")
    if uid in seen_uids:
        out.append(f"{path}: uid {uid!r} also used by {seen_uids[uid]}")
    seen_uids[uid] = path.name
    declared = {v.get("name") for v in d.get("templating", {}).get("list", [])}
    if None in declared:
        out.append(f"{path}: a templating variable has no name")
    ids = set()
    for p in d.get("panels", []):
        pid, title = p.get("id"), p.get("title")
        where = f"{path}: panel {pid} ({title!r})"
        if not isinstance(pid, int):
            out.append(f"{where}: id must be an integer")
        elif pid in ids:
            out.append(f"{where}: duplicate panel id")
        ids.add(pid)
        if not title:
            out.append(f"{where}: no title")
        if not {"x", "y", "w", "h"} <= set(p.get("gridPos", {})):
            out.append(f"{where}: gridPos needs x, y, w, h")
        targets = p.get("targets") or []
        if not targets:
            out.append(f"{where}: no targets")
        refs = [t.get("refId") for t in targets]
        if len(refs) != len(set(refs)):
            out.append(f"{where}: duplicate refIds")
        for t in targets:
            expr = t.get("expr", "")
            if not expr.strip():
                out.append(f"{where}: target {t.get('refId')} has no expr")
                continue
            sample = expr
            for m in VARIABLE.finditer(expr):
                name = m.group(1) or m.group(2)
                if name in BUILTINS:
                    continue
                if name not in declared:
                    out.append(f"{where}: query uses ${name}, which is not declared")
            sample = VARIABLE.sub(
                lambda m: BUILTINS.get(m.group(1) or m.group(2), "x"), expr
            )
            rules.append((f"{path.name} panel {pid} {t.get('refId')}", sample))
    for v in d.get("templating", {}).get("list", []):
        q = v.get("query")
        if v.get("type") == "query":
            text = q.get("query") if isinstance(q, dict) else q
            m = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", text or "")
            if not m:
                out.append(f"{path}: variable {v.get('name')}: only label_values(<selector>, <label>) is supported")
            else:
                rules.append((f"{path.name} variable {v.get('name')}", m.group(1)))
    return out


def promtool_parse(rules):
    """Problems promtool finds in the queries, each named by where it came from."""
    out = []
    for i, (where, expr) in enumerate(rules):
        doc = {"groups": [{"name": "q", "rules": [{"record": f"dashboard:query{i}", "expr": expr}]}]}
        with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as f:
            json.dump(doc, f)  # JSON is YAML
        r = subprocess.run(["promtool", "check", "rules", f.name], capture_output=True, text=True)
        pathlib.Path(f.name).unlink()
        if r.returncode != 0:
            detail = (r.stderr or r.stdout).strip().splitlines()
            out.append(f"{where}: promtool: {' '.join(detail[-2:])}\n    query: {expr}")
    return out


def main():
    root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else pathlib.Path(__file__).parent / "dashboards")
    files = sorted(root.glob("*.json"))
    if not files:
        print(f"no dashboards in {root}")
        return 1
    seen, rules, problems = {}, [], []
    for f in files:
        problems += problems_of(f, seen, rules)
    problems += promtool_parse(rules)
    for p in problems:
        print(p)
    print(f"{len(files)} dashboards, {len(rules)} queries: {'FAILED' if problems else 'ok'}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
