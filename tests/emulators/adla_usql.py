#!/usr/bin/env python3
"""A small U-SQL subset interpreter: what the emulated Data Lake Analytics runs for a job, as a
separate local process per job (emu_svc_adla.py starts it; stdlib only).

    adla_usql.py --store ROOT --script FILE --result OUT.json [--compile-only]

The subset:
    DECLARE @name type = expr;            expr: "string" | number | true/false | @var | a + b
    @rows = EXTRACT col type, ... FROM path USING Extractors.Csv(skipFirstNRows: N) | Tsv() | Text(delimiter: ',');
    @x = SELECT item, ... FROM @rows [WHERE pred] [GROUP BY col, ...];
          item: col [AS alias] | COUNT(*) [AS alias] | SUM(col) [AS alias] | literal AS alias
          pred: col OP literal|@var (OP: == != < <= > >=), joined by AND/OR/&&/||, NOT/!, ( )
    OUTPUT @x TO path USING Outputters.Csv(outputHeader: true) | Tsv() | Text(delimiter: ',');
Comments: // line and /* block */.  Paths: "/a/b" (the default store's root), "adl://host/a/b"
(the default store: the host is ignored) or relative "a/b" (against the store's root, as the
service resolves them).  Types: string int long short byte double float decimal bool DateTime
Guid, each optionally nullable (int?).

Compilation (both modes) checks syntax and names; errors are reported like the service:
E_CSC_USER_SYNTAXERROR (with lineNumber), E_CSC_USER_VARIABLENOTDECLARED / ...
Execution reads and writes files under ROOT.  The result file holds
{"ok": bool, "errors": [{errorId, message, lineNumber?, severity}], "outputs": [paths]};
progress goes to stdout (the job's interpreter log).
"""
import argparse
import csv
import io
import json
import os
import re
import sys
import tempfile

TYPES = {"string": str, "int": int, "long": int, "short": int, "byte": int, "double": float,
         "float": float, "decimal": float, "bool": bool, "datetime": str, "guid": str}
KEYWORDS = {"DECLARE", "EXTRACT", "FROM", "USING", "SELECT", "WHERE", "GROUP", "BY", "OUTPUT",
            "TO", "AS", "AND", "OR", "NOT"}


class UError(Exception):
    def __init__(self, error_id, message, line=None):
        Exception.__init__(self, message)
        self.error_id, self.message, self.line = error_id, message, line


def syntax(msg, line):
    return UError("E_CSC_USER_SYNTAXERROR", "syntax error. %s" % msg, line)


# ---- lexer --------------------------------------------------------------------------------
TOKEN_RX = re.compile(r"""
    (?P<ws>\s+)
  | (?P<lcomment>//[^\n]*)
  | (?P<bcomment>/\*.*?\*/)
  | (?P<string>@?"(?:[^"\\\n]|\\.)*")
  | (?P<number>\d+(?:\.\d+)?)
  | (?P<var>@[A-Za-z_][A-Za-z0-9_]*)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*\??)
  | (?P<op>==|!=|<=|>=|&&|\|\||[<>=!+\-*(),;:])
""", re.X | re.S)


def lex(text):
    toks, pos, line = [], 0, 1
    while pos < len(text):
        m = TOKEN_RX.match(text, pos)
        if not m:
            raise syntax("Unexpected character '%s'." % text[pos], line)
        kind, val = m.lastgroup, m.group(0)
        if kind == "string":
            raw = val.startswith("@")
            body = val[2:-1] if raw else val[1:-1]
            if not raw:
                body = re.sub(r"\\(.)", lambda mm: {"n": "\n", "t": "\t", "\\": "\\", '"': '"'}.get(
                    mm.group(1), mm.group(1)), body)
            toks.append(("string", body, line))
        elif kind not in ("ws", "lcomment", "bcomment"):
            toks.append((kind, val, line))
        line += val.count("\n")
        pos = m.end()
    toks.append(("eof", "", line))
    return toks


class Parser:
    def __init__(self, toks):
        self.t, self.i = toks, 0

    def peek(self, k=0):
        return self.t[min(self.i + k, len(self.t) - 1)]

    def next(self):
        tok = self.peek()
        self.i += 1
        return tok

    def kw(self, word):
        tok = self.peek()
        return tok[0] == "ident" and tok[1].upper() == word

    def expect_kw(self, word):
        tok = self.next()
        if not (tok[0] == "ident" and tok[1].upper() == word):
            raise syntax("Expected one of: %s. Found '%s'." % (word, tok[1] or "end of script"), tok[2])
        return tok

    def expect_op(self, op):
        tok = self.next()
        if tok[0] != "op" or tok[1] != op:
            raise syntax("Expected one of: '%s'. Found '%s'." % (op, tok[1] or "end of script"), tok[2])
        return tok

    def ident(self, what="identifier"):
        tok = self.next()
        if tok[0] != "ident" or tok[1].upper() in KEYWORDS:
            raise syntax("Expected one of: %s. Found '%s'." % (what, tok[1] or "end of script"), tok[2])
        return tok[1]

    # statements
    def script(self):
        out = []
        while self.peek()[0] != "eof":
            out.append(self.statement())
        return out

    def statement(self):
        tok = self.peek()
        line = tok[2]
        if tok[0] == "ident" and tok[1].upper() == "DECLARE":
            self.next()
            var = self.next()
            if var[0] != "var":
                raise syntax("Expected one of: variable name. Found '%s'." % var[1], var[2])
            typ = None
            if self.peek()[0] == "ident":
                typ = self.next()[1]
                if typ.rstrip("?").lower() not in TYPES:
                    raise UError("E_CSC_USER_INVALIDTYPE", "The type '%s' is not a U-SQL type." % typ, line)
            self.expect_op("=")
            expr = self.expr()
            self.end(line)
            return ("declare", line, var[1], typ, expr)
        if tok[0] == "var":
            self.next()
            self.expect_op("=")
            if self.kw("EXTRACT"):
                self.next()
                cols = []
                while True:
                    name = self.ident("column name")
                    typ = self.next()
                    if typ[0] != "ident" or typ[1].rstrip("?").lower() not in TYPES:
                        raise syntax("Expected one of: column type. Found '%s'." % typ[1], typ[2])
                    cols.append((name, typ[1].rstrip("?").lower()))
                    if self.peek()[1] != ",":
                        break
                    self.next()
                self.expect_kw("FROM")
                src = self.expr()
                self.expect_kw("USING")
                fmt = self.udo("Extractors")
                self.end(line)
                return ("extract", line, tok[1], cols, src, fmt)
            if self.kw("SELECT"):
                self.next()
                items = []
                while True:
                    items.append(self.select_item())
                    if self.peek()[1] != ",":
                        break
                    self.next()
                self.expect_kw("FROM")
                src = self.next()
                if src[0] != "var":
                    raise syntax("Expected one of: rowset variable. Found '%s'." % src[1], src[2])
                where = group = None
                if self.kw("WHERE"):
                    self.next()
                    where = self.pred()
                if self.kw("GROUP"):
                    self.next()
                    self.expect_kw("BY")
                    group = [self.ident("column name")]
                    while self.peek()[1] == ",":
                        self.next()
                        group.append(self.ident("column name"))
                self.end(line)
                return ("select", line, tok[1], items, src[1], where, group)
            nt = self.peek()
            raise syntax("Expected one of: EXTRACT SELECT. Found '%s'." % nt[1], nt[2])
        if tok[0] == "ident" and tok[1].upper() == "OUTPUT":
            self.next()
            src = self.next()
            if src[0] != "var":
                raise syntax("Expected one of: rowset variable. Found '%s'." % src[1], src[2])
            self.expect_kw("TO")
            dst = self.expr()
            self.expect_kw("USING")
            fmt = self.udo("Outputters")
            self.end(line)
            return ("output", line, src[1], dst, fmt)
        raise syntax("Expected one of: DECLARE OUTPUT @variable. Found '%s'." % (tok[1] or "end of script"), tok[2])

    def end(self, line):
        tok = self.next()
        if tok[0] == "eof":
            raise syntax("Final statement did not end with a semicolon.", line)
        if tok[1] != ";":
            raise syntax("Expected one of: ';'. Found '%s'." % tok[1], tok[2])

    def udo(self, family):
        tok = self.next()
        if tok[0] != "ident" or "." not in tok[1]:
            raise syntax("Expected one of: %s.Csv() %s.Tsv() %s.Text(). Found '%s'." % (
                family, family, family, tok[1]), tok[2])
        fam, _, kind = tok[1].partition(".")
        if fam != family or kind not in ("Csv", "Tsv", "Text"):
            raise UError("E_CSC_USER_INVALIDCSHARP", "'%s' is not a built-in %s (Csv, Tsv, Text)."
                         % (tok[1], family[:-1].lower()), tok[2])
        self.expect_op("(")
        args = {}
        while self.peek()[1] != ")":
            name = self.ident("parameter name")
            self.expect_op(":")
            args[name] = self.atom()
            if self.peek()[1] == ",":
                self.next()
        self.expect_op(")")
        return (kind, args)

    def select_item(self):
        tok = self.peek()
        if tok[0] == "ident" and tok[1].upper() in ("COUNT", "SUM") and self.peek(1)[1] == "(":
            self.next()
            self.next()
            if tok[1].upper() == "COUNT" and self.peek()[1] == "*":
                self.next()
                arg = None
            else:
                arg = self.ident("column name")
            self.expect_op(")")
            alias = None
            if self.kw("AS"):
                self.next()
                alias = self.ident("alias")
            return ("agg", tok[1].upper(), arg, alias or (tok[1].upper() if arg is None else "%s_%s" % (tok[1].upper(), arg)))
        if tok[0] in ("string", "number"):
            val = self.atom()
            self.expect_kw("AS")
            return ("const", val, self.ident("alias"))
        name = self.ident("column name")
        alias = name
        if self.kw("AS"):
            self.next()
            alias = self.ident("alias")
        return ("col", name, alias)

    def atom(self):
        tok = self.next()
        if tok[0] == "string":
            return ("lit", tok[1])
        if tok[0] == "number":
            return ("lit", float(tok[1]) if "." in tok[1] else int(tok[1]))
        if tok[0] == "op" and tok[1] == "-" and self.peek()[0] == "number":
            n = self.next()[1]
            return ("lit", -(float(n) if "." in n else int(n)))
        if tok[0] == "ident" and tok[1].lower() in ("true", "false"):
            return ("lit", tok[1].lower() == "true")
        if tok[0] == "var":
            return ("var", tok[1], tok[2])
        if tok[0] == "ident" and tok[1].upper() not in KEYWORDS:
            return ("col", tok[1], tok[2])
        raise syntax("Expected one of: expression. Found '%s'." % (tok[1] or "end of script"), tok[2])

    def expr(self):
        e = self.atom()
        while self.peek()[1] == "+":
            self.next()
            e = ("+", e, self.atom())
        return e

    def pred(self):
        e = self.pred_and()
        while self.kw("OR") or self.peek()[1] == "||":
            self.next()
            e = ("or", e, self.pred_and())
        return e

    def pred_and(self):
        e = self.pred_not()
        while self.kw("AND") or self.peek()[1] == "&&":
            self.next()
            e = ("and", e, self.pred_not())
        return e

    def pred_not(self):
        if self.kw("NOT") or self.peek()[1] == "!":
            self.next()
            return ("not", self.pred_not())
        if self.peek()[1] == "(":
            self.next()
            e = self.pred()
            self.expect_op(")")
            return e
        left = self.expr()
        op = self.next()
        if op[1] not in ("==", "!=", "<", "<=", ">", ">="):
            if op[1] == "=":
                raise syntax("Expected one of: '==' (U-SQL compares with C# operators). Found '='.", op[2])
            raise syntax("Expected one of: == != < <= > >=. Found '%s'." % (op[1] or "end of script"), op[2])
        return ("cmp", op[1], left, self.expr())


# ---- evaluation ---------------------------------------------------------------------------
class Interp:
    def __init__(self, root, execute):
        self.root = os.path.realpath(root)
        self.execute = execute
        self.vars = {}       # @name -> value
        self.rowsets = {}    # @name -> (columns [(name, type)], rows [dict])
        self.outputs = []

    def value(self, e, row=None, line=None):
        k = e[0]
        if k == "lit":
            return e[1]
        if k == "var":
            if e[1] not in self.vars:
                raise UError("E_CSC_USER_VARIABLENOTDECLARED",
                             "The variable '%s' has not been declared." % e[1], e[2])
            return self.vars[e[1]]
        if k == "col":
            if row is None:
                raise UError("E_CSC_USER_INVALIDCOLUMNREFERENCE",
                             "A column reference '%s' is not allowed here." % e[1], e[2])
            if e[1] not in row:
                raise UError("E_CSC_USER_INVALIDCOLUMNREFERENCE",
                             "The column '%s' does not exist (columns: %s)." % (e[1], ", ".join(row)), e[2])
            return row[e[1]]
        if k == "+":
            a, b = self.value(e[1], row, line), self.value(e[2], row, line)
            if isinstance(a, str) or isinstance(b, str):
                return "%s%s" % ("" if a is None else a, "" if b is None else b)
            return a + b
        raise AssertionError(k)

    def test(self, p, row, line):
        k = p[0]
        if k == "and":
            return self.test(p[1], row, line) and self.test(p[2], row, line)
        if k == "or":
            return self.test(p[1], row, line) or self.test(p[2], row, line)
        if k == "not":
            return not self.test(p[1], row, line)
        a, b = self.value(p[2], row, line), self.value(p[3], row, line)
        if a is None or b is None:
            return p[1] == "!=" if (a is None) != (b is None) else p[1] == "=="
        if isinstance(a, str) != isinstance(b, str):
            raise UError("E_CSC_USER_INCOMPATIBLETYPES",
                         "Operator '%s' cannot be applied to operands of type %s and %s." % (
                             p[1], type(a).__name__, type(b).__name__), line)
        return {"==": a == b, "!=": a != b, "<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[p[1]]

    def path(self, e, line):
        p = self.value(e, None, line)
        if not isinstance(p, str):
            raise UError("E_CSC_USER_INVALIDFILEPATH", "A file path must be a string.", line)
        m = re.match(r"^(?:adl|swebhdfs|wasb)://[^/]*(/.*)?$", p)
        if m:
            p = m.group(1) or "/"
        full = os.path.realpath(os.path.join(self.root, p.lstrip("/")))
        if full != self.root and not full.startswith(self.root + os.sep):
            raise UError("E_CSC_USER_INVALIDFILEPATH", "The path '%s' leaves the store." % p, line)
        return p, full

    def run(self, stmts):
        for st in stmts:
            getattr(self, "s_" + st[0])(*st[1:])

    def s_declare(self, line, name, typ, expr):
        if name in self.vars:
            raise UError("E_CSC_USER_VARIABLEALREADYDECLARED",
                         "The variable '%s' has already been declared." % name, line)
        v = self.value(expr, None, line)
        if typ:
            t = TYPES[typ.rstrip("?").lower()]
            if t is str and not isinstance(v, str) or t in (int, float) and isinstance(v, str):
                raise UError("E_CSC_USER_INCOMPATIBLETYPES",
                             "Cannot assign a value of type %s to '%s' of type %s." % (
                                 type(v).__name__, name, typ), line)
        self.vars[name] = v

    @staticmethod
    def delim(kind, args):
        d = {"Csv": ",", "Tsv": "\t", "Text": ","}[kind]
        if "delimiter" in args:
            d = str(args["delimiter"][1])[:1] or d
        return d

    def s_extract(self, line, name, cols, src, fmt):
        shown, full = self.path(src, line)
        rows = []
        if self.execute:
            if not os.path.isfile(full):
                raise UError("E_STORE_USER_FILENOTFOUND", "File not found: '%s'." % shown, line)
            skip = int(fmt[1].get("skipFirstNRows", ("lit", 0))[1])
            with open(full, newline="", encoding="utf-8") as f:
                data = list(csv.reader(f, delimiter=self.delim(*fmt)))
            for n, rec in enumerate(data[skip:], start=skip + 1):
                if not rec:
                    continue
                if len(rec) != len(cols):
                    raise UError("E_RUNTIME_USER_EXTRACT_UNEXPECTED_NUMBER_OF_COLUMNS",
                                 "Unexpected number of columns in input record at line %d of '%s': "
                                 "expected %d, found %d." % (n, shown, len(cols), len(rec)), line)
                row = {}
                for (cn, ct), raw in zip(cols, rec):
                    try:
                        if TYPES[ct] is bool:
                            row[cn] = raw.strip().lower() == "true"
                        elif TYPES[ct] is str:
                            row[cn] = raw
                        else:
                            row[cn] = TYPES[ct](raw.strip()) if raw.strip() else None
                    except ValueError:
                        raise UError("E_RUNTIME_USER_EXTRACT_COLUMN_CONVERSION_INVALID_ERROR",
                                     "Invalid character when converting input record at line %d of '%s':"
                                     " column '%s' of type %s, value '%s'." % (n, shown, cn, ct, raw), line)
                rows.append(row)
            print("EXTRACT %s: %d rows from %s" % (name, len(rows), shown))
        self.rowsets[name] = (cols, rows)

    def s_select(self, line, name, items, src, where, group):
        if src not in self.rowsets:
            raise UError("E_CSC_USER_ROWSETVARIABLENOTDECLARED",
                         "The rowset variable '%s' has not been declared." % src, line)
        cols, rows = self.rowsets[src]
        colnames = [c[0] for c in cols]
        ctypes = dict(cols)
        for it in items:
            ref = it[1] if it[0] == "col" else it[2] if it[0] == "agg" else None
            if ref is not None and ref not in colnames:
                raise UError("E_CSC_USER_INVALIDCOLUMNREFERENCE",
                             "The column '%s' does not exist in %s (columns: %s)." % (ref, src, ", ".join(colnames)), line)
        for g in group or []:
            if g not in colnames:
                raise UError("E_CSC_USER_INVALIDCOLUMNREFERENCE",
                             "The column '%s' does not exist in %s (columns: %s)." % (g, src, ", ".join(colnames)), line)
        aggs = [it for it in items if it[0] == "agg"]
        if aggs or group:
            for it in items:
                if it[0] == "col" and it[1] not in (group or []):
                    raise UError("E_CSC_USER_NONAGGREGATEDCOLUMNREFERENCE",
                                 "Column '%s' must be in the GROUP BY clause or in an aggregate." % it[1], line)
        out_cols = []
        for it in items:
            if it[0] == "col":
                out_cols.append((it[2], ctypes[it[1]]))
            elif it[0] == "const":
                out_cols.append((it[2], "string" if isinstance(it[1][1], str) else "double"))
            else:
                out_cols.append((it[3], "long" if it[1] == "COUNT" else ctypes[it[2]]))
        out = []
        if self.execute:
            kept = [r for r in rows if where is None or self.test(where, r, line)]
            if aggs or group:
                groups = {}
                for r in kept:
                    groups.setdefault(tuple(r[g] for g in group or []), []).append(r)
                if not group and not groups:
                    groups[()] = []
                for key, rs in groups.items():
                    o = {}
                    for it in items:
                        if it[0] == "col":
                            o[it[2]] = rs[0][it[1]]
                        elif it[0] == "const":
                            o[it[2]] = it[1][1]
                        elif it[1] == "COUNT":
                            o[it[3]] = len(rs)
                        else:
                            o[it[3]] = sum(r[it[2]] or 0 for r in rs)
                    out.append(o)
            else:
                for r in kept:
                    out.append({(it[2]): (r[it[1]] if it[0] == "col" else it[1][1]) for it in items})
            print("SELECT %s: %d rows from %s" % (name, len(out), src))
        elif where is not None:
            self.check_pred(where, colnames, line)
        self.rowsets[name] = (out_cols, out)

    def check_pred(self, p, colnames, line):
        if p[0] in ("and", "or"):
            self.check_pred(p[1], colnames, line)
            self.check_pred(p[2], colnames, line)
        elif p[0] == "not":
            self.check_pred(p[1], colnames, line)
        else:
            for e in (p[2], p[3]):
                self.check_expr(e, colnames, line)

    def check_expr(self, e, colnames, line):
        if e[0] == "col" and e[1] not in colnames:
            raise UError("E_CSC_USER_INVALIDCOLUMNREFERENCE",
                         "The column '%s' does not exist (columns: %s)." % (e[1], ", ".join(colnames)), e[2])
        if e[0] == "var":
            self.value(e, None, line)
        if e[0] == "+":
            self.check_expr(e[1], colnames, line)
            self.check_expr(e[2], colnames, line)

    def s_output(self, line, src, dst, fmt):
        if src not in self.rowsets:
            raise UError("E_CSC_USER_ROWSETVARIABLENOTDECLARED",
                         "The rowset variable '%s' has not been declared." % src, line)
        shown, full = self.path(dst, line)
        if not self.execute:
            return
        cols, rows = self.rowsets[src]
        buf = io.StringIO()
        w = csv.writer(buf, delimiter=self.delim(*fmt), lineterminator="\n",
                       quoting=csv.QUOTE_MINIMAL)
        hdr = fmt[1].get("outputHeader")
        if hdr and hdr[1] is True:
            w.writerow([c[0] for c in cols])
        for r in rows:
            w.writerow(["" if r[c[0]] is None else fmt_value(r[c[0]]) for c in cols])
        os.makedirs(os.path.dirname(full), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(full), prefix=".usql-")
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(buf.getvalue())
        os.replace(tmp, full)
        self.outputs.append(shown)
        print("OUTPUT %s: %d rows to %s" % (src, len(rows), shown))


def fmt_value(v):
    if isinstance(v, bool):
        return "True" if v else "False"
    if isinstance(v, float) and v.is_integer():
        return "%d" % v
    return str(v)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", required=True)
    ap.add_argument("--script", required=True)
    ap.add_argument("--result", required=True)
    ap.add_argument("--compile-only", action="store_true")
    ap.add_argument("--delay", type=float, default=0, help="seconds the vertex takes (a long job)")
    a = ap.parse_args()
    with open(a.script, encoding="utf-8") as f:
        text = f.read()
    res = {"ok": True, "errors": [], "outputs": []}
    try:
        stmts = Parser(lex(text)).script()
        Interp(a.store, False).run(stmts)  # compile: names and types, no data
        if not a.compile_only:
            if a.delay:
                print("vertex running for %g s" % a.delay)
                sys.stdout.flush()
                import time
                time.sleep(a.delay)
            it = Interp(a.store, True)
            it.run(stmts)
            res["outputs"] = it.outputs
        print("%s: %d statements" % ("compiled" if a.compile_only else "done", len(stmts)))
    except UError as e:
        res["ok"] = False
        err = {"errorId": e.error_id, "message": e.message, "severity": "Error",
               "source": "USER", "description": e.message}
        if e.line is not None:
            err["lineNumber"] = e.line
        res["errors"].append(err)
        print("error %s%s: %s" % (e.error_id, " at line %d" % e.line if e.line else "", e.message))
    with open(a.result + ".tmp", "w") as f:
        json.dump(res, f)
    os.replace(a.result + ".tmp", a.result)
    sys.stdout.flush()
    return 0 if res["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
