"""Checks on the values users type into pip/conda fields, with messages that start with the field path.

Nothing here is needed to keep the Dockerfile safe (spec values only reach data files, see render.py); these
checks make sure the data files say what the user meant: each package, version, channel and URL is one token
of the grammar its reader (pip, micromamba) expects, ASCII only, so a value can neither add a line to a file
nor hide a look-alike name. Errors surface at validation time (`kubectl apply`, `kenv render`, the operator).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from urllib.parse import urlsplit

import yaml
from packaging.requirements import InvalidRequirement, Requirement

# pip's requirements-file grammar (pip/_internal/req/req_file.py): a comment starts at a `#` that begins the
# line or follows whitespace (pip: `(^|\s+)#.*$`, done here in linear time); a line ending in a backslash
# continues on the next one.


def strip_comment(line: str) -> str:
    """`line` without its comment, like pip's strip_comment(line)."""
    index = line.find("#")
    while index != -1:
        if index == 0 or line[index - 1].isspace():
            return line[:index].rstrip()
        index = line.find("#", index + 1)
    return line


def is_comment_line(line: str) -> bool:
    """Like pip's is_comment_line(line): only whitespace before a `#`."""
    return line.lstrip().startswith("#")

MAX_LINE = 4096

# Options pip accepts in a requirements file that we let through. Includes (-r/-c) are refused: the file is
# rendered alone into the build context. Value kinds: url, location (URL or absolute path), host, formats.
PIP_FLAGS = {"--pre", "--prefer-binary", "--require-hashes"}
PIP_VALUE_OPTIONS = {
    "-i": "url",
    "--index-url": "url",
    "--extra-index-url": "url",
    "-f": "location",
    "--find-links": "location",
    "--trusted-host": "host",
    "--only-binary": "formats",
    "--no-binary": "formats",
}
ALLOWED_OPTIONS = "-i/--index-url, --extra-index-url, -f/--find-links, --trusted-host, --pre, --prefer-binary, " \
    "--only-binary, --no-binary, --require-hashes"

# ASCII only, no whitespace, quotes, backslashes or backticks.
URL_RE = re.compile(r"https?://[\x21\x23-\x26\x28-\x5b\x5d-\x5f\x61-\x7e]+")
VCS_URL_RE = re.compile(r"(?:git|hg|svn|bzr)\+(?:https?|ssh)://[\x21\x23-\x26\x28-\x5b\x5d-\x5f\x61-\x7e]+")
PATH_RE = re.compile(r"/[A-Za-z0-9._+/-]*")
HOST_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]*(:[0-9]+)?")
FORMATS_RE = re.compile(r":all:|:none:|[A-Za-z0-9._-]+(,[A-Za-z0-9._-]+)*")
HASH_RE = re.compile(r"(sha256:[a-f0-9]{64}|sha384:[a-f0-9]{96}|sha512:[a-f0-9]{128})")

# conda match spec, the subset written in environment files: [channel::]name[ ][version[=build| build]],
# the version being constraints ([op]version) joined by `,` or `|`.
CONDA_CHANNEL_NAME = r"[A-Za-z0-9_.-]+(?:/[A-Za-z0-9_.-]+)*"
CONDA_CONSTRAINT = r"(?:==|>=|<=|!=|~=|=|<|>)?[A-Za-z0-9_.*+-]+"
CONDA_SPEC_RE = re.compile(
    rf"(?:{CONDA_CHANNEL_NAME}::)?[A-Za-z0-9_.-]+"
    rf"(?: ?{CONDA_CONSTRAINT}(?:[,|]{CONDA_CONSTRAINT})*(?:[= ][A-Za-z0-9_.*+-]+)?)?"
)
CONDA_CHANNEL_RE = re.compile(rf"{CONDA_CHANNEL_NAME}|{URL_RE.pattern}")
# A channel server's host as rattler's authentication file keys it: a lower-case DNS name or IPv4 address, no
# port, or `*.` and a domain for every host under it. Character classes, no backslashes: the same text is a CEL
# string literal in the CRD (models.ChannelCredential).
CHANNEL_HOST_PATTERN = r"^([*][.])?[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?([.][a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*$"
CHANNEL_HOST_RE = re.compile(CHANNEL_HOST_PATTERN)


def show(value: str, limit: int = 60) -> str:
    """A value for an error message: quoted, escaped to one printable line, long values cut."""
    if len(value) > limit:
        return repr(value[:limit])[:-1] + f"...' ({len(value)} characters)"
    return repr(value)


def printable(text: str) -> str:
    """Text from a third-party error message, one printable line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def non_ascii(value: str) -> str | None:
    """Describe the first non-ASCII character (look-alike letters such as Cyrillic 'а' or fullwidth 'ｎ')."""
    for char in value:
        if ord(char) > 0x7E or (ord(char) < 0x20 and char != "\t") or char == "\x7f":
            return f"contains {printable(repr(char))} (U+{ord(char):04X}); only printable ASCII is accepted " \
                "(look-alike letters are refused)"
    return None


# --- pip -----------------------------------------------------------------------------------------------


def join_lines(lines: Iterable[str]) -> Iterator[tuple[int, str]]:
    """pip's join_lines: a line ending in a backslash (not a comment line) continues on the next one.
    Yields (number of the first physical line, joined line)."""
    first: int | None = None
    pending: list[str] = []
    for number, line in enumerate(lines, 1):
        if not line.endswith("\\") or is_comment_line(line):
            if is_comment_line(line):
                line = " " + line
            if pending:
                pending.append(line)
                assert first is not None
                yield first, "".join(pending)
                pending = []
            else:
                yield number, line
        else:
            if not pending:
                first = number
            pending.append(line.strip("\\"))
    if pending:
        assert first is not None
        yield first, "".join(pending)


def logical_lines(text: str) -> list[tuple[int, str]]:
    """The lines pip reads from a requirements body, comments included, stripped; blank lines dropped."""
    return [(number, line.strip()) for number, line in join_lines(text.splitlines()) if line.strip()]


def _is_include(token: str) -> bool:
    if token.startswith("--"):
        name = token[2:].split("=", 1)[0]
        # optparse accepts unambiguous prefixes of long options (--req, --constr).
        return len(name) >= 3 and ("requirement".startswith(name) or "constraint".startswith(name))
    return token.startswith(("-r", "-c"))


def _check_value(kind: str, value: str) -> str | None:
    if kind == "url":
        ok = URL_RE.fullmatch(value)
        example = "an http(s) URL"
    elif kind == "location":
        ok = URL_RE.fullmatch(value) or PATH_RE.fullmatch(value)
        example = "an http(s) URL or an absolute path"
    elif kind == "host":
        ok = HOST_RE.fullmatch(value)
        example = "a host[:port]"
    else:
        ok = FORMATS_RE.fullmatch(value)
        example = ":all:, :none: or comma-separated package names"
    return None if ok else f"{show(value)} is not {example}"


def _check_options(tokens: list[str]) -> str | None:
    """Option tokens of an option line (everything pip hands to optparse)."""
    index = 0
    while index < len(tokens):
        token = tokens[index]
        if _is_include(token):
            return "includes (-r/-c) cannot be resolved in the build context; paste the included file's lines " \
                "instead"
        name, eq, value = token.partition("=")
        if name in PIP_FLAGS and not eq:
            index += 1
            continue
        if name in PIP_VALUE_OPTIONS:
            if not eq:
                if index + 1 >= len(tokens):
                    return f"option {name} needs a value"
                index += 1
                value = tokens[index]
            elif not name.startswith("--"):
                return f"write {name} VALUE, not {show(token)}"
            problem = _check_value(PIP_VALUE_OPTIONS[name], value)
            if problem:
                return f"{name}: {problem}"
            index += 1
            continue
        return f"option {show(token)} is not allowed here (allowed: {ALLOWED_OPTIONS})"
    return None


def _check_hash_options(tokens: list[str]) -> str | None:
    """Per-requirement options: only --hash=alg:hex (or --hash alg:hex)."""
    index = 0
    while index < len(tokens):
        name, eq, value = tokens[index].partition("=")
        if name != "--hash":
            if _is_include(tokens[index]):
                return "includes (-r/-c) cannot be resolved in the build context; paste the included file's " \
                    "lines instead"
            return f"only --hash=sha256:... may follow a requirement, not {show(tokens[index])}"
        if not eq:
            index += 1
            value = tokens[index] if index < len(tokens) else ""
        if not HASH_RE.fullmatch(value):
            return f"--hash: {show(value)} is not sha256:<64 hex digits> (or sha384/sha512)"
        index += 1
    return None


def requirement_problem(value: str) -> str | None:
    """Why `value` is not a single PEP 508 requirement (e.g. `numpy==1.26.4`, `pkg @ https://...`), or None."""
    if not value.strip():
        return "is empty"
    if problem := non_ascii(value):
        return f"{show(value)} {problem}"
    if "\\" in value:
        return f"{show(value)} contains a backslash (pip would join it with the next line)"
    try:
        requirement = Requirement(value)
    except InvalidRequirement as error:
        reason = printable(str(error).splitlines()[0]) if str(error) else "invalid"
        return f"{show(value)} is not a PEP 508 requirement (e.g. numpy==1.26.4): {reason}"
    if requirement.url is not None and not (
        URL_RE.fullmatch(requirement.url) or VCS_URL_RE.fullmatch(requirement.url)
    ):
        return f"{show(value)}: the URL must be http(s) or VCS+http(s)/ssh without quotes or spaces"
    return None


def requirement_line_problem(line: str) -> str | None:
    """Why a (joined) requirements-file line is not an allowed option line, a PEP 508 requirement with
    --hash options, or a URL; None if it is fine. Comments are allowed and ignored."""
    content = strip_comment(line).strip()
    if not content:
        return None
    if len(content) > MAX_LINE:
        return f"{show(content)} is longer than {MAX_LINE} characters"
    if problem := non_ascii(content):
        return f"{show(content)} {problem}"
    if any(c in content for c in "\\'\"`") and content.startswith("-"):
        return f"{show(content)}: quotes and backslashes are not allowed in option lines"
    # pip's break_args_options: the requirement ends at the first space-separated token starting with `-`.
    tokens = content.split(" ")
    cut = next((i for i, token in enumerate(tokens) if token.startswith("-")), len(tokens))
    args, options = " ".join(tokens[:cut]).strip(), " ".join(tokens[cut:]).split()
    if not args:
        return _check_options(options)
    if "\\" in args:
        return f"{show(args)} contains a backslash"
    if not (URL_RE.fullmatch(args) or VCS_URL_RE.fullmatch(args)):
        problem = requirement_problem(args)
        if problem:
            return problem
    return _check_hash_options(options)


def check_requirements_body(text: str, where: str) -> None:
    """Each line of a requirements.txt body (continuations joined as pip does). Raises ValueError."""
    for number, line in logical_lines(text):
        problem = requirement_line_problem(line)
        if problem:
            raise ValueError(f"{where} line {number}: {problem}")


# What uv does not read from a requirements file (it warns and goes on): with spec.pip.installer uv they would be
# dropped silently, so they are refused instead.
UV_IGNORED_OPTIONS = {"--pre", "--prefer-binary", "--trusted-host"}
INDEX_URL_OPTIONS = {"-i", "--index-url"}
# Options that say where packages come from: the uv installer step fetches uv itself from the same places.
INDEX_OPTIONS = INDEX_URL_OPTIONS | {"--extra-index-url", "-f", "--find-links"}


def options(line: str) -> list[tuple[str, str | None]]:
    """(name, value) of each option on an option line, as pip reads it: `--index-url=X` and `--index-url X` both
    give ("--index-url", "X"); flags have no value. A requirement line has none."""
    if not line.startswith("-"):
        return []
    found: list[tuple[str, str | None]] = []
    tokens = strip_comment(line).split()
    index = 0
    while index < len(tokens):
        name, eq, value = tokens[index].partition("=")
        if name in PIP_VALUE_OPTIONS and not eq and index + 1 < len(tokens):
            index += 1
            value = tokens[index]
        found.append((name, value if name in PIP_VALUE_OPTIONS else None))
        index += 1
    return found


def check_uv_requirements(text: str, index_urls: int, where: str) -> None:
    """What uv would not do as pip does with these requirements (index_urls: those given outside them, by
    spec.pip.indexUrl). Raises ValueError naming the line and the fix."""
    for number, line in logical_lines(text):
        names = [name for name, _ in options(line)]
        ignored = sorted(set(names) & UV_IGNORED_OPTIONS)
        if ignored:
            raise ValueError(f"{where} line {number}: uv does not read {', '.join(ignored)} from a requirements "
                             "file and would ignore it: remove it, or set spec.pip.installer to pip")
        index_urls += sum(1 for name in names if name in INDEX_URL_OPTIONS)
    if index_urls > 1:
        raise ValueError(f"{where}: uv takes one --index-url (pip takes the last of several), and spec.pip.indexUrl "
                         f"and the requirements give {index_urls}: keep one, or make the others --extra-index-url")


def check_each(values: list[str], check: Callable[[str, str], None], field: str) -> list[str]:
    """Run `check` on every item, naming it `field[index]` in the error; returns the list unchanged."""
    for index, value in enumerate(values):
        check(value, f"{field}[{index}]")
    return values


def check_requirement(value: str, where: str) -> None:
    if value.lstrip().startswith("-") and _is_include(value.strip().split()[0]):
        raise ValueError(f"{where}: includes (-r/-c) are refused; list each one")
    problem = requirement_problem(value)
    if problem:
        raise ValueError(f"{where}: {problem}")


# --- conda ---------------------------------------------------------------------------------------------


def conda_spec_problem(value: object) -> str | None:
    if not isinstance(value, str):
        return f"{printable(repr(value))[:60]} is not a string (quote versions such as '3.10')"
    if problem := non_ascii(value):
        return f"{show(value)} {problem}"
    if len(value) > 1024 or not CONDA_SPEC_RE.fullmatch(value):
        return (
            f"{show(value)} is not a conda match spec (e.g. numpy=1.26, numpy >=1.26,<2, conda-forge::numpy, "
            "numpy 1.26.* py311*); bracket forms and shell characters are refused"
        )
    return None


def channel_problem(value: object) -> str | None:
    if not isinstance(value, str):
        return f"{printable(repr(value))[:60]} is not a string"
    if problem := non_ascii(value):
        return f"{show(value)} {problem}"
    if len(value) > 2048 or not CONDA_CHANNEL_RE.fullmatch(value):
        return f"{show(value)} is not a channel name (e.g. conda-forge) or an http(s) URL"
    return None


def check_conda_spec(value: str, where: str) -> None:
    if problem := conda_spec_problem(value):
        raise ValueError(f"{where}: {problem}")


def check_channel(value: str, where: str) -> None:
    if problem := channel_problem(value):
        raise ValueError(f"{where}: {problem}")


def suggested_host(value: str) -> str | None:
    """The host name inside a URL or host:port someone wrote for a channel host, lower case, if there is one."""
    text = value.strip()
    try:
        host = urlsplit(text if "://" in text else "//" + text).hostname
    except ValueError:
        return None
    return host if host and CHANNEL_HOST_RE.fullmatch(host) else None


def channel_host_problem(value: str) -> str | None:
    """rattler looks credentials up by the URL's host alone (lower case, no port) or `*.` and a parent domain."""
    if CHANNEL_HOST_RE.fullmatch(value):
        return None
    if CHANNEL_HOST_RE.fullmatch(value.lower()):
        return f"{show(value)}: write the host name in lower case, as channel URLs are looked up: {value.lower()}"
    example = suggested_host(value)
    fix = example if example and example != value else (
        "conda.example.com, or *.example.com for every host under example.com")
    return f"{show(value)} is not a host name: write the host only, without scheme, port or path: {fix}"


def parse_environment_yaml(text: str, where: str) -> dict[str, Any]:
    """Parse and check an environment.yml body; returns the mapping. Raises ValueError naming the item."""
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        detail = printable(str(getattr(error, "problem", None) or error.__class__.__name__))
        raise ValueError(f"{where}{line}: not valid YAML ({detail})") from None
    if document is None:
        document = {}
    if not isinstance(document, dict):
        raise ValueError(f"{where}: must be a mapping with a `dependencies` list")
    channels = document.get("channels")
    if channels is not None:
        if not isinstance(channels, list):
            raise ValueError(f"{where}: channels must be a list")
        for index, channel in enumerate(channels):
            if problem := channel_problem(channel):
                raise ValueError(f"{where}: channels[{index}]: {problem}")
    dependencies = document.get("dependencies", [])
    if not isinstance(dependencies, list):
        raise ValueError(f"{where}: must be a mapping with a `dependencies` list")
    for index, item in enumerate(dependencies):
        if isinstance(item, dict):
            if set(item) != {"pip"} or not isinstance(item["pip"], list):
                raise ValueError(f"{where}: dependencies[{index}]: only a `pip:` list may be a mapping here")
            for number, line in enumerate(item["pip"]):
                at = f"{where}: dependencies[{index}].pip[{number}]"
                if not isinstance(line, str) or not line.strip():
                    raise ValueError(f"{at}: must be a non-empty string")
                if len(line.splitlines()) != 1 or line.rstrip().endswith("\\"):
                    raise ValueError(f"{at}: {show(line)} must be exactly one line")
                if problem := requirement_line_problem(line.strip()):
                    raise ValueError(f"{at}: {problem}")
        elif problem := conda_spec_problem(item):
            raise ValueError(f"{where}: dependencies[{index}]: {problem}")
    return document


# --- rendering helpers -----------------------------------------------------------------------------------

HEREDOC_RE = re.compile(r"<<(-?)\s*([\"']?)([A-Za-z0-9_.-]+)\2")


def canonical_requirements(text: str) -> list[str]:
    """A requirements body as pip reads it, one logical line per line: continuations joined, each line
    stripped, blank lines dropped (comments kept). Whitespace-only edits give the same lines."""
    lines = []
    for _, line in logical_lines(text):
        if line.endswith("\\") and not is_comment_line(line):  # a joined trailing comment ending in `\`
            line = strip_comment(line).strip().rstrip("\\").strip()
        if line:
            lines.append(line)
    return lines


def canonical_dockerfile(text: str) -> str:
    """Trailing whitespace stripped and blank lines dropped, except inside heredocs (kept byte for byte).
    No trailing newline."""
    out: list[str] = []
    pending: list[tuple[bool, str]] = []  # heredocs opened on the last instruction line: (strip tabs, word)
    for line in text.replace("\r\n", "\n").split("\n"):
        if pending:
            out.append(line)
            strip_tabs, word = pending[0]
            if (line.lstrip("\t") if strip_tabs else line) == word:
                pending.pop(0)
            continue
        line = line.rstrip(" \t\r")
        if line:
            out.append(line)
            pending = [(dash == "-", word) for dash, _, word in HEREDOC_RE.findall(line)]
    return "\n".join(out).rstrip("\n")
