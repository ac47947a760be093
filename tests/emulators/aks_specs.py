"""Build tests/emulators/specs/aks.json: the subset of the Kubernetes API server's OpenAPI v2
that the aks emulator serves, taken from kubernetes-client-python's swagger.json.unprocessed
(upstream path kept in "upstream"; the full file is 4 MB).  The paths below and every
definition they reach ($ref, transitively) are copied unchanged.

    python3 tests/emulators/aks_specs.py /work/shared/specs/kubernetes tests/emulators/specs/aks.json
"""
import json
import os
import sys

UPSTREAM = "kubernetes-client-python/kubernetes/swagger.json.unprocessed"
PATHS = ["/api/v1/namespaces", "/api/v1/namespaces/{name}",
         "/apis/batch/v1/namespaces/{namespace}/jobs", "/apis/batch/v1/namespaces/{namespace}/jobs/{name}",
         "/api/v1/namespaces/{namespace}/pods", "/api/v1/namespaces/{namespace}/pods/{name}",
         "/api/v1/namespaces/{namespace}/pods/{name}/log"]


def refs(o, out):
    if isinstance(o, dict):
        r = o.get("$ref")
        if isinstance(r, str) and r.startswith("#/"):
            out.add(tuple(r[2:].split("/", 1)))
        for v in o.values():
            refs(v, out)
    elif isinstance(o, list):
        for v in o:
            refs(v, out)


def build(src, dst):
    with open(os.path.join(src, UPSTREAM), encoding="utf-8") as f:
        full = json.load(f)
    paths = {p: full["paths"][p] for p in PATHS}
    want, done = set(), {"definitions": {}, "parameters": {}}
    refs(paths, want)
    while want:
        sect, n = want.pop()
        if n in done[sect]:
            continue
        done[sect][n] = full[sect][n]
        refs(done[sect][n], want)
    doc = {"swagger": full["swagger"], "info": full["info"], "paths": paths,
           "parameters": dict(sorted(done["parameters"].items())),
           "definitions": dict(sorted(done["definitions"].items())),
           "x-ctarget-about": "subset of %s (Kubernetes API server OpenAPI v2): the paths the aks emulator "
                              "serves and every definition they reach, unchanged; built by tests/emulators/aks_specs.py"
                              % UPSTREAM}
    with open(dst, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1, sort_keys=False)
        f.write("\n")


if __name__ == "__main__":
    build(sys.argv[1], sys.argv[2])
