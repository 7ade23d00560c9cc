"""Text that comes from outside (files, paths, profiles, environment): split into lines, shown on a terminal.

One rule each, used everywhere: a line ends at ``\\n`` (``\\r\\n`` too) and nowhere else; a line shown to
the user has every control and format character escaped, so no file name or shared profile can move the
cursor, clear the screen or forge a second ``Error:`` line.
"""

from __future__ import annotations


def text_lines(text: str) -> list[str]:
    """``text`` cut at ``\\n`` only (a ``\\r`` before it goes with it): U+2028, form feeds and lone ``\\r`` stay
    inside their line, unlike :meth:`str.splitlines`."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def escape_controls(text: object) -> str:
    """``text`` as one terminal line: control and format characters (newlines, ESC, bidi overrides, U+2028)
    written as Python escapes such as ``\\n`` and ``\\x1b``; printable text, any script, is left as it is."""
    text = str(text)
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)
