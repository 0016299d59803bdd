"""Solution regions: the `# BEGIN SOLUTION` / `# END SOLUTION` blocks of the method files.

The markers are the ones nbgrader and otter-grader use. A region is the body (or the
tail of the body) of one function that implements a numbered equation; the BEGIN line may
carry a short text, "<equation>, return <what>", which becomes the student's
`NotImplementedError` message and the "equation" column of grade.py's table:

    def log_qz_mws(mat, dataset_size):
        \"\"\"eq. S4 ...\"\"\"
        # BEGIN SOLUTION: eq. S4, return (log q(z_i) (R,), log q(z_id) (R, D))
        ...
        # END SOLUTION

make.py, grade.py and tests/test_assignments.py all read the regions through this file, so
the list of graded functions is the list of marked functions and nothing else.
Standard library only.
"""

import os
import re

# The files that may hold regions, by the name `--methods` selects them with.
SOLUTION_FILES = {
    "jointvae": "jointvae.py",
    "btcvae": "btcvae.py",
    "cascadevae": "cascadevae.py",
    "metrics": "metrics.py",
}

BEGIN = re.compile(r"^(?P<indent>[ \t]*)# BEGIN SOLUTION(?::[ \t]*(?P<text>.*?))?[ \t]*$")
END = re.compile(r"^(?P<indent>[ \t]*)# END SOLUTION[ \t]*$")
DEF = re.compile(r"^(?P<indent>[ \t]*)(?:async[ \t]+)?def[ \t]+(?P<name>\w+)[ \t]*\(")
CLASS = re.compile(r"^(?P<indent>[ \t]*)class[ \t]+(?P<name>\w+)")


class RegionError(ValueError):
    """A marker that does not open and close one region inside one function."""


class Region:
    """One solution region: lines[begin] is the BEGIN marker, lines[end] the END marker (0-based)."""

    def __init__(self, module, path, function, text, begin, end, indent, lines):
        self.module, self.path, self.function, self.text = module, path, function, text
        self.begin, self.end, self.indent = begin, end, indent
        self.body = lines[begin + 1:end]               # the solution, without the markers

    @property
    def qualname(self):
        return f"{self.module}.{self.function}"

    @property
    def equation(self):
        """The BEGIN text up to ", return": e.g. "eq. S4"."""
        return self.text.split(", return", 1)[0].strip() if self.text else ""

    @property
    def message(self):
        """What the student's NotImplementedError says."""
        return f"{self.qualname}: {self.text}" if self.text else f"{self.qualname}: see its docstring"

    def __repr__(self):
        return f"Region({self.qualname}, lines {self.begin + 1}-{self.end + 1})"


def _enclosing_function(lines, index, indent):
    """Qualified name of the function whose body holds line `index` (indent `indent`)."""
    names, limit = [], len(indent)
    for i in range(index - 1, -1, -1):
        m = DEF.match(lines[i]) or CLASS.match(lines[i])
        if m and len(m.group("indent")) < limit:
            if not names and not DEF.match(lines[i]):
                break                                   # a class body, not a function
            names.append(m.group("name"))
            limit = len(m.group("indent"))
            if limit == 0:
                break
    return ".".join(reversed(names)) or None


def find_regions(path, module=None):
    """Every region of one file, in order; RegionError on a malformed marker."""
    module = module or os.path.splitext(os.path.basename(path))[0]
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    regions, open_at, seen = [], None, set()
    for i, line in enumerate(lines):
        if BEGIN.match(line):
            if open_at is not None:
                raise RegionError(f"{path}:{i + 1}: BEGIN SOLUTION inside the region opened at line {open_at + 1}.")
            open_at = i
        elif END.match(line):
            if open_at is None:
                raise RegionError(f"{path}:{i + 1}: END SOLUTION without a BEGIN SOLUTION.")
            begin = BEGIN.match(lines[open_at])
            indent = begin.group("indent")
            if END.match(line).group("indent") != indent:
                raise RegionError(f"{path}:{i + 1}: END SOLUTION is not indented like its BEGIN at line {open_at + 1}.")
            if not indent:
                raise RegionError(f"{path}:{open_at + 1}: a region must be inside a function body.")
            function = _enclosing_function(lines, open_at, indent)
            if function is None:
                raise RegionError(f"{path}:{open_at + 1}: a region must be inside a function body.")
            if function in seen:
                raise RegionError(f"{path}:{open_at + 1}: {module}.{function} has a second region; "
                                  "give each function one region (points are per function).")
            seen.add(function)
            regions.append(Region(module, path, function, begin.group("text") or "", open_at, i, indent, lines))
            open_at = None
        elif "BEGIN SOLUTION" in line or "END SOLUTION" in line:
            raise RegionError(f"{path}:{i + 1}: a solution marker must be a line of its own: "
                              "'# BEGIN SOLUTION[: text]' or '# END SOLUTION'.")
    if open_at is not None:
        raise RegionError(f"{path}:{open_at + 1}: BEGIN SOLUTION is never closed by END SOLUTION.")
    return regions


def all_regions(root, methods=None):
    """Regions of the solution files of `methods` (default all), in file order."""
    out = []
    for method, filename in SOLUTION_FILES.items():
        if methods is None or method in methods:
            out += find_regions(os.path.join(root, filename), method)
    return out


def select(regions, names):
    """The regions named by `names` ("btcvae.log_qz_mws" or a bare "reparameterize");
    all of them when names is empty. ValueError naming what matched nothing."""
    if not names:
        return list(regions)
    chosen, unknown = [], []
    for name in names:
        hits = [r for r in regions if name in (r.qualname, r.function)]
        if not hits:
            unknown.append(name)
        chosen += [r for r in hits if r not in chosen]
    if unknown:
        known = ", ".join(r.qualname for r in regions)
        raise ValueError(f"no solution region for {', '.join(unknown)}; the marked functions are: {known}.")
    return [r for r in regions if r in chosen]        # file order


def strip(lines, regions, remove):
    """lines of one file with the markers of `regions` dropped and the bodies of the regions in
    `remove` replaced by one `raise NotImplementedError("...")` line at the region's indent."""
    out, starts = [], {r.begin: r for r in regions}
    i = 0
    while i < len(lines):
        region = starts.get(i)
        if region is None:
            out.append(lines[i])
            i += 1
            continue
        if region in remove:
            out.append(f"{region.indent}raise NotImplementedError({_quote(region.message)})")
        else:
            out += region.body
        i = region.end + 1
    return out


def _quote(text):
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
