"""Validates rendered manifests offline against the upstream Kubernetes JSON schemas.

Usage: validate.py MONITORING_OUT VERSION... -- FILE...

Every document must be a built-in kind with a schema for every VERSION (strict: unknown fields
are errors), or a monitoring.coreos.com/v1 ServiceMonitor, which is written to MONITORING_OUT
(a JSON list) for validate_monitoring.mjs. Any other kind is an error, so nothing passes
unchecked. Prints one line per problem and exits 1 if there was any.
"""

import json
import sys

import kubernetes_validate.utils as kv
import yaml

MONITORING_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}


def main() -> int:
    args = sys.argv[1:]
    if "--" not in args or args.index("--") < 2:
        print("usage: validate.py MONITORING_OUT VERSION... -- FILE...", file=sys.stderr)
        return 2
    split = args.index("--")
    monitoring_out, versions, files = args[0], args[1:split], args[split + 1 :]
    problems, monitoring, checked = [], [], 0
    for path in files:
        with open(path, encoding="utf-8") as f:
            documents = [d for d in yaml.safe_load_all(f) if d is not None]
        for doc in documents:
            name = f"{path}: {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
            if (doc.get("apiVersion"), doc.get("kind")) in MONITORING_KINDS:
                monitoring.append(doc)
                continue
            for version in versions:
                try:
                    kv.validate(doc, version, strict=True)
                    checked += 1
                except kv.ValidationError as e:
                    where = ".".join(str(p) for p in e.path) or "(root)"
                    problems.append(f"{name} (Kubernetes {version}): {where}: {e.message}")
                except kv.SchemaNotFoundError:
                    problems.append(f"{name}: no upstream schema for {doc.get('apiVersion')} in {version}")
    with open(monitoring_out, "w", encoding="utf-8") as f:
        json.dump(monitoring, f)
    for problem in problems:
        print(f"INVALID {problem}")
    print(f"validate.py: {checked} document checks against {', '.join(versions)}, "
          f"{len(monitoring)} ServiceMonitor(s) passed on, {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
