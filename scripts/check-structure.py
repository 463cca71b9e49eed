#!/usr/bin/env python3
"""The shape of the code, checked in CI (issue 11): within each crate no two source files
import each other, directly or through others, and no source file holds more than
MAX_LINES lines before its tests.

Import circles are found on the file graph of each crate target (lib.rs, main.rs, each
src/bin/*.rs): a file depends on another when it names a path into it (`crate::a::b`,
`super::c`, `self::d`, a brace group `super::{e, f::G}`, or, in a parent, `child::`).
A parent declaring a child is not a dependency; a parent naming its child's items and the
child naming its parent's is a circle like any other. Test modules are left out.

Usage: scripts/check-structure.py [CRATE_DIR ...]   (default: every crate of the workspace)
Exits 1 and says where on any finding.
"""

import re
import subprocess
import sys
from pathlib import Path

MAX_LINES = 600

ROOT = Path(__file__).resolve().parent.parent
TEST_ATTR = re.compile(r"^\s*#\[cfg\(test\)\]", re.M)
MOD_DECL = re.compile(r"^\s*(#\[[^\]]*\]\s*)*(?:pub(?:\([a-z:]+\))?\s+)?mod\s+([a-z_0-9]+)\s*;", re.M)
PATH_REF = re.compile(r"\b(crate|super|self)((?:::(?:[A-Za-z_][A-Za-z_0-9]*|\*))+)")
BRACE_GROUP = re.compile(r"\b((?:crate|super|self)(?:::[a-z_0-9]+)*)::\{([^}]*)\}")


def code_before_tests(text):
    """The text up to the first `#[cfg(test)]`, comments removed."""
    m = TEST_ATTR.search(text)
    if m:
        text = text[: m.start()]
    return re.sub(r"//[^\n]*", "", text)


def child_file(parent_file, is_dir_owner, name):
    """Where `mod name;` in parent_file lives."""
    base = parent_file.parent if is_dir_owner else parent_file.parent / parent_file.stem
    for candidate in (base / f"{name}.rs", base / name / "mod.rs"):
        if candidate.is_file():
            return candidate
    return None


def module_tree(root_file):
    """{module path (tuple): file} of the target rooted at root_file, test modules excluded."""
    files = {(): root_file}
    pending = [((), root_file, True)]
    while pending:
        path, file, owns_dir = pending.pop()
        text = file.read_text()
        for m in MOD_DECL.finditer(code_before_tests(text)):
            if m.group(1) and "cfg(test)" in m.group(1):
                continue
            child = child_file(file, owns_dir, m.group(2))
            if child is None:
                continue
            files[path + (m.group(2),)] = child
            pending.append((path + (m.group(2),), child, child.name == "mod.rs"))
    return files


def resolve(files, path):
    """The longest prefix of path that is a file's module."""
    for k in range(len(path), -1, -1):
        if path[:k] in files:
            return path[:k]
    return ()


def edges_of(files):
    edges = {}
    for module, file in files.items():
        text = code_before_tests(file.read_text())
        # Brace groups name their prefix's children: `super::{a, B}` -> `super::a`, `super`.
        for prefix, group in BRACE_GROUP.findall(text):
            for item in (x.strip() for x in group.split(",")):
                first = re.split(r"::|\s", item)[0] if item else ""
                named = first if first and first[0].islower() and first != "self" else "_item"
                text += f"\n{prefix}::{named}"
        refs = PATH_REF.findall(text)
        deps = set()
        for anchor, rest in refs:
            names = tuple(x for x in rest.split("::") if x and x != "*")
            if anchor == "crate":
                base = ()
            elif anchor == "self":
                base = module
            else:
                base = module
                # `super::super::x`
                while names and names[0] == "super":
                    base, names = base[:-1], names[1:]
                base = base[:-1]
            target = resolve(files, base + names)
            if target != module:
                deps.add(target)
        # A parent naming its own children (`child::Item`, `pub use child::X`).
        for child_path in files:
            if child_path[:-1] == module and len(child_path) == len(module) + 1:
                if re.search(r"(?<![a-z_0-9:])" + child_path[-1] + r"::", text):
                    deps.add(child_path)
        edges[module] = deps
    return edges


def circles(edges):
    """Strongly connected components of more than one file (Tarjan, iterative)."""
    index, low, on_stack, stack, found = {}, {}, set(), [], []
    counter = 0
    for start in edges:
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            v, it = work[-1]
            advanced = False
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(edges.get(w, ())))))
                    advanced = True
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                component = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    component.append(w)
                    if w == v:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def crate_dirs():
    out = subprocess.run(
        ["cargo", "metadata", "--no-deps", "--format-version", "1", "--offline"],
        cwd=ROOT, check=True, capture_output=True, text=True,
    ).stdout
    import json

    return sorted({Path(p["manifest_path"]).parent for p in json.loads(out)["packages"]})


def targets(crate):
    src = crate / "src"
    roots = [src / "lib.rs", src / "main.rs"] + sorted((src / "bin").glob("*.rs"))
    return [r for r in roots if r.is_file()]


def shown(file):
    return file.relative_to(ROOT) if ROOT in file.parents else file


def name(module):
    return "::".join(module) or "(crate root)"


def main():
    dirs = [Path(d).resolve() for d in sys.argv[1:]] or crate_dirs()
    problems = 0
    for crate in dirs:
        seen = set()
        for root_file in targets(crate):
            files = module_tree(root_file)
            edges = edges_of(files)
            for component in circles(edges):
                problems += 1
                print(f"import circle in {shown(root_file)}'s target:")
                for m in component:
                    into = sorted(name(d) for d in edges[m] if d in component)
                    print(f"  {shown(files[m])} ({name(m)}) uses {', '.join(into)}")
            seen.update(files.values())
        for file in sorted(seen):
            raw = file.read_text()
            m = TEST_ATTR.search(raw)
            lines = (raw[: m.start()] if m else raw).count("\n")
            if lines > MAX_LINES:
                problems += 1
                print(
                    f"{shown(file)}: {lines} lines before its tests "
                    f"(at most {MAX_LINES}): split it by what its parts do"
                )
    if problems:
        print(f"{problems} structure problem(s)")
        sys.exit(1)
    print(f"structure: {len(dirs)} crates, no import circles, no file over {MAX_LINES} lines")


if __name__ == "__main__":
    main()
