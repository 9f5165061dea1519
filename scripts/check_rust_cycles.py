#!/usr/bin/env python3
"""Report import cycles among the crate's modules (files under src/), stdlib only.

Each file is one module (src/lib.rs the crate root, src/a/mod.rs and src/a.rs the module
`a`). A module depends on another when its code names a path into it: `use crate::...`,
`use super::...`, `use self::...`, a child module's name (`child::item`) or any such path
written inline (`crate::cancel::requested()`). Re-exports (`pub use`) are followed to the
module that defines the item, and are not edges of the re-exporting module. Test code is
excluded: every item under `#[cfg(test)]` (the `mod tests { ... }` blocks, `mod tests;` and
the files they declare, `src/testing.rs`). Any cycle, of any length, is reported; the exit
status is 1 when there is one.

Usage: python scripts/check_rust_cycles.py [SRC_DIR] [-v]   (-v also prints every edge)
"""

import re
import sys
from pathlib import Path

IDENT = r"[A-Za-z_][A-Za-z0-9_]*"


def strip_comments_and_strings(text):
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif text.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if text.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif text.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
        elif (
            c == "r"
            and re.match(r'r#*"', text[i : i + 4])
            and not re.match(r"\w", text[i - 1 : i] or " ")
        ):
            m = re.match(r'r(#*)"', text[i:])
            end = text.find('"' + m.group(1), i + len(m.group(0)))
            out.append('""')
            i = n if end < 0 else end + 1 + len(m.group(1))
        elif c == '"':
            i += 1
            while i < n and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
            out.append('""')
            i += 1
        elif c == "'" and re.match(r"'(\\.|[^\\'])'|'\\u\{[0-9a-fA-F]+\}'", text[i : i + 12]):
            m = re.match(r"'(\\.|[^\\'])'|'\\u\{[0-9a-fA-F]+\}'", text[i : i + 12])
            out.append("' '")
            i += len(m.group(0))
        else:
            out.append(c)
            i += 1
    return "".join(out)


def item_end(code, start):
    """End of the item that starts at `start`: its `;` or its closing brace."""
    depth, i = 0, start
    while i < len(code):
        c = code[i]
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
            if depth == 0 and c == "}":
                return i + 1
        elif c == ";" and depth == 0:
            return i + 1
        i += 1
    return len(code)


CFG_TEST = re.compile(r"#\[cfg\(test\)\]")


def remove_test_items(code):
    """Drop every item under #[cfg(test)]; return the code and the names of `mod x;` so removed."""
    test_mods = set()
    while True:
        m = CFG_TEST.search(code)
        if not m:
            return code, test_mods
        i = m.end()
        while True:  # further attributes of the same item
            a = re.match(r"\s*#\[", code[i:])
            if not a:
                break
            i = item_end(code, i + a.end() - 1)
        mm = re.match(r"\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+(" + IDENT + r")\s*;", code[i:])
        if mm:
            test_mods.add(mm.group(1))
        code = code[: m.start()] + " " + code[item_end(code, i) :]


def expand_use(tree):
    """`a::{b, c::{d as e, self}}` -> [['a','b'], ['a','c','d'], ['a','c']]."""
    tree = re.sub(r"\s+as\s+" + IDENT, "", tree)  # aliases: the path is what counts
    tree = re.sub(r"\s+", "", tree)
    paths = []

    def walk(s, prefix):
        parts, depth, cur = [], 0, ""
        for ch in s:
            if ch == "," and depth == 0:
                parts.append(cur)
                cur = ""
                continue
            depth += ch == "{"
            depth -= ch == "}"
            cur += ch
        parts.append(cur)
        for part in filter(None, parts):
            b = part.find("{")
            if b >= 0:
                head = [x for x in part[:b].split("::") if x]
                walk(part[b + 1 : part.rindex("}")], prefix + head)
            else:
                segs = [x for x in part.split("::") if x]
                if segs and segs[-1] in ("self", "*"):
                    segs = segs[:-1]
                paths.append(prefix + segs)

    walk(tree, [])
    return paths


def module_files(src):
    mods = {}
    for f in sorted(src.rglob("*.rs")):
        rel = f.relative_to(src).with_suffix("").parts
        if rel == ("lib",):
            path = ()
        elif rel[-1] == "mod":
            path = rel[:-1]
        else:
            path = rel
        mods[path] = f
    return mods


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("-")]
    verbose = "-v" in sys.argv
    src = Path(args[0]) if args else Path(__file__).resolve().parent.parent / "src"
    files = module_files(src)
    code, reexports, test_only = {}, {}, set()
    for path, f in files.items():
        c, test_mods = remove_test_items(strip_comments_and_strings(f.read_text()))
        code[path] = c
        test_only.update((*path, t) for t in test_mods)
    # a module is test-only when it or an ancestor was declared under #[cfg(test)]
    test_only = {p for p in files if any(p[:k] in test_only for k in range(1, len(p) + 1))}

    def absolute(mod, segs):
        segs = list(segs)
        base = list(mod)
        if segs and segs[0] == "crate":
            return segs[1:]
        if segs and segs[0] == "self":
            return base + segs[1:]
        if segs and segs[0] == "super":
            while segs and segs[0] == "super":
                base, segs = base[:-1], segs[1:]
            return base + segs
        if segs and tuple(base + segs[:1]) in files:
            return base + segs  # a child module named without `self::`
        return None

    uses = {}
    for path, c in code.items():
        found = []
        for m in re.finditer(r"\b(pub(?:\([^)]*\))?\s+)?use\s+([^;]*);", c):
            for segs in expand_use(m.group(2)):
                found.append((bool(m.group(1)), segs))
        inline = re.sub(r"\b(?:pub(?:\([^)]*\))?\s+)?use\s+[^;]*;", " ", c)
        for m in re.finditer(r"(?<![\w:])(" + IDENT + r"(?:::" + IDENT + r")+)", inline):
            found.append((False, m.group(1).split("::")))
        uses[path] = []
        for public, segs in found:
            if (
                segs[0] not in ("crate", "self", "super")
                and tuple(list(path) + segs[:1]) not in files
            ):
                continue  # an external crate, a type's associated item, or a local name
            full = absolute(path, segs)
            if full is None:
                continue
            if public:
                reexports.setdefault(path, {})[full[-1]] = full
            uses[path].append(full)

    def resolve(full, seen=()):
        for k in range(len(full), -1, -1):
            mod = tuple(full[:k])
            if mod in files:
                rest = full[k:]
                if rest and rest[0] in reexports.get(mod, {}) and (mod, rest[0]) not in seen:
                    target = reexports[mod][rest[0]]
                    return resolve(target + rest[1:], (*seen, (mod, rest[0])))
                return mod
        return ()

    edges = {p: set() for p in files if p not in test_only}
    reexported = {p: {tuple(v) for v in r.values()} for p, r in reexports.items()}
    for path in edges:
        for full in uses[path]:
            if tuple(full) in reexported.get(path, set()):
                continue  # the re-export itself is not an edge of the facade
            target = resolve(full)
            if target != path and target in edges:
                edges[path].add(target)

    def name(p):
        return "crate" if not p else "::".join(p)

    if verbose:
        for p in sorted(edges):
            print(f"{name(p)} -> {', '.join(sorted(name(t) for t in edges[p])) or '-'}")

    # strongly connected components (Tarjan); each with more than one module holds a cycle
    index, low, stack, on, sccs, counter = {}, {}, [], set(), [], [0]
    sys.setrecursionlimit(10000)

    def connect(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                sccs.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            connect(v)

    def one_cycle(comp):
        members = set(comp)
        start = comp[0]
        prev, frontier = {start: None}, [start]
        while frontier:
            nxt = []
            for v in frontier:
                for w in sorted(edges[v] & members):
                    if w == start:
                        cyc = [v]
                        while prev[cyc[-1]] is not None:
                            cyc.append(prev[cyc[-1]])
                        return [*list(reversed(cyc)), start]
                    if w not in prev:
                        prev[w] = v
                        nxt.append(w)
            frontier = nxt
        return comp

    print(
        f"{len(edges)} non-test modules, {sum(map(len, edges.values()))} edges, "
        f"{len(files) - len(edges)} test-only files skipped"
    )
    for comp in sccs:
        print(f"cycle among {len(comp)} modules: {' -> '.join(name(p) for p in one_cycle(comp))}")
        print(f"  all in this cycle: {', '.join(name(p) for p in comp)}")
    if sccs:
        return 1
    print("no cycles")
    return 0


if __name__ == "__main__":
    sys.exit(main())
