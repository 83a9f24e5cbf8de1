"""YAML reading with one-line errors, and atomic text writes (shared by hwmodels and ubnas)."""
from __future__ import annotations

import os
import re
import reprlib
import stat
import tempfile
from pathlib import Path
from typing import Any, Optional, Type, Union

import yaml

PathLike = Union[str, os.PathLike]


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (plain PyYAML keeps the last one,
    so a typo'd duplicate silently overrides the value above it).  Keys brought in by a merge
    (``<<: *anchor``) may be overridden, as YAML means them to be."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":   # SafeConstructor flattens these below
                continue
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, bool):   # no file of ours has such a key: 'on: 1' was "unknown key 'True'"
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key_node.value!r} reads as {str(key).lower()} in YAML; quote it "
                                f"if it is a name", key_node.start_mark)
            if not isinstance(key, (str, int, float, bool)):   # unhashable ones: PyYAML's own error
                continue
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice in one mapping", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


# YAML 1.2's integers, not 1.1's: "010" is ten (1.1: octal 8) and "1:28" is no integer (1.1: base 60,
# 88); 0x.. and 0o.. keep their bases.  A size typed with a leading zero is then the size it reads as.
_INT_12 = re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$")
# and YAML 1.2's floats: "1:30.0" is no float (1.1: base 60, 90.0), "1_000.5" none either, and
# "3e-3" is one (1.1 wants a dot).  A dot or an exponent is required, so the integers above stay ints.
_FLOAT_12 = re.compile(r"^(?:[-+]?(?:[0-9]+\.[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?|[-+]?[0-9]+[eE][-+]?[0-9]+"
                       r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$")
_UniqueKeyLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_UniqueKeyLoader.add_implicit_resolver("tag:yaml.org,2002:int", _INT_12, list("-+0123456789"))
_UniqueKeyLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_12, list("-+0123456789."))


def number_text(text: str) -> Optional[Union[int, float]]:
    """The number a (quoted) string spells in YAML 1.2's syntax, '3e-3' or '12' (an int, which may be
    past float's range), else None: '1:30.0' and '1_000.5', which Python's float() would take, are
    none (nor are 0x.. and 0o..)."""
    text = text.strip()
    if text[:2] in ("0x", "0o") or len(text) > MAX_INT_DIGITS or not (_INT_12.match(text) or _FLOAT_12.match(text)):
        return None
    return yaml.load(text, Loader=_UniqueKeyLoader)   # the loader's own constructors (.inf, .nan)


MAX_INT_DIGITS = 4000   # Python refuses to convert longer decimal strings (sys.int_info's 4300)


def _construct_int_12(loader, node) -> int:
    text = loader.construct_scalar(node)
    if len(text) > MAX_INT_DIGITS:   # else a ValueError naming neither the file nor the line
        raise yaml.constructor.ConstructorError(None, None, f"an integer of {len(text)} digits (at most "
                                                f"{MAX_INT_DIGITS})", node.start_mark)
    if text[:2] in ("0x", "0o"):
        return int(text[2:], 16 if text[1] == "x" else 8)
    return int(text, 10)


_UniqueKeyLoader.add_constructor("tag:yaml.org,2002:int", _construct_int_12)


class YamlDumper(yaml.SafeDumper):
    """SafeDumper that quotes every string the loader above would read as an integer: PyYAML
    resolves YAML 1.1's, so the string '0o17' was written bare and read back as 15."""


YamlDumper.add_implicit_resolver("tag:yaml.org,2002:int", _INT_12, list("-+0123456789"))
YamlDumper.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_12, list("-+0123456789."))   # '1e5' quoted


def dump_yaml(value: Any, **kwargs) -> str:
    """``yaml.dump`` with YamlDumper, keys in their order: text ``read_yaml`` reads back as ``value``."""
    return yaml.dump(value, Dumper=YamlDumper, sort_keys=False, **kwargs)


MAX_YAML_VALUES = 1_000_000   # a file of a few kB of nested aliases can stand for billions of values


def _structure_problem(value: Any) -> Optional[str]:
    """Why a loaded YAML value is unusable: a mapping or list that contains itself (an alias inside
    its own anchor), or more than MAX_YAML_VALUES values once aliases are expanded; else None.
    Walked without recursion: the value may be deeper than Python's stack."""
    seen, stack, on_path = 0, [(value, False)], set()
    while stack:
        item, leaving = stack.pop()
        if leaving:
            on_path.discard(id(item))
            continue
        seen += 1
        if seen > MAX_YAML_VALUES:
            return f"more than {MAX_YAML_VALUES:,} values once its aliases are expanded"
        if isinstance(item, (dict, list)):
            if id(item) in on_path:
                return "an alias refers to the mapping or list that holds it (a structure that contains itself)"
            on_path.add(id(item))
            stack.append((item, True))
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, False) for child in children)
    return None


_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxdict, _SHORT.maxlist, _SHORT.maxtuple = 3, 4, 6, 6
_SHORT.maxstring = _SHORT.maxother = _SHORT.maxlong = 50


def short_repr(value: Any, limit: int = 80) -> str:
    """repr(value) for a one-line error, at most ``limit`` characters.  Bounded while it is built:
    a few bytes of YAML aliases can stand for a structure whose full repr never ends."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10 ** 18:
        # its size is what matters; str() of more than 4300 digits raises
        return f"~{'-' if value < 0 else ''}2**{abs(value).bit_length() - 1}"
    text = _SHORT.repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _line_column(content, offset: int, newline) -> str:
    """' line L column C:' of position ``offset`` in ``content`` (bytes or str), both from 1."""
    line_start = content.rfind(newline, 0, offset) + 1
    return f" line {content.count(newline, 0, offset) + 1} column {offset - line_start + 1}:"


def is_bare_name(text: str) -> bool:
    """Whether ``text`` has no directory part ('tiny', not './tiny' or 'a/tiny'): only such a name
    is looked up among the shipped presets and spaces."""
    return not os.path.dirname(text) and os.sep not in text and (os.altsep is None or os.altsep not in text)


def read_utf8(path: PathLike, error: Type[Exception] = ValueError) -> str:
    """The text of ``path`` as UTF-8 whatever the locale (YAML's encoding; a byte-order mark is
    dropped).  A byte that is not UTF-8 is ``error("FILE: line L column C: not UTF-8 text (...)")``;
    a device is ``error("FILE: is a device, not a file")`` (/dev/zero would be read until memory
    runs out); a named pipe is read (``--config <(...)``); an OSError propagates."""
    mode = os.stat(path).st_mode
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        raise error(f"{path}: is a device, not a file")
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        where = _line_column(data, exc.start, b"\n")
        raise error(f"{path}:{where} not UTF-8 text (byte 0x{data[exc.start]:02x}: {exc.reason})") from None


def read_yaml(path: PathLike, error: Type[Exception] = ValueError, text: Optional[str] = None) -> Any:
    """Parse the YAML file ``path`` (or ``text`` read from it) with YAML 1.2's integers (``010`` is
    10); a syntax error, a key given twice in one mapping, a structure that contains itself or
    expands past MAX_YAML_VALUES, or an unreadable file becomes ``error("FILE: line L column C: invalid YAML (problem)")``
    (``error("FILE: cannot read (reason)")``)."""
    if text is None:
        try:
            text = read_utf8(path, error)
        except OSError as exc:
            raise error(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        value = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1} column {mark.column + 1}:" if mark else ""
        if mark is None and isinstance(getattr(exc, "position", None), int):   # a ReaderError (NUL, say)
            where = _line_column(text, exc.position, "\n")
        problem = getattr(exc, "problem", None) or getattr(exc, "reason", None) or str(exc).splitlines()[0]
        if "'\\t'" in problem:   # PyYAML takes no tab where YAML 1.2 would (after a colon, before a comment)
            problem += "; YAML is indented and spaced with spaces: replace the tab"
        raise error(f"{path}:{where} invalid YAML ({problem})") from None
    except RecursionError:   # PyYAML composes nested collections recursively
        raise error(f"{path}: invalid YAML (nested too deeply to read)") from None
    problem = _structure_problem(value)
    if problem:
        raise error(f"{path}: invalid YAML ({problem})")
    return value


def durable_replace(tmp: PathLike, path: PathLike) -> None:
    """``os.replace(tmp, path)`` once tmp's bytes are on the disk, then the directory entry too: after
    a power cut ``path`` holds the old file or the new one, never an empty one (a file system may
    write the rename before the data it names)."""
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    try:
        directory = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    except OSError:   # no directory descriptors on this platform (Windows): the rename is what it is
        return
    try:
        os.fsync(directory)
    except OSError:
        pass
    finally:
        os.close(directory)


def atomic_write_text(path: PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through a temp file + rename (``durable_replace``): never half-written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        umask = os.umask(0)   # mkstemp makes the file 0600; give it the mode open() would
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        durable_replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# the PNG 'Software' text of every figure ubnas draws: how a command tells its own earlier figure,
# which it may replace or remove, from a user's file of the same name, which it must not touch
PNG_SOFTWARE = "ubnas"


def png_metadata(command: str) -> dict:
    """matplotlib ``savefig(metadata=...)`` that marks a PNG as drawn by ubnas ``command``."""
    return {"Software": f"{PNG_SOFTWARE} {command}"}


def drawn_by_ubnas(path: PathLike) -> bool:
    """Whether ``path`` is a PNG that ubnas drew (``png_metadata``); False for any other file."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(1 << 16)   # matplotlib writes its text chunks before the image data
    except OSError:
        return False
    return head.startswith(b"\x89PNG") and b"tEXtSoftware\x00" + PNG_SOFTWARE.encode() + b" " in head
