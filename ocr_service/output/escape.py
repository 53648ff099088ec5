r"""Recognised text -> Markdown that shows exactly that text (metacharacters made literal).

A line engine reads characters off the page; none of them is meant as Markdown. A line
`# comment` is not a heading, `<json5format::Value>` is not an HTML tag and
`asn1_array2tree` has no emphasis. CommonMark lets any ASCII punctuation be escaped
with a backslash, so we escape every character that can start inline syntax anywhere
in a line, and the characters that start a block (heading, quote, list, thematic break,
setext underline) only where they start the line. Whitespace runs become one space: a
line's leading spaces would otherwise make an indented code block.

>>> print(escape_markdown("# comment"))
\# comment
>>> print(escape_markdown("<json5format::Value> & asn1_array2tree"))
\<json5format::Value\> \& asn1\_array2tree
>>> print(escape_markdown("1. not a list, - nor this; 1.1 is no marker"))
1\. not a list, - nor this; 1.1 is no marker
>>> print(escape_markdown("- [x] a|b *c* `d` ~e~ \\f"))
\- \[x\] a\|b \*c\* \`d\` \~e\~ \\f
"""

from __future__ import annotations

import re

# Inline syntax: escapes, code spans, emphasis, links and images, raw HTML and
# autolinks, entities, table cells, strikethrough (GFM).
_INLINE = re.compile(r"([\\`*_\[\]<>&|~])")
# Block syntax at the start of a line (">" is already escaped inline): an ATX heading,
# a "-" or "+" bullet, an ordered-list marker (up to 9 digits, then "." or ")"), each
# followed by a space or the end; a line of only "-" or "=" (thematic break, setext
# underline under the previous line).
_BLOCK_START = re.compile(r"^(?:(#{1,6}|[-+])(?=\s|$)|(\d{1,9})([.)])(?=\s|$)|([-=])(?=[-=\s]*$))")
# A closing sequence of an ATX heading: "#"s at the end of a line after a space.
_CLOSING_HASHES = re.compile(r"(\s)(#+)$")
_WHITESPACE = re.compile(r"\s+")


def escape_markdown(text: str) -> str:
    """One line of recognised text as Markdown that renders to that same text.

    Newlines and other whitespace runs become single spaces, and the ends are trimmed.
    """
    line = _WHITESPACE.sub(" ", text).strip()
    line = _INLINE.sub(r"\\\1", line)
    line = _BLOCK_START.sub(_escape_block_start, line, count=1)
    return _CLOSING_HASHES.sub(r"\1\\\2", line)


def _escape_block_start(match: re.Match[str]) -> str:
    if match.group(2):
        return f"{match.group(2)}\\{match.group(3)}"
    return "\\" + match.group(0)
