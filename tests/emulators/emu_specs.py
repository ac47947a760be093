"""The official specs the emulator is held to, bundled in one data file.

`specs/machinelearningservices.json` holds the files of ../shared/specs/machinelearningservices
(copied from Azure/azure-rest-api-specs, upstream paths and commits in shared/specs/README.md)
as {"files": {"<upstream path>": "<the file's exact text>"}}: one file, because their upstream
paths are longer than the 99 characters automake's default tar format keeps in the dist.
unpack(DIR) writes them back at DIR/<upstream path> (byte for byte) and returns the folder of
the 2025-12-01 swagger.  Rebuild the bundle with:
    python3 emu_specs.py --build ../shared/specs/machinelearningservices tests/emulators/specs/machinelearningservices.json
"""
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
BUNDLE = os.path.join(HERE, "specs", "machinelearningservices.json")
SPEC_DIR_REL = "specification/machinelearningservices/resource-manager/Microsoft.MachineLearningServices/stable/2025-12-01"


def unpack(dest):
    with open(BUNDLE, encoding="utf-8") as f:
        b = json.load(f)
    for rel, text in b["files"].items():
        p = os.path.join(dest, rel)
        if os.path.exists(p):
            continue
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p + ".tmp", "w", encoding="utf-8", newline="") as f:
            f.write(text)
        os.replace(p + ".tmp", p)
    return os.path.join(dest, SPEC_DIR_REL)


def build(src, out):
    files = {}
    for root, dirs, names in os.walk(src):
        dirs.sort()
        for n in sorted(names):
            if n.endswith(".json"):
                p = os.path.join(root, n)
                with open(p, encoding="utf-8", newline="") as f:
                    files[os.path.relpath(p, src)] = f.read()
    with open(out, "w", encoding="utf-8") as f:
        json.dump({"about": "files of ../shared/specs/machinelearningservices (Azure/azure-rest-api-specs, "
                            "MIT); upstream paths and commits: /work/shared/specs/README.md",
                   "files": files}, f, indent=0, sort_keys=True)
        f.write("\n")
    return len(files)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--build":
        print("%d files" % build(sys.argv[2], sys.argv[3]))
    else:
        sys.exit(__doc__)
