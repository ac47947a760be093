"""A small swagger 2.0 JSON-body validator (Python 3 stdlib only).

Supports what the Azure ML specs use: $ref (internal, and to other files next to the spec;
a reference to a file that is not here, such as the common-types, validates anything and is
counted in Spec.unresolved), allOf, required, type, enum, format (date-time, int32/int64,
uuid, duration), discriminator (a base with "discriminator" validated as the subtype whose
x-ms-discriminator-value, or definition name, matches), additionalProperties where declared,
x-nullable (null allowed unless x-nullable: false, as AutoRest reads it), min/max, minLength/maxLength, pattern, minItems/maxItems.  In request mode,
readOnly properties are ignored (ARM ignores them) and not required.

    spec = Spec([path_of_swagger, ...])
    op = spec.find_operation("PUT", "/subscriptions/.../computes/x")   # or None
    errs = spec.validate_request(op, body)      # list of "where: what" strings
    errs = spec.validate_response(op, 200, body)
"""
import json
import os
import re

_DT = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?$", re.I)
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.I)
_DUR = re.compile(r"^-?P(?=\d|T\d)(\d+Y)?(\d+M)?(\d+W)?(\d+D)?(T(?=\d)(\d+H)?(\d+M)?(\d+(\.\d+)?S)?)?$")
_DUR_TS = re.compile(r"^(\d+\.)?\d{1,2}:\d{2}:\d{2}(\.\d+)?$")  # .NET TimeSpan, accepted by the service


class Spec:
    def __init__(self, paths):
        self.docs = {}
        self.unresolved = set()
        self.ops = []  # (method, regex, template, op, doc_path)
        for p in paths:
            p = os.path.abspath(p)
            doc = self._load(p)
            for tmpl, item in doc.get("paths", {}).items():
                shared = item.get("parameters", [])
                rx = "^" + "/".join(
                    "[^/]+" if re.fullmatch(r"\{[^}]+\}", seg) else re.escape(seg)
                    for seg in tmpl.split("/")) + "/?$"
                for m, op in item.items():
                    if m == "parameters":
                        continue
                    self.ops.append((m.upper(), re.compile(rx, re.I), tmpl,
                                     dict(op, _shared=shared, _doc=p)))
        # longest templates first so /computes/{n}/listNodes beats nothing else
        self.ops.sort(key=lambda t: -len(t[2]))
        self._children = {}
        for dp, doc in self.docs.items():
            for name, d in doc.get("definitions", {}).items():
                for part in d.get("allOf", []):
                    ref = part.get("$ref")
                    if ref:
                        tgt = self._ref_key(dp, ref)
                        if tgt:
                            self._children.setdefault(tgt, []).append((dp, name))

    def _load(self, p):
        if p not in self.docs:
            with open(p, encoding="utf-8") as f:
                self.docs[p] = json.load(f)
        return self.docs[p]

    def _ref_key(self, base, ref):
        file, _, frag = ref.partition("#")
        path = os.path.normpath(os.path.join(os.path.dirname(base), file)) if file else base
        if not os.path.exists(path):
            self.unresolved.add(file)
            return None
        return (path, frag)

    def resolve(self, base, ref):
        """(doc_path, schema) or (None, {}) for a reference that is not here."""
        key = self._ref_key(base, ref)
        if key is None:
            return None, {}
        path, frag = key
        node = self._load(path)
        for part in frag.strip("/").split("/"):
            if part:
                node = node[part.replace("~1", "/").replace("~0", "~")]
        return path, node

    def find_operation(self, method, path):
        for m, rx, tmpl, op in self.ops:
            if m == method.upper() and rx.match(path):
                return op
        return None

    def operation_by_id(self, op_id):
        for m, rx, tmpl, op in self.ops:
            if op.get("operationId") == op_id:
                return m, tmpl, op
        return None

    def _params(self, op):
        out = []
        for prm in list(op.get("_shared", [])) + list(op.get("parameters", [])):
            if "$ref" in prm:
                _, prm = self.resolve(op["_doc"], prm["$ref"])
            out.append(prm)
        return out

    def body_param(self, op):
        for prm in self._params(op):
            if prm.get("in") == "body":
                return prm
        return None

    def validate_request(self, op, body):
        prm = self.body_param(op)
        if prm is None:
            return []
        if body is None:
            return ["body: required"] if prm.get("required") else []
        return self.validate(op["_doc"], prm.get("schema", {}), body, "body", request=True)

    def response_schema(self, op, status):
        r = op.get("responses", {}).get(str(status))
        if r is None:
            return None, None
        if "$ref" in r:
            _, r = self.resolve(op["_doc"], r["$ref"])
        return op["_doc"], r.get("schema")

    def validate_response(self, op, status, body):
        r = op.get("responses", {})
        if str(status) not in r and not (int(status) >= 400 and "default" in r):
            return ["status %s: not a response the operation declares (%s)" % (status, ", ".join(r))]
        doc, schema = self.response_schema(op, status if str(status) in r else "default")
        if schema is None:
            return [] if body in (None, "", {}) else []
        return self.validate(doc, schema, body, "response", request=False)

    # ---- the validator ---------------------------------------------------------------------
    def validate(self, doc, schema, value, where, request):
        errs = []
        self._v(doc, schema, value, where, request, errs, 0)
        return errs

    def _deref(self, doc, schema):
        seen = 0
        while isinstance(schema, dict) and "$ref" in schema and seen < 50:
            ndoc, target = self.resolve(doc, schema["$ref"])
            if ndoc is None:
                return None, {}
            # sibling keywords of $ref (x-nullable, readOnly) stay with the reference
            extra = {k: v for k, v in schema.items() if k != "$ref" and k in ("x-nullable", "readOnly")}
            doc, schema = ndoc, dict(target, **extra) if extra else target
            seen += 1
        return doc, schema

    def _def_name(self, doc, schema):
        for name, d in self.docs[doc].get("definitions", {}).items():
            if d is schema:
                return name
        return None

    def _subtype(self, doc, base_name, value_disc):
        """The definition below base_name (by allOf, transitively) whose discriminator value is
        value_disc."""
        todo = [(doc, "/definitions/" + base_name)]
        seen = set()
        while todo:
            key = todo.pop()
            if key in seen:
                continue
            seen.add(key)
            for cdoc, cname in self._children.get(key, []):
                cdef = self.docs[cdoc]["definitions"][cname]
                if cdef.get("x-ms-discriminator-value", cname) == value_disc:
                    return cdoc, cdef
                todo.append((cdoc, "/definitions/" + cname))
        return None, None

    def _v(self, doc, schema, value, where, request, errs, depth):
        if depth > 60:
            return
        doc, schema = self._deref(doc, schema)
        if doc is None or not isinstance(schema, dict) or not schema:
            return
        if value is None:
            # AutoRest's rule, which Microsoft's own examples follow: a value may be null
            # unless the schema says x-nullable: false
            if schema.get("x-nullable") is False:
                errs.append("%s: null is not allowed" % where)
            return
        # discriminated base: validate as the named subtype (which includes the base by allOf)
        disc = schema.get("discriminator")
        if disc and isinstance(value, dict) and "_in_subtype" not in schema:
            dv = value.get(disc)
            if dv is None:
                errs.append("%s: the discriminator '%s' is required" % (where, disc))
                return
            name = self._def_name(doc, schema)
            sdoc, sub = self._subtype(doc, name, dv) if name else (None, None)
            if sub is not None:
                self._v(sdoc, sub, value, where, request, errs, depth + 1)
                return
            if name and schema.get("x-ms-discriminator-value", name) != dv:
                errs.append("%s: unknown %s '%s'" % (where, disc, dv))
                return
        for part in schema.get("allOf", []):
            pdoc, p = self._deref(doc, part)
            if pdoc is None:
                continue
            if p.get("discriminator"):
                p = dict(p, _in_subtype=True)  # already chosen: do not dispatch again
            self._v(pdoc, p, value, where, request, errs, depth + 1)
        t = schema.get("type")
        if t is None and ("properties" in schema or "additionalProperties" in schema):
            t = "object"
        if t == "object" or (t is None and isinstance(value, dict) and schema.get("properties")):
            if not isinstance(value, dict):
                errs.append("%s: expected an object, got %s" % (where, _tn(value)))
                return
            props = schema.get("properties", {})
            for req in schema.get("required", []):
                if req not in value:
                    rdoc, rs = self._deref(doc, props.get(req, {}))
                    ro = props.get(req, {}).get("readOnly") or (rs or {}).get("readOnly")
                    if request and ro:
                        continue
                    errs.append("%s: '%s' is required" % (where, req))
            allowed = set(props)
            for part in schema.get("allOf", []):
                allowed |= self._all_props(doc, part)
            for k, v in value.items():
                if k in props:
                    pdoc, ps = self._deref(doc, props[k])
                    if request and (props[k].get("readOnly") or (ps or {}).get("readOnly")):
                        continue
                    self._v(doc, props[k], v, "%s.%s" % (where, k), request, errs, depth + 1)
                elif k not in allowed and "*" not in allowed:
                    ap = schema.get("additionalProperties")
                    if ap is False:
                        errs.append("%s: '%s' is not a property of this object" % (where, k))
                    elif isinstance(ap, dict):
                        self._v(doc, ap, v, "%s.%s" % (where, k), request, errs, depth + 1)
        elif t == "array":
            if not isinstance(value, list):
                errs.append("%s: expected an array, got %s" % (where, _tn(value)))
                return
            if "minItems" in schema and len(value) < schema["minItems"]:
                errs.append("%s: fewer than %d items" % (where, schema["minItems"]))
            if "maxItems" in schema and len(value) > schema["maxItems"]:
                errs.append("%s: more than %d items" % (where, schema["maxItems"]))
            for i, v in enumerate(value):
                self._v(doc, schema.get("items", {}), v, "%s[%d]" % (where, i), request, errs, depth + 1)
        elif t == "string":
            if not isinstance(value, str):
                errs.append("%s: expected a string, got %s" % (where, _tn(value)))
                return
            fmt = schema.get("format")
            if fmt == "date-time" and not _DT.match(value):
                errs.append("%s: '%s' is not a date-time" % (where, value))
            elif fmt == "uuid" and not _UUID.match(value):
                errs.append("%s: '%s' is not a uuid" % (where, value))
            elif fmt == "duration" and not (_DUR.match(value) or _DUR_TS.match(value)):
                errs.append("%s: '%s' is not an ISO 8601 duration" % (where, value))
            if "minLength" in schema and len(value) < schema["minLength"]:
                errs.append("%s: shorter than %d" % (where, schema["minLength"]))
            if "maxLength" in schema and len(value) > schema["maxLength"]:
                errs.append("%s: longer than %d" % (where, schema["maxLength"]))
            if "pattern" in schema:
                try:
                    if not re.search(schema["pattern"], value):
                        errs.append("%s: '%s' does not match %s" % (where, value, schema["pattern"]))
                except re.error:
                    pass
        elif t in ("integer", "number"):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                    (t == "integer" and isinstance(value, float) and not value.is_integer()):
                errs.append("%s: expected %s, got %s" % (where, "an integer" if t == "integer"
                                                         else "a number", _tn(value)))
                return
            if "minimum" in schema and value < schema["minimum"]:
                errs.append("%s: %s is below the minimum %s" % (where, value, schema["minimum"]))
            if "maximum" in schema and value > schema["maximum"]:
                errs.append("%s: %s is above the maximum %s" % (where, value, schema["maximum"]))
            if schema.get("format") == "int32" and not -2**31 <= value < 2**31:
                errs.append("%s: %s does not fit int32" % (where, value))
        elif t == "boolean":
            if not isinstance(value, bool):
                errs.append("%s: expected a boolean, got %s" % (where, _tn(value)))
                return
        if "enum" in schema and value not in schema["enum"]:
            errs.append("%s: '%s' is not one of %s" % (where, value, ", ".join(map(str, schema["enum"]))))

    def _all_props(self, doc, part, depth=0):
        doc, s = self._deref(doc, part)
        if doc is None or depth > 30:
            return set(["*"])
        out = set(s.get("properties", {}))
        for p in s.get("allOf", []):
            out |= self._all_props(doc, p, depth + 1)
        return out


def _tn(v):
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
            int: "a number", float: "a number"}.get(type(v), type(v).__name__)
