#!/usr/bin/env python3
"""The system calls a sandboxed worker made under its seccomp filter, against the allow-list.

Reads a trace written by `strace -f --decode-pids=pidns -qq -o TRACE warden-runtime ...`
(the worker and everything it starts) and `runtime/seccomp.json`, and reports:

- refused: calls made under the filter that the allow-list does not name (they failed with
  EPERM), and calls it names that still failed with EPERM (an argument rule: `clone` without
  CLONE_THREAD, an `ioctl` outside the device rules);
- used: every call made under the filter, with counts;
- unused: calls the allow-list names that this run never made (candidates for removal, if
  no other path needs them);
- paths the worker failed to open under the filter, and the `ioctl` requests it made (what
  a GPU profile needs to know);
- calls made before the filter (set-up, with the agent's privileges), for reference.

When a process is "under the filter": from its last successful `seccomp(SECCOMP_SET_MODE_FILTER)`
on (the worker installs two filters back to back), and from birth for every process or thread
created by a process that was under it. Children are matched to their parents through the
`clone` return value, translated into strace's PID namespace by `--decode-pids=pidns`.

    syscall_census.py TRACE [--allow-list runtime/seccomp.json] [--device] [--json]
                            [--fail-on-refused]

Exit status: 0, or 1 with --fail-on-refused when anything was refused, 2 on unusable input.
Standard library only (a GPU machine may have a bare Python).
"""

import argparse
import collections
import json
import platform
import re
import sys
from pathlib import Path

LINE = re.compile(r"^(\d+)\s+(.*)$")
CALL = re.compile(r"^([a-z_0-9]+)\((.*)$")
RESUMED = re.compile(r"^<\.\.\. ([a-z_0-9]+) resumed>(.*)$")
RESULT = re.compile(r"\)\s+=\s+(-?\d+|\?|0x[0-9a-f]+)(?:\s+/\* (\d+) in strace's PID NS \*/)?"
                    r"(?:\s+([A-Z][A-Z0-9_]+)\b)?[^)]*$")
SPAWNERS = {"clone", "clone3", "fork", "vfork"}


class Call:
    __slots__ = ("index", "pid", "name", "args", "ret", "errno", "child")

    def __init__(self, index, pid, name, args):
        self.index, self.pid, self.name, self.args = index, pid, name, args
        self.ret = self.errno = self.child = None


def parse(lines):
    """Complete calls in the order they started; unfinished ones joined with their resumption."""
    calls, open_calls = [], {}
    for index, raw in enumerate(lines):
        m = LINE.match(raw.rstrip("\n"))
        if not m:
            continue
        pid, rest = int(m.group(1)), m.group(2)
        if rest.startswith(("---", "+++")):
            continue
        resumed = RESUMED.match(rest)
        if resumed:
            call = open_calls.pop(pid, None)
            if call is None or call.name != resumed.group(1):
                continue
            call.args += resumed.group(2)
            finish(call, resumed.group(2))
            continue
        m = CALL.match(rest)
        if not m:
            continue
        call = Call(index, pid, m.group(1), m.group(2))
        calls.append(call)
        if rest.endswith("<unfinished ...>"):
            open_calls[pid] = call
        else:
            finish(call, rest)
    return calls


def finish(call, text):
    m = RESULT.search(text)
    if not m:
        return
    ret, translated, errno = m.groups()
    call.ret, call.errno = ret, errno
    if call.name in SPAWNERS and ret not in ("?",) and not ret.startswith("-"):
        child = int(translated or ret, 0)
        if child > 0:
            call.child = child


def under_filter(calls):
    """For each call, whether its process was under the filter when it started."""
    installed = {}  # pid -> index of its last successful filter installation
    for c in calls:
        if (c.name == "seccomp" and "SECCOMP_SET_MODE_FILTER" in c.args and c.ret == "0") or (
            c.name == "prctl" and "PR_SET_SECCOMP" in c.args and c.ret == "0"
        ):
            installed[c.pid] = c.index
    parent = {}  # child pid -> (parent pid, index of the spawning call)
    for c in calls:
        if c.child is not None:
            parent[c.child] = (c.pid, c.index)
    born_under = {}

    def filtered_at(pid, index, depth=0):
        if depth > 64:
            return False
        if pid not in born_under:
            up = parent.get(pid)
            born_under[pid] = up is not None and filtered_at(up[0], up[1], depth + 1)
        own = installed.get(pid)
        return born_under[pid] or (own is not None and own < index)

    return [filtered_at(c.pid, c.index) for c in calls]


def allow_list(path, device):
    policy = json.loads(Path(path).read_text())
    arch = {"x86_64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}.get(platform.machine())
    rules = list(policy["rules"]) + list(policy.get(f"rules_{arch}", []))
    if device:
        rules += policy.get("rules_device", [])
    return {r["syscall"] for r in rules}, set(policy.get("enosys", []))


def census(calls, allowed, enosys):
    flags = under_filter(calls)
    used, before = collections.Counter(), collections.Counter()
    refused = collections.Counter()
    failed_opens, ioctls = collections.Counter(), collections.Counter()
    for c, filtered in zip(calls, flags):
        if not filtered:
            before[c.name] += 1
            continue
        if c.name == "seccomp":
            continue
        used[c.name] += 1
        if c.name in enosys:
            continue
        if c.name not in allowed:
            refused[f"{c.name} (not on the list)"] += 1
        elif c.errno == "EPERM":
            refused[f"{c.name} (EPERM: an argument rule, or the kernel)"] += 1
        if c.name in ("openat", "open") and c.errno:
            path = re.search(r'"([^"]*)"', c.args)
            failed_opens[f"{path.group(1) if path else '?'} ({c.errno})"] += 1
        if c.name == "ioctl":
            request = c.args.split(",")
            ioctls[request[1].strip() if len(request) > 1 else "?"] += 1
    return {
        "processes": len({c.pid for c in calls}),
        "calls": len(calls),
        "calls_under_filter": sum(used.values()),
        "refused": dict(sorted(refused.items())),
        "used": dict(sorted(used.items())),
        "unused": sorted(allowed - set(used)),
        "failed_opens": dict(sorted(failed_opens.items())),
        "ioctls": dict(sorted(ioctls.items())),
        "before_filter": dict(sorted(before.items())),
    }


def main():
    here = Path(__file__).resolve().parent.parent
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("trace")
    ap.add_argument("--allow-list", default=str(here / "runtime" / "seccomp.json"))
    ap.add_argument("--device", action="store_true", help="include rules_device (a GPU worker)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--fail-on-refused", action="store_true")
    args = ap.parse_args()
    try:
        lines = Path(args.trace).read_text(errors="replace").splitlines()
        allowed, enosys = allow_list(args.allow_list, args.device)
    except (OSError, ValueError, KeyError) as e:
        print(f"syscall_census: {e}", file=sys.stderr)
        return 2
    report = census(parse(lines), allowed, enosys)
    if report["calls_under_filter"] == 0:
        print("syscall_census: no call was made under a seccomp filter in this trace "
              "(not a sandboxed worker, or not traced with -f?)", file=sys.stderr)
        return 2
    if args.json:
        json.dump(report, sys.stdout, indent=1)
        print()
    else:
        print(f"{report['processes']} processes, {report['calls']} calls, "
              f"{report['calls_under_filter']} under the filter")
        for key in ("refused", "used", "failed_opens", "ioctls", "before_filter"):
            items = report[key]
            print(f"{key}: " + (", ".join(f"{k} ×{v}" for k, v in items.items()) or "none"))
        print("unused: " + (", ".join(report["unused"]) or "none"))
    return 1 if args.fail_on_refused and report["refused"] else 0


if __name__ == "__main__":
    sys.exit(main())
