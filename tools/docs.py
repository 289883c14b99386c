#!/usr/bin/env python3
"""Renders the public headers with doxygen (HTML in build/docs/html) and fails on any warning.

    python3 tools/docs.py [OUTPUT_DIR]        (sh tools/dev.sh docs runs it)

The headers use plain C comments; this copies them to a temporary folder marking those comments
as documentation for doxygen (a comment before a declaration documents it, a comment after a
member on its line documents that member, the first comment documents the file), then runs
doxygen with WARN_AS_ERROR=FAIL_ON_WARNINGS. The headers themselves are not changed."""
import os
import re
import shutil
import subprocess
import sys
import tempfile

here = os.path.dirname(os.path.abspath(__file__))
root = os.path.normpath(os.path.join(here, ".."))
out = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(root, "build", "docs"))


def convert(text):
    lines = text.split("\n")
    first = True
    res = []
    for line in lines:
        if first and line.startswith("/*"):
            line = "/** @file\n *" + line[2:]
            first = False
        elif re.match(r"^\s*/\*(?!\*)", line):
            line = re.sub(r"/\*", "/**", line, count=1)
        elif re.match(r"^\s*(#define\s|[^\s/#*]).*?\S\s*/\*(?!\*)", line):  # code, then its comment
            line = re.sub(r"/\*(?!\*)", "/**<", line, count=1)
        res.append(line)
    return "\n".join(group_runs(res))


def group_runs(lines):
    """A comment followed by several declarations (no blank line between, no braces) documents
    each of them: a doxygen member group, its documentation distributed."""
    out, i = [], 0
    while i < len(lines):
        line = lines[i]
        out.append(line)
        i += 1
        if not re.match(r"^/\*\*(?!<)", line):
            continue
        while not lines[i - 1].rstrip().endswith("*/"):  # the rest of the comment
            out.append(lines[i])
            i += 1
        j = i
        while j < len(lines) and lines[j].strip() and not lines[j].startswith("/*"):
            j += 1
        run = lines[i:j]
        decls = sum(1 for x in run if x.rstrip().endswith(";") or ";" in x.split("/**<")[0])
        if decls >= 2 and not any("{" in x or "}" in x or x.startswith("#") for x in run):
            out.append("/**@{*/")
            out.extend(run)
            out.append("/**@}*/")
            i = j
    return out


def main():
    if shutil.which("doxygen") is None:
        sys.exit("doxygen is not installed (apt-get install doxygen)")
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "sparsekv")
        os.makedirs(src)
        hdir = os.path.join(root, "include", "sparsekv")
        for name in sorted(os.listdir(hdir)):
            if name.endswith(".h"):
                with open(os.path.join(hdir, name)) as f:
                    text = f.read()
                with open(os.path.join(src, name), "w") as f:
                    f.write(convert(text))
        os.makedirs(out, exist_ok=True)
        config = "\n".join([
            "PROJECT_NAME = sparsekv",
            "INPUT = " + src,
            "OUTPUT_DIRECTORY = " + out,
            "STRIP_FROM_PATH = " + tmp,
            "GENERATE_LATEX = NO",
            "GENERATE_HTML = YES",
            "OPTIMIZE_OUTPUT_FOR_C = YES",
            "EXTRACT_ALL = NO",
            "EXTRACT_STATIC = YES",
            "ENABLE_PREPROCESSING = YES",
            "MACRO_EXPANSION = YES",
            "PREDEFINED = SKV_API=",
            "QUIET = YES",
            "WARNINGS = YES",
            "WARN_IF_UNDOCUMENTED = YES",
            "WARN_IF_DOC_ERROR = YES",
            "WARN_NO_PARAMDOC = NO",
            "WARN_AS_ERROR = FAIL_ON_WARNINGS",
            "MARKDOWN_SUPPORT = NO",
            "AUTOLINK_SUPPORT = NO",
            "HAVE_DOT = NO",
            "TYPEDEF_HIDES_STRUCT = YES",
            "DISTRIBUTE_GROUP_DOC = YES",
            "EXCLUDE_SYMBOLS = SKV_API SPARSEKV_*_H",
        ]) + "\n"
        r = subprocess.run(["doxygen", "-"], input=config, text=True, capture_output=True)
        sys.stdout.write(r.stdout)
        sys.stderr.write(r.stderr)
        n = sum(1 for line in r.stderr.splitlines() if "warning:" in line or "error:" in line)
        print("doxygen: %d warnings; HTML in %s" % (n, os.path.join(out, "html")))
        return 1 if r.returncode or n else 0


if __name__ == "__main__":
    sys.exit(main())
