"""Builds specs/databricks.json, the official Databricks specs the emulator's service
(emu_svc_databricks.py) is held to, from /work/shared/specs:

  files      the exact text of each JSON file under its upstream path (Azure/azure-rest-api-specs:
             the 2024-05-01 Microsoft.Databricks example WorkspaceGetParameters.json; the
             workspaces swagger itself is not in shared/specs)
  converted  Databricks' Jobs API 2.1 OpenAPI 3 document (schema/original-jobs-2.1-azure.yaml,
             as republished in judahrand/databricks-jobs) parsed once with PyYAML and kept
             as JSON, so neither the emulator nor the dist needs a YAML parser

    python3 databricks_specs.py --build /work/shared/specs tests/emulators/specs/databricks.json
"""
import json
import os
import sys

JOBS = "databricks-jobs/schema/original-jobs-2.1-azure.yaml"


def build(shared, out):
    import yaml
    files = {}
    src = os.path.join(shared, "databricks")
    for root, dirs, names in os.walk(src):
        dirs.sort()
        for n in sorted(names):
            if n.endswith(".json"):
                p = os.path.join(root, n)
                with open(p, encoding="utf-8", newline="") as f:
                    files[os.path.relpath(p, src)] = f.read()
    with open(os.path.join(shared, JOBS), encoding="utf-8") as f:
        jobs = yaml.safe_load(f)
    with open(out, "w", encoding="utf-8") as f:
        json.dump({"about": "specs/databricks (Azure/azure-rest-api-specs, MIT) and the Databricks "
                            "Jobs 2.1 OpenAPI (original-jobs-2.1-azure.yaml, converted from YAML by "
                            "tests/emulators/databricks_specs.py); sources: /work/shared/specs/README.md",
                   "files": files, "converted": {JOBS: jobs}}, f, indent=0, sort_keys=True)
        f.write("\n")
    return len(files)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--build":
        print("%d files + the Jobs 2.1 OpenAPI" % build(sys.argv[2], sys.argv[3]))
    else:
        sys.exit(__doc__)
