"""KTAP v1 of a verify document, as kernel CI reads results (kselftest, KernelCI, LKFT): one
subtest per device, one test line per check, and one per problem of the run.

The format follows the kernel's Documentation/dev-tools/ktap.rst: "ok"/"not ok", a number, a
description, then "# SKIP reason" for a skipped check; a check that is an error, or that defines
the device's case and could not be judged, is "not ok" with the directive ERROR. Descriptions
and reasons are kept to one line (KTAP is line-based)."""


from vmemtrace.errors import printable


def _line(text: str) -> str:
    """One line, printable, without "#": in a result line it starts the directive."""
    return printable(" ".join(str(text).split())).replace("#", "%23")


def _result(number: int, name: str, check: dict, unjudged) -> str:
    status, detail = check["status"], _line(check["detail"])
    if status == "pass":
        return f"ok {number} {name}"
    if status == "fail":
        return f"not ok {number} {name} # {detail}"
    if status == "error" or check["name"] in unjudged:
        return f"not ok {number} {name} # ERROR {detail}"
    return f"ok {number} {name} # SKIP {detail}"


def ktap(doc: dict) -> str:
    devices = doc["devices"]
    problems = doc.get("problems", []) + [doc[k] for k in ("unjudged_log",) if k in doc]
    kernel = _line(doc["kernel"] or "an unknown kernel")
    out: list[str] = ["KTAP version 1", f"# vmemtrace on {kernel}: {doc['verdict']}",
                      f"1..{len(devices) + len(problems)}"]
    for i, d in enumerate(devices, 1):
        name = _line(d["device"])
        out += ["    KTAP version 1", f"    # Subtest: {name}", f"    1..{len(d['checks'])}"]
        unjudged = d.get("unjudged", ())
        out += ["    " + _result(j, _line(c["name"]), c, unjudged)
                for j, c in enumerate(d["checks"], 1)]
        verdict = {"pass": "ok {} {}", "fail": "not ok {} {}",
                   "incomplete": "not ok {} {} # ERROR not judged: " + ", ".join(unjudged),
                   "error": "not ok {} {} # ERROR"}[d["verdict"]]
        out.append(verdict.format(i, name))
    for k, p in enumerate(problems, len(devices) + 1):
        out.append(f"not ok {k} {'log' if p == doc.get('unjudged_log') else 'trace'} # ERROR "
                   f"{_line(p)}")
    return "\n".join(out) + "\n"
