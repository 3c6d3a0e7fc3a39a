"""SSM documents: parsing, format conversion, Session-document schema, parameters.

* :func:`parse_content` / :func:`render_content` read and write document content as JSON or
  YAML (``DocumentFormat``), :func:`convert_content` converts between them.
* :func:`validate_document` checks a parsed document for its ``DocumentType``; Session
  documents (``schemaVersion "1.0"``) get the full schema of
  docs/reference/session-manager.md#session-documents.
* :func:`aws_documents` returns the AWS-owned documents and :func:`default_preferences` the
  content ``SSM-SessionManagerRunShell`` starts with, both read from the package's data files
  (hatchway/ssm/data/documents/, the only I/O of this module).
* :func:`validate_parameters` checks ``StartSession.Parameters`` against a document's
  parameter definitions and applies defaults; :func:`interpolate` replaces ``{{ name }}``.

Errors are :class:`DocumentError` values carrying AWS's error code and a message.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import re
import unicodedata
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from types import MappingProxyType
from typing import Any

import yaml

from hatchway.ssm.patterns import PatternError, compile_pattern, pattern_matches

__all__ = [
    "DEFAULT_PREFERENCES_DESCRIPTION",
    "FORMATS",
    "MAX_CONTENT_BYTES",
    "PARAMETER_TYPES",
    "SESSION_TYPES",
    "AwsDocument",
    "DocumentError",
    "arithmetic_spans",
    "aws_documents",
    "check_document_arithmetic",
    "check_format",
    "check_shell_arithmetic",
    "content_hash",
    "convert_content",
    "default_preferences",
    "interpolate",
    "interpolate_inputs",
    "interpolate_properties",
    "interpolate_shell",
    "is_true",
    "parameter_environment",
    "parameter_summary",
    "parse_content",
    "platform_types",
    "references",
    "render_content",
    "schema_version",
    "validate_document",
    "validate_parameters",
    "validate_tag",
]

FORMATS = ("JSON", "YAML", "TEXT")
SESSION_TYPES = ("Standard_Stream", "Port", "InteractiveCommands", "NonInteractiveCommands")
PARAMETER_TYPES = ("String", "StringList", "Boolean", "Integer", "StringMap", "MapList")
SESSION_SCHEMA_VERSIONS = ("1.0",)
MAX_CONTENT_BYTES = 64 * 1024
ALL_PLATFORMS = ["Windows", "Linux", "MacOS"]
# Document types whose content may be plain TEXT (everything else is JSON or YAML).
_TEXT_TYPES = ("ApplicationConfiguration", "ChangeCalendar")


class DocumentError(ValueError):
    """An AWS error about a document or its parameters: ``code`` and ``message``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def _content_error(message: str) -> DocumentError:
    return DocumentError("InvalidDocumentContent", message)


# -- content ------------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """SafeLoader that keeps timestamps as strings (documents are JSON-compatible)."""


_Loader.yaml_implicit_resolvers = {
    k: [(tag, rx) for tag, rx in v if tag != "tag:yaml.org,2002:timestamp"]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def parse_content(content: str, document_format: str = "JSON") -> dict[str, Any]:
    """Parse ``content`` (``JSON`` or ``YAML``) into a document object.

    Raises ``InvalidDocumentContent`` with AWS's "JSON not well-formed. at Line: L, Column: C"
    style message when the text does not parse or is not an object.
    """
    fmt = (document_format or "JSON").upper()
    if fmt == "JSON":
        try:
            doc = json.loads(content, parse_constant=_not_json)
        except json.JSONDecodeError as exc:
            raise _content_error(
                f"JSON not well-formed. at Line: {exc.lineno}, Column: {exc.colno}"
            ) from exc
        except (RecursionError, ValueError) as exc:
            raise _content_error(f"JSON not well-formed. {_NOT_STORABLE}") from exc
    elif fmt == "YAML":
        try:
            doc = yaml.load(content, Loader=_Loader)  # a SafeLoader subclass
        except RecursionError as exc:
            raise _content_error(f"YAML not well-formed. {_NOT_STORABLE}") from exc
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at Line: {mark.line + 1}, Column: {mark.column + 1}" if mark else ""
            raise _content_error(f"YAML not well-formed.{where}") from exc
    elif fmt == "TEXT":
        raise _content_error(
            "The content for the document isn't valid: TEXT documents have no structure to parse."
        )
    else:
        raise DocumentError("ValidationException", f"Invalid document format {fmt}")
    if not isinstance(doc, dict):
        raise _content_error(
            f"The content for the document isn't valid: it must be a {fmt} object."
        )
    if not _storable(doc):
        raise _content_error(f"{fmt} not well-formed. {_NOT_STORABLE}")
    return doc


MAX_DEPTH = 64
"""How deeply a document's objects and lists may nest (AWS's own documents need 6 levels)."""
_NOT_STORABLE = (
    f"The content nests deeper than {MAX_DEPTH} levels or holds a number that is not finite."
)


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # NaN, Infinity, -Infinity


def _storable(doc: Any) -> bool:
    """Nested at most ``MAX_DEPTH`` deep with finite numbers only (what JSON can carry back),
    checked without recursion."""
    stack: list[tuple[Any, int]] = [(doc, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, float) and not math.isfinite(value):
            return False
        if isinstance(value, dict):
            children: Any = value.values()
        elif isinstance(value, list):
            children = value
        else:
            continue
        if depth > MAX_DEPTH:
            return False
        stack.extend((child, depth + 1) for child in children)
    return True


def render_content(doc: Mapping[str, Any], document_format: str = "JSON") -> str:
    """Write a document object as ``JSON`` (2-space indent) or ``YAML`` (block style)."""
    fmt = (document_format or "JSON").upper()
    if fmt == "JSON":
        return json.dumps(doc, indent=2, ensure_ascii=False, default=str)
    if fmt == "YAML":
        return str(
            yaml.safe_dump(dict(doc), sort_keys=False, allow_unicode=True, default_flow_style=False)
        )
    raise DocumentError("ValidationException", f"Invalid document format {fmt}")


def convert_content(content: str, from_format: str, to_format: str) -> str:
    """``content`` in ``to_format``; unchanged (byte for byte) when the formats agree."""
    if (from_format or "JSON").upper() == (to_format or "JSON").upper():
        return content
    if "TEXT" in (from_format.upper(), to_format.upper()):
        raise DocumentError(
            "ValidationException", f"A {from_format} document can't be returned as {to_format}."
        )
    return render_content(parse_content(content, from_format), to_format)


def content_hash(content: str) -> str:
    """``Hash`` of a document version: SHA-256 (``HashType: Sha256``) of its content, hex."""
    return hashlib.sha256(content.encode("utf-8")).hexdigest()


def schema_version(doc: Mapping[str, Any]) -> str | None:
    """The document's ``schemaVersion`` as a string (YAML may have parsed ``1.0`` as a float)."""
    v = doc.get("schemaVersion")
    if v is None or isinstance(v, bool):
        return None
    return str(v) if isinstance(v, (str, int, float)) else None


# -- references ----------------------------------------------------------------------------

_REF = re.compile(r"\{\{\s*([A-Za-z0-9_.:/\-]+)\s*\}\}")
_WHOLE_REF = re.compile(r"\s*\{\{\s*([A-Za-z0-9_.:/\-]+)\s*\}\}\s*")


def references(value: Any) -> set[str]:
    """Names referenced as ``{{ name }}`` anywhere in ``value`` (``ssm:`` references excluded)."""
    out: set[str] = set()
    if isinstance(value, str):
        out.update(n for n in _REF.findall(value) if not n.startswith("ssm:"))
    elif isinstance(value, Mapping):
        for v in value.values():
            out |= references(v)
    elif isinstance(value, list):
        for v in value:
            out |= references(v)
    return out


def _is_ref(value: Any) -> bool:
    return isinstance(value, str) and _WHOLE_REF.fullmatch(value) is not None


def _substitute(
    text: str, params: Mapping[str, list[str]], join: Callable[[list[str]], str]
) -> str | list[str]:
    """``text`` that is exactly one known reference → its value(s); otherwise every known
    reference inside it replaced by ``join`` of its values (unknown ones are left)."""
    value = _whole_reference(text, params)
    if value is not None:
        return value

    def sub(m: re.Match[str]) -> str:
        vals = params.get(m.group(1))
        return m.group(0) if vals is None else join(vals)

    return _REF.sub(sub, text)


def _whole_reference(text: str, params: Mapping[str, list[str]]) -> str | list[str] | None:
    """The value(s) of the known parameter ``text`` consists of, or None if it is not one."""
    whole = _WHOLE_REF.fullmatch(text)
    if whole is None or whole.group(1) not in params:
        return None
    vals = params[whole.group(1)]
    return vals[0] if len(vals) == 1 else list(vals)


def interpolate(value: Any, params: Mapping[str, list[str]]) -> Any:
    """Replace ``{{ name }}`` references in ``value`` (recursively) with parameter values.

    A string that is exactly one reference becomes the parameter's value (a string for a
    single value, the list for several); a reference inside a longer string is replaced by
    the values joined with ``","``. Unknown names and ``{{ssm:…}}`` are left as they are.
    """
    if isinstance(value, str):
        return _substitute(value, params, ",".join)
    if isinstance(value, Mapping):
        return {k: interpolate(v, params) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, params) for v in value]
    return value


PARAM_ENV_PREFIX = "HATCHWAY_PARAM_"
"""Shell text reads parameter values from these environment variables (see
:func:`interpolate_shell` and :func:`parameter_environment`)."""


def parameter_environment(params: Mapping[str, list[str]]) -> dict[str, str]:
    """The environment a session's shell text needs: ``HATCHWAY_PARAM_<name>`` for every
    parameter, its values joined with spaces."""
    return {f"{PARAM_ENV_PREFIX}{name}": " ".join(values) for name, values in params.items()}


def _shell_contexts(text: str) -> list[str]:
    """For each position of ``text``, the quoting in force there: ``u`` (unquoted), ``s``
    (inside '…') or ``d`` (inside "…"), by POSIX shell rules for quotes and backslashes."""
    out: list[str] = []
    state = "u"
    escaped = False
    for ch in text:
        out.append(state)
        if escaped:
            escaped = False
        elif state == "s":
            if ch == "'":
                state = "u"
        elif ch == "\\":
            escaped = True
        elif state == "d":
            if ch == '"':
                state = "u"
        elif ch == "'":
            state = "s"
        elif ch == '"':
            state = "d"
    return out


def interpolate_shell(value: Any, params: Mapping[str, list[str]]) -> Any:
    """:func:`interpolate` for text a shell runs (``commands``, ``shellProfile.linux``).

    A string (or one element of a list) that is exactly one reference is replaced by the
    parameter's value: the document says "run what the caller gives", and
    ``allowedPattern``/``allowedValues`` are what restrict it. A reference inside a longer
    string never puts the value into the script: it becomes an expansion of the variable
    ``HATCHWAY_PARAM_<name>`` (the node sets it, :func:`parameter_environment`), written for
    the quoting around the reference — ``"${V}"`` in plain text, ``${V}`` inside "…",
    ``'"${V}"'`` inside '…'. A shell never parses the result of an expansion as code, so a
    value like ``x; touch /tmp/pwned`` or ``$(id)`` stays data however the document quotes it.
    A list element that resolves to several values contributes each as its own element.

    The one place where bash *does* evaluate what a variable holds is arithmetic
    (``$(( ))``, ``[[ … -gt … ]]``, ``let``, array subscripts …): a parameter referenced there
    must hold an integer, or :class:`DocumentError` ``InvalidParameters`` is raised
    (:func:`check_shell_arithmetic`).
    """
    check_shell_arithmetic(value, params)
    if isinstance(value, str):
        whole = _whole_reference(value, params)
        if whole is not None:
            return whole
        contexts = _shell_contexts(value)

        def sub(m: re.Match[str]) -> str:
            name = m.group(1)
            if name not in params:
                return m.group(0)
            var = "${" + PARAM_ENV_PREFIX + name + "}"
            return {"u": f'"{var}"', "d": var, "s": f"'\"{var}\"'"}[contexts[m.start()]]

        return _REF.sub(sub, value)
    if isinstance(value, list):
        out: list[Any] = []
        for item in value:
            done = interpolate_shell(item, params)
            out.extend(done if isinstance(done, list) else [done])
        return out
    return value


# -- shell arithmetic -----------------------------------------------------------------------
#
# Bash evaluates some text as arithmetic, and arithmetic evaluation expands what a variable
# holds again: ``x='a[$(id)]'; (( x > 1 ))`` runs ``id``. So an expansion of
# ``HATCHWAY_PARAM_<name>`` is data everywhere except there; a parameter referenced in such a
# place must hold a plain integer (:func:`check_shell_arithmetic`).

_INTEGER = re.compile(r"-?[0-9]+")
_INTEGER_DECLARATION = re.compile(
    r"(?<![\w-])(?:declare|typeset|local|export|readonly)\b[^\n;&|]*?\s-[A-Za-z]*[in](?=\s|$)"
)
_NAME_COMMAND = re.compile(
    r"(?<![\w$-])(?:read|unset|declare|typeset|local|export|readonly|mapfile|readarray)(?=\s)"
)
_DASH_V = re.compile(r"(?:\bprintf|\[\[|\btest|(?<![\w\[])\[)\s+-v\s+")
_WORD = re.compile(r"[^\s;&|)]+")
_LET = re.compile(r"(?<![\w$-])let\s")
_ARITH_TEST = re.compile(r"\s-(?:eq|ne|lt|le|gt|ge)\s")
_SUBSCRIPT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\[")
_SUBSTRING = re.compile(r"\$\{[#!]?[A-Za-z0-9_@*]+(?:\[[^\]]*\])?:(?![-=+?])")


def _closing(text: str, start: int, open_ch: str, close_ch: str, depth: int = 1) -> int:
    """The index just past where the bracket opened before ``start`` closes (or the end)."""
    i = start
    while i < len(text) and depth:
        if text[i] == open_ch:
            depth += 1
        elif text[i] == close_ch:
            depth -= 1
        i += 1
    return i


def arithmetic_spans(text: str) -> list[tuple[int, int, str]]:
    """Where bash evaluates ``text`` as arithmetic: ``(start, end, what)`` spans.

    Found: ``$(( ))``, ``(( ))`` (``for (( ))`` too), ``$[ ]``, the arguments of ``let``, a
    ``[[ ]]`` test with ``-eq``/``-ne``/``-lt``/``-le``/``-gt``/``-ge``, an array subscript
    ``name[…]`` (also a glob like ``file[…]``: over-approximated on purpose), a substring
    expansion ``${name:offset:length}``, and — because an integer variable evaluates whatever
    is assigned to it — the whole script once it declares one (``declare -i`` and friends).
    Quoting is ignored on purpose: ``"$(( … ))"`` is evaluated too, and over-approximating
    only ever asks for an integer where a string would have been safe.
    """
    spans: list[tuple[int, int, str]] = []
    decl = _INTEGER_DECLARATION.search(text)
    if decl is not None:
        spans.append(
            (0, len(text), f"integer or reference variable declared by {decl.group(0).strip()!r}")
        )
    i = 0
    while (i := text.find("((", i)) >= 0:
        end = _closing(text, i + 2, "(", ")", 2)
        spans.append((i, end, "(( ))"))
        i += 2
    i = 0
    while (i := text.find("$[", i)) >= 0:
        spans.append((i, _closing(text, i + 2, "[", "]"), "$[ ]"))
        i += 2
    for m in _LET.finditer(text):
        end = len(text)
        for stop in "\n;&|)":
            j = text.find(stop, m.end())
            if j >= 0:
                end = min(end, j)
        spans.append((m.start(), end, "let"))
    i = 0
    while (i := text.find("[[", i)) >= 0:
        end = text.find("]]", i + 2)
        end = len(text) if end < 0 else end + 2
        if _ARITH_TEST.search(text, i, end) is not None:
            spans.append((i, end, "an arithmetic [[ ]] test"))
        i += 2
    for m in _SUBSCRIPT.finditer(text):
        spans.append((m.end(), _closing(text, m.end(), "[", "]"), "an array subscript"))
    for m in _SUBSTRING.finditer(text):
        spans.append((m.end(), _closing(text, m.end(), "{", "}"), "a substring expansion"))
    spans.extend(_name_spans(text))
    return spans


def _command_end(text: str, start: int) -> int:
    ends = [j for stop in "\n;&|)" if (j := text.find(stop, start)) >= 0]
    return min(ends, default=len(text))


def _name_spans(text: str) -> Iterator[tuple[int, int, str]]:
    """Where ``text`` names a variable: a subscript in the name (``a[$(id)]``) is evaluated
    like arithmetic. The word after ``-v`` (``printf -v``, ``[[ -v ]]``, ``test -v``), and the
    names (before any ``=``) in the arguments of ``read``, ``unset``, ``declare`` & co."""
    for m in _DASH_V.finditer(text):
        word = _WORD.match(text, m.end())
        if word is not None:
            yield m.end(), word.end(), "a variable name after -v"
    for m in _NAME_COMMAND.finditer(text):
        for word in _WORD.finditer(text, m.end(), _command_end(text, m.end())):
            if not word.group(0).startswith("-"):
                eq = word.group(0).find("=")
                end = word.end() if eq < 0 else word.start() + eq
                yield word.start(), end, f"a variable name of {m.group(0)}"


def _shell_texts(value: Any) -> Iterator[str]:
    """The script text of a ``commands``/``shellProfile`` value, whole-reference elements left
    out (their value *is* the command, restricted by ``allowedPattern``/``allowedValues``)."""
    if isinstance(value, str):
        if not _is_ref(value):
            yield value
    elif isinstance(value, list):
        yield "\n".join(v for v in value if isinstance(v, str) and not _is_ref(v))


def check_shell_arithmetic(value: Any, params: Mapping[str, list[str]]) -> None:
    """Refuse (``InvalidParameters``) a parameter referenced where bash evaluates arithmetic
    (:func:`arithmetic_spans`) unless each of its values is a plain integer (``-?[0-9]+``)."""
    for text in _shell_texts(value):
        spans = arithmetic_spans(text)
        if not spans:
            continue
        for m in _REF.finditer(text):
            name = m.group(1)
            where = next((w for s, e, w in spans if s <= m.start() < e), None)
            if where is None or name not in params:
                continue
            for v in params[name]:
                if _INTEGER.fullmatch(v) is None:
                    raise _invalid(
                        f"Parameter {name} is used where bash evaluates it ({where}), so its "
                        f"value could run as code: it must be an integer, not {v!r}."
                    )


def check_document_arithmetic(document: Mapping[str, Any], params: Mapping[str, list[str]]) -> None:
    """:func:`check_shell_arithmetic` for every shell text of a Session document: the
    ``commands`` of command documents and ``inputs.shellProfile.linux``."""
    inputs = document.get("inputs")
    profile = inputs.get("shellProfile") if isinstance(inputs, Mapping) else None
    if isinstance(profile, Mapping):
        check_shell_arithmetic(profile.get("linux"), params)
    props = document.get("properties")
    if document.get("sessionType") in _COMMAND_TYPES and isinstance(props, Mapping):
        for cfg in props.values():
            if isinstance(cfg, Mapping):
                check_shell_arithmetic(cfg.get("commands"), params)


def interpolate_inputs(inputs: Any, params: Mapping[str, list[str]]) -> Any:
    """A document's ``inputs`` with parameters filled in; ``shellProfile.linux`` (shell
    text) gets :func:`interpolate_shell`'s quoting, everything else :func:`interpolate`."""
    if not isinstance(inputs, Mapping):
        return inputs
    out = {k: interpolate(v, params) for k, v in inputs.items() if k != "shellProfile"}
    profile = inputs.get("shellProfile")
    if isinstance(profile, Mapping):
        resolved = {k: interpolate(v, params) for k, v in profile.items()}
        if "linux" in profile:
            linux = interpolate_shell(profile["linux"], params)
            resolved["linux"] = "\n".join(linux) if isinstance(linux, list) else linux
        out["shellProfile"] = resolved
    elif "shellProfile" in inputs:
        out["shellProfile"] = interpolate(profile, params)
    return out


def interpolate_properties(
    session_type: str, properties: Any, params: Mapping[str, list[str]]
) -> Any:
    """A document's ``properties`` with parameters filled in; for the command session types
    ``<platform>.commands`` gets :func:`interpolate_shell`'s quoting."""
    if session_type not in _COMMAND_TYPES or not isinstance(properties, Mapping):
        return interpolate(properties, params)
    out: dict[str, Any] = {}
    for platform, cfg in properties.items():
        if isinstance(cfg, Mapping):
            out[platform] = {
                k: interpolate_shell(v, params) if k == "commands" else interpolate(v, params)
                for k, v in cfg.items()
            }
        else:
            out[platform] = interpolate(cfg, params)
    return out


def is_true(value: Any) -> bool:
    """A document boolean: JSON ``true`` or the string ``"true"`` (any case), as the agent
    reads ``runAsEnabled``, ``runAsElevated``, ``separateOutputStream``."""
    return value is True or (isinstance(value, str) and value.strip().lower() == "true")


# -- Session schema -----------------------------------------------------------------------

_TOP_KEYS = ("schemaVersion", "description", "sessionType", "inputs", "parameters", "properties")
_STRING_INPUTS = (
    "s3BucketName",
    "s3KeyPrefix",
    "cloudWatchLogGroupName",
    "kmsKeyId",
    "runAsDefaultUser",
)
# Booleans the agent also accepts as "true"/"false" strings.
_BOOL_INPUTS = ("s3EncryptionEnabled", "cloudWatchEncryptionEnabled", "runAsEnabled")
_STRICT_BOOL_INPUTS = ("cloudWatchStreamingEnabled",)
_MINUTE_INPUTS = {"idleSessionTimeout": (1, 60), "maxSessionDuration": (1, 1440)}
_INPUT_KEYS = (
    *_STRING_INPUTS,
    *_BOOL_INPUTS,
    *_STRICT_BOOL_INPUTS,
    *_MINUTE_INPUTS,
    "shellProfile",
)
_SHELL_PROFILE_KEYS = ("linux", "windows")
_PORT_PROPERTIES = (
    "portNumber",
    "host",
    "type",
    "localPortNumber",
    "localUnixSocket",
    "localConnectionType",
)
_COMMAND_PLATFORMS = {"linux": "Linux", "windows": "Windows", "macos": "MacOS"}
_COMMAND_TYPES = ("InteractiveCommands", "NonInteractiveCommands")
_SEPARATOR = re.compile(r"[0-9a-zA-Z\r\n_:-]{0,30}")
_PARAM_NAME = re.compile(r"[a-zA-Z0-9_]{1,128}")
_PARAM_KEYS = (
    "type",
    "description",
    "default",
    "allowedValues",
    "allowedPattern",
    "displayType",
    "minItems",
    "maxItems",
    "minChars",
    "maxChars",
)
_BOOL_STRINGS = ("true", "false")


def _type_name(v: Any) -> str:
    if isinstance(v, bool):
        return "Boolean"
    if isinstance(v, (int, float)):
        return "Number"
    if isinstance(v, str):
        return "String"
    if isinstance(v, list):
        return "List"
    if isinstance(v, dict):
        return "Map"
    return "Null"


def _expect(cond: bool, message: str) -> None:
    if not cond:
        raise _content_error(message)


def _check_inputs(inputs: Any) -> None:
    _expect(isinstance(inputs, dict), "inputs must be a map of session preferences.")
    for key, value in inputs.items():
        where = f"inputs.{key}"
        if key not in _INPUT_KEYS:
            raise _content_error(
                f"Unsupported input {key!r}. Valid inputs: {', '.join(_INPUT_KEYS)}."
            )
        if _is_ref(value):
            continue
        if key in _STRING_INPUTS:
            _expect(isinstance(value, str), f"{where} must be a String, not {_type_name(value)}.")
        elif key in _BOOL_INPUTS:
            _expect(
                isinstance(value, bool)
                or (isinstance(value, str) and value.lower() in _BOOL_STRINGS),
                f"{where} must be a Boolean (true or false).",
            )
        elif key in _STRICT_BOOL_INPUTS:
            _expect(isinstance(value, bool), f"{where} must be a Boolean (true or false).")
        elif key in _MINUTE_INPUTS:
            lo, hi = _MINUTE_INPUTS[key]
            ok = isinstance(value, str) and (
                value == ""
                or (
                    value.isascii()
                    and value.isdigit()
                    and lo <= int(value) <= hi
                    and not value.startswith("0")
                )
            )
            _expect(
                ok,
                f"{where} must be a String of whole minutes between {lo} and {hi}, "
                f"not {json.dumps(value)}.",
            )
        elif key == "shellProfile":
            _expect(isinstance(value, dict), f"{where} must be a map with keys linux, windows.")
            for os_name, cmd in value.items():
                _expect(
                    os_name in _SHELL_PROFILE_KEYS,
                    f"Unsupported {where} key {os_name!r}. Valid keys: linux, windows.",
                )
                _expect(isinstance(cmd, str), f"{where}.{os_name} must be a String.")


def _check_default(name: str, ptype: str, default: Any) -> None:
    where = f"parameters.{name}.default"
    if ptype == "String":
        _expect(isinstance(default, str), f"{where} must be a String.")
    elif ptype == "StringList":
        _expect(
            isinstance(default, list) and all(isinstance(x, str) for x in default),
            f"{where} must be a StringList.",
        )
    elif ptype == "Boolean":
        _expect(
            isinstance(default, bool)
            or (isinstance(default, str) and default.lower() in _BOOL_STRINGS),
            f"{where} must be a Boolean.",
        )
    elif ptype == "Integer":
        _expect(
            (isinstance(default, int) and not isinstance(default, bool))
            or (isinstance(default, str) and re.fullmatch(r"-?[0-9]+", default) is not None),
            f"{where} must be an Integer.",
        )
    elif ptype == "StringMap":
        _expect(isinstance(default, dict), f"{where} must be a StringMap.")
    elif ptype == "MapList":
        _expect(
            isinstance(default, list) and all(isinstance(x, dict) for x in default),
            f"{where} must be a MapList.",
        )


def _check_parameters(params: Any) -> None:
    _expect(isinstance(params, dict), "parameters must be a map of parameter definitions.")
    for name, spec in params.items():
        _expect(
            isinstance(name, str) and _PARAM_NAME.fullmatch(name) is not None,
            f"Invalid parameter name {name!r}: names are letters, digits and _.",
        )
        where = f"parameters.{name}"
        _expect(isinstance(spec, dict), f"{where} must be a map.")
        for key in spec:
            _expect(
                key in _PARAM_KEYS,
                f"Unsupported {where} property {key!r}. Valid "
                f"properties: {', '.join(_PARAM_KEYS)}.",
            )
        ptype = spec.get("type")
        _expect(
            ptype in PARAMETER_TYPES,
            f"{where}.type must be one of {', '.join(PARAMETER_TYPES)}"
            f"{'' if ptype is None else f', not {json.dumps(ptype)}'}.",
        )
        if "description" in spec:
            _expect(isinstance(spec["description"], str), f"{where}.description must be a String.")
        if "displayType" in spec:
            _expect(
                spec["displayType"] in ("textfield", "textarea"),
                f"{where}.displayType must be textfield or textarea.",
            )
        for k in ("minItems", "maxItems", "minChars", "maxChars"):
            if k in spec:
                v = spec[k]
                _expect(
                    isinstance(v, int) and not isinstance(v, bool) and v >= 0,
                    f"{where}.{k} must be a non-negative Integer.",
                )
        allowed = spec.get("allowedValues")
        if allowed is not None:
            _expect(
                isinstance(allowed, list)
                and len(allowed) > 0
                and all(isinstance(x, (str, int, float, bool)) for x in allowed),
                f"{where}.allowedValues must be a non-empty list of values.",
            )
        pattern = spec.get("allowedPattern")
        if pattern is not None:
            _expect(isinstance(pattern, str), f"{where}.allowedPattern must be a String.")
            try:
                compile_pattern(pattern)
            except PatternError as exc:
                raise _content_error(
                    f"{where}.allowedPattern is not a valid regular expression: {exc.reason}."
                ) from None
        if "default" in spec:
            _check_default(name, ptype, spec["default"])
            defaults = _as_values(spec["default"])
            try:
                _check_values(name, spec, defaults)
            except DocumentError as exc:
                raise _content_error(
                    f"Default value of parameter {name} is not valid: {exc.message}"
                ) from exc


def _check_string_property(where: str, value: Any) -> None:
    _expect(isinstance(value, str), f"{where} must be a String, not {_type_name(value)}.")


def _check_properties(session_type: str, props: Any) -> None:
    if session_type == "Standard_Stream":
        _expect(
            props is None or props == {},
            "properties aren't supported for Standard_Stream sessions.",
        )
        return
    _expect(isinstance(props, dict), f"properties are required for {session_type} sessions.")
    if session_type == "Port":
        for key, value in props.items():
            _expect(
                key in _PORT_PROPERTIES,
                f"Unsupported property {key!r} for Port sessions. "
                f"Valid properties: {', '.join(_PORT_PROPERTIES)}.",
            )
            _check_string_property(f"properties.{key}", value)
        _expect("portNumber" in props, "properties.portNumber is required for Port sessions.")
        port = props["portNumber"]
        _expect(
            _is_ref(port) or (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535),
            f"properties.portNumber must be a port number (1-65535), not {port!r}.",
        )
        if "type" in props and not _is_ref(props["type"]):
            _expect(
                props["type"] == "LocalPortForwarding",
                "properties.type must be LocalPortForwarding.",
            )
        return
    # InteractiveCommands / NonInteractiveCommands
    _expect(
        len(props) > 0,
        f"properties must define commands for at least one of {', '.join(_COMMAND_PLATFORMS)}.",
    )
    extra = (
        ("separateOutputStream", "stdOutSeparatorPrefix", "stdErrSeparatorPrefix")
        if session_type == "NonInteractiveCommands"
        else ()
    )
    for os_name, cfg in props.items():
        where = f"properties.{os_name}"
        _expect(
            os_name in _COMMAND_PLATFORMS,
            f"Unsupported platform {os_name!r} in properties. "
            f"Valid platforms: {', '.join(_COMMAND_PLATFORMS)}.",
        )
        _expect(isinstance(cfg, dict), f"{where} must be a map.")
        for key, value in cfg.items():
            _expect(
                key in ("commands", "runAsElevated", *extra), f"Unsupported property {where}.{key}."
            )
            if _is_ref(value):
                continue
            if key == "commands":
                _expect(
                    isinstance(value, str)
                    or (isinstance(value, list) and all(isinstance(c, str) for c in value)),
                    f"{where}.commands must be a String or a list of Strings.",
                )
            elif key in ("runAsElevated", "separateOutputStream"):
                _expect(
                    isinstance(value, bool)
                    or (isinstance(value, str) and value.lower() in _BOOL_STRINGS),
                    f"{where}.{key} must be a Boolean.",
                )
            else:
                _expect(
                    isinstance(value, str) and _SEPARATOR.fullmatch(value) is not None,
                    f"{where}.{key} must match ^[0-9a-zA-Z\\r\\n_:-]{{0,30}}$.",
                )
        _expect("commands" in cfg, f"{where}.commands is required.")


def validate_document(doc: Mapping[str, Any], document_type: str = "Command") -> None:
    """Check a parsed document for ``document_type``; raises :class:`DocumentError`.

    Session documents get the full schema (``InvalidDocumentSchemaVersion`` for a
    ``schemaVersion`` other than ``"1.0"``, ``InvalidDocumentContent`` for the rest). Other
    types only need a ``schemaVersion`` (Hatchway does not run them).
    """
    version = schema_version(doc)
    if version is None:
        raise _content_error("schemaVersion is required and must be a String.")
    if document_type != "Session":
        _check_steps(doc)
        return
    if version not in SESSION_SCHEMA_VERSIONS:
        raise DocumentError(
            "InvalidDocumentSchemaVersion",
            f"{version} is not a valid schema version for Session document type",
        )
    for key in doc:
        _expect(
            key in _TOP_KEYS,
            f"Unsupported property {key!r} in a Session document. Valid "
            f"properties: {', '.join(_TOP_KEYS)}.",
        )
    if "description" in doc:
        _expect(isinstance(doc["description"], str), "description must be a String.")
    session_type = doc.get("sessionType")
    _expect(
        session_type in SESSION_TYPES,
        "sessionType is required"
        if session_type is None
        else f"Invalid sessionType {json.dumps(session_type)}. Valid values: "
        f"{', '.join(SESSION_TYPES)}.",
    )
    if "inputs" in doc:
        _check_inputs(doc["inputs"])
    params = doc.get("parameters", {})
    if "parameters" in doc:
        _check_parameters(params)
    _check_properties(str(session_type), doc.get("properties"))
    undefined = sorted(references({k: doc.get(k) for k in ("inputs", "properties")}) - set(params))
    _expect(
        not undefined,
        f"Parameter {undefined[0] if undefined else ''} is referenced but "
        "not defined in parameters.",
    )


def _check_steps(doc: Mapping[str, Any]) -> None:
    """The structure every runnable document type shares, whatever its schema version: steps
    (``mainSteps``, schema 2.x and Automation's 0.3) are a list of objects naming an action
    and a step name, ``runtimeConfig`` (schema 1.2) and ``parameters`` are objects. Hatchway
    does not run these documents, but it must not keep one no agent could read."""
    steps = doc.get("mainSteps")
    if steps is not None:
        _expect(isinstance(steps, list), "mainSteps must be a List of steps.")
        for index, step in enumerate(steps):
            _expect(isinstance(step, dict), f"mainSteps[{index}] must be an Object.")
            for key in ("action", "name"):
                _expect(
                    isinstance(step.get(key), str) and bool(step[key]),
                    f"mainSteps[{index}].{key} is required and must be a String.",
                )
    if "runtimeConfig" in doc:
        _expect(isinstance(doc["runtimeConfig"], dict), "runtimeConfig must be an Object.")
    if "parameters" in doc:
        _expect(isinstance(doc["parameters"], dict), "parameters must be an Object.")


def check_format(document_type: str, document_format: str) -> None:
    """TEXT content is for a few document types only (ApplicationConfiguration, ChangeCalendar)."""
    if document_format == "TEXT" and document_type not in _TEXT_TYPES:
        raise _content_error(
            f"The TEXT document format isn't supported for {document_type} "
            "documents. Use JSON or YAML."
        )


def platform_types(doc: Mapping[str, Any], document_type: str) -> list[str]:
    """``PlatformTypes`` AWS reports: command documents list the platforms they define."""
    if document_type == "Session" and doc.get("sessionType") in (
        "InteractiveCommands",
        "NonInteractiveCommands",
    ):
        props = doc.get("properties")
        if isinstance(props, dict):
            found = {_COMMAND_PLATFORMS[k] for k in props if k in _COMMAND_PLATFORMS}
            return [p for p in ALL_PLATFORMS if p in found]
    return list(ALL_PLATFORMS)


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    return json.dumps(value)


def parameter_summary(doc: Mapping[str, Any]) -> list[dict[str, str]]:
    """``DocumentDescription.Parameters``: ``[{Name, Type, Description, DefaultValue}]``."""
    out: list[dict[str, str]] = []
    params = doc.get("parameters")
    if not isinstance(params, dict):
        return out
    for name, spec in params.items():
        if not isinstance(spec, dict):
            continue
        item = {"Name": str(name), "Type": str(spec.get("type", "String"))}
        if isinstance(spec.get("description"), str):
            item["Description"] = spec["description"]
        if "default" in spec:
            d = spec["default"]
            item["DefaultValue"] = (
                ",".join(_scalar(x) for x in d) if isinstance(d, list) else _scalar(d)
            )
        out.append(item)
    return out


# -- StartSession parameters ----------------------------------------------------------------


def _as_values(default: Any) -> list[str]:
    if isinstance(default, list):
        return [_scalar(x) for x in default]
    return [_scalar(default)]


def _invalid(message: str) -> DocumentError:
    return DocumentError("InvalidParameters", message)


def _pattern_allows(name: str, pattern: str, value: str) -> bool:
    try:
        return pattern_matches(pattern, value)
    except PatternError as exc:  # stored before patterns were checked with RE2
        raise _invalid(
            f"Parameter {name} has an allowedPattern that cannot be used: {exc.reason}."
        ) from None


def _check_values(name: str, spec: Mapping[str, Any], values: list[str]) -> None:
    ptype = spec.get("type", "String")
    if ptype in ("String", "Boolean", "Integer") and len(values) != 1:
        raise _invalid(f"Parameter {name} takes exactly one value; {len(values)} were given.")
    if ptype == "Boolean" and values[0].lower() not in _BOOL_STRINGS:
        raise _invalid(f"Parameter {name} must be true or false, not {values[0]!r}.")
    if ptype == "Integer" and re.fullmatch(r"-?[0-9]+", values[0]) is None:
        raise _invalid(f"Parameter {name} must be an Integer, not {values[0]!r}.")
    if ptype == "StringList":
        lo, hi = spec.get("minItems"), spec.get("maxItems")
        if isinstance(lo, int) and len(values) < lo:
            raise _invalid(f"Parameter {name} needs at least {lo} values.")
        if isinstance(hi, int) and len(values) > hi:
            raise _invalid(f"Parameter {name} takes at most {hi} values.")
    allowed = spec.get("allowedValues")
    pattern = spec.get("allowedPattern")
    min_chars, max_chars = spec.get("minChars"), spec.get("maxChars")
    for v in values:
        if isinstance(allowed, list) and v not in [_scalar(a) for a in allowed]:
            raise _invalid(
                f"Parameter {name} value {v!r} is not one of the allowed values: "
                f"{', '.join(_scalar(a) for a in allowed)}."
            )
        if isinstance(pattern, str) and not _pattern_allows(name, pattern, v):
            raise _invalid(
                f'Parameter "{name}" "{v}" failed to satisfy constraint: '
                f"Member must satisfy regular expression pattern: {pattern}"
            )
        if isinstance(min_chars, int) and len(v) < min_chars:
            raise _invalid(f"Parameter {name} value must have at least {min_chars} characters.")
        if isinstance(max_chars, int) and len(v) > max_chars:
            raise _invalid(f"Parameter {name} value must have at most {max_chars} characters.")


def validate_parameters(
    document: Mapping[str, Any], params: Mapping[str, list[str]] | None
) -> dict[str, list[str]]:
    """``StartSession.Parameters`` checked against ``document``'s definitions, defaults added.

    Raises :class:`DocumentError` ``InvalidParameters``: a name the document does not define,
    a required parameter (one without ``default``) missing, a value outside ``allowedValues``
    or not matching ``allowedPattern`` (RE2, searched as the agent's Go regexp does; AWS's own
    patterns are anchored: see :mod:`hatchway.ssm.patterns`), wrong arity or type, or outside
    min/max items/chars.
    Also a value that is not an integer for a parameter the document's shell text uses in
    arithmetic (:func:`check_document_arithmetic`).
    """
    defs = document.get("parameters") or {}
    given = dict(params or {})
    for name in given:
        if name not in defs:
            raise _invalid(
                f"Parameter {name} is not defined in the document. You can only "
                "supply values to parameters defined in the SSM document."
            )
    out: dict[str, list[str]] = {}
    for name, spec in defs.items():
        spec = spec if isinstance(spec, dict) else {}
        if name in given:
            values = [str(v) for v in given[name]]
        elif "default" in spec:
            values = _as_values(spec["default"])
        else:
            raise _invalid(
                f"Parameter {name} is required: you must specify values for all "
                "required parameters in the SSM document."
            )
        if name in given:
            _check_values(name, spec, values)
        out[name] = values
    check_document_arithmetic(document, out)
    return out


# -- tags --------------------------------------------------------------------------------------

_TAG_PUNCT = set("_.:/=+-@")


def _tag_chars_ok(s: str) -> bool:
    return all(c in _TAG_PUNCT or unicodedata.category(c)[0] in "LZN" for c in s)


def validate_tag(key: str, value: str | None = None) -> str | None:
    """AWS's tag rules (key 1–128, value 0–256, ``[\\p{L}\\p{Z}\\p{N}_.:/=+\\-@]*``, no
    ``aws:`` key prefix); returns the problem as a sentence, or ``None``."""
    if not 1 <= len(key) <= 128:
        return f"Tag key '{key}' must be between 1 and 128 characters long."
    if not _tag_chars_ok(key):
        return (
            f"Tag key '{key}' failed to satisfy constraint: Member must satisfy regular "
            "expression pattern: ^([\\p{L}\\p{Z}\\p{N}_.:/=+\\-@]*)$"
        )
    if key.lower().startswith("aws:"):
        return f"Tag keys starting with 'aws:' are reserved: '{key}'."
    if value is not None:
        if len(value) > 256:
            return f"Tag value for key '{key}' must be at most 256 characters long."
        if not _tag_chars_ok(value):
            return (
                f"Tag value '{value}' failed to satisfy constraint: Member must satisfy "
                "regular expression pattern: ^([\\p{L}\\p{Z}\\p{N}_.:/=+\\-@]*)$"
            )
    return None


# -- AWS-owned documents and the default preferences ------------------------------------------
#
# They are data, not code: hatchway/ssm/data/documents/<Name>.json holds each document's content
# as AWS publishes it (the text stored and returned by GetDocument, byte for byte), index.json
# their nominal dates and types, SSM-SessionManagerRunShell.json the default preferences. Read
# with importlib.resources on first use (the wheel carries them as package data).

_DATA = ("data", "documents")
_INDEX = "index.json"
_PREFERENCES_FILE = "SSM-SessionManagerRunShell.json"
DEFAULT_PREFERENCES_DESCRIPTION = "Document to hold regional settings for Session Manager"


@dataclass(frozen=True)
class AwsDocument:
    """An AWS-owned document: name, content (JSON text), its nominal date and its type
    (``Session``, or ``Command`` for Run Command's documents)."""

    name: str
    content: str
    created: datetime
    document_type: str = "Session"

    @property
    def document(self) -> dict[str, Any]:
        return parse_content(self.content, "JSON")


def _data_text(name: str) -> str:
    """A file of hatchway/ssm/data/documents, without its final newline."""
    path = resources.files("hatchway.ssm").joinpath(*_DATA, name)
    return path.read_text(encoding="utf-8").removesuffix("\n")


@functools.cache
def aws_documents() -> Mapping[str, AwsDocument]:
    """The AWS-owned documents the broker serves, by name (read once, then kept)."""
    index = json.loads(_data_text(_INDEX))
    return MappingProxyType(
        {
            name: AwsDocument(
                name,
                _data_text(f"{name}.json"),
                datetime.fromisoformat(meta["created"]).astimezone(UTC),
                meta["documentType"],
            )
            for name, meta in index.items()
        }
    )


@functools.cache
def _preferences_text() -> str:
    return _data_text(_PREFERENCES_FILE)


def default_preferences() -> dict[str, Any]:
    """Content ``SSM-SessionManagerRunShell`` starts with (a fresh copy): a shell as
    ``ssm-user``, 20 minutes idle timeout, no maximum duration, no logging, no KMS encryption,
    no Run As."""
    doc: dict[str, Any] = json.loads(_preferences_text())
    return doc
