"""How the user's input is echoed in error messages: escaped, bounded, with secrets masked.

Every error line that repeats what the user typed goes through :func:`shown_input` (or
:func:`masked_url` for a URL that may hold a password), so a 5,000-character argument, a newline,
a terminal escape or a character Python prints as ``\\U00011daa`` can never turn one clear line
into a screenful. Lengths are counted after escaping: that is what reaches the terminal.
"""

from __future__ import annotations

import re

__all__ = ["ECHO_LIMIT", "LINE_LIMIT", "URL_ENCODE_HINT", "keyed", "masked_url", "one_line", "shown_input"]

#: Most characters of an echoed input, quotes and escapes included.
ECHO_LIMIT = 60
#: Most characters of a whole error line.
LINE_LIMIT = 300
#: What to do about a URL whose password breaks it (the usual cause of an unparseable URL).
URL_ENCODE_HINT = "percent-encode '@', ':', '/', '?' and '#' in the user name and password (%40, %3A, ...)"
_ELLIPSIS = "..."
_PASSWORD_PARAM = re.compile(r"(?i)(password=)[^&#]*")


def _escaped(char: str, quote: str) -> str:
    if char == "\\" and quote:
        return "\\\\"
    if char == quote:
        return "\\" + quote
    if char.isprintable():
        return char
    return char.encode("unicode_escape").decode("ascii")


def _bounded(text: str, limit: int, quote: str) -> str:
    room = limit - 2 * len(quote)
    pieces: list[str] = []
    used = 0
    for char in text:
        piece = _escaped(char, quote)
        if used + len(piece) > room:
            # Drop pieces until the ellipsis fits too; a piece is never cut in half.
            while pieces and used + len(_ELLIPSIS) > room:
                used -= len(pieces.pop())
            return f"{quote}{''.join(pieces)}{_ELLIPSIS}{quote}"
        pieces.append(piece)
        used += len(piece)
    return f"{quote}{''.join(pieces)}{quote}"


def shown_input(value: object, limit: int = ECHO_LIMIT, *, quoted: bool = True) -> str:
    """``value`` as an error message shows it: quoted like ``repr``, escaped, at most ``limit`` long.

    Args:
        value: What the user gave (anything; non-strings are shown through ``str``).
        limit: Most characters of the result, counted after escaping, quotes included.
        quoted: Put it in single quotes (for values); ``False`` for keys shown bare.

    Returns:
        One printable line; a cut-short value ends in ``...``.
    """
    text = value if isinstance(value, str) else str(value)
    return _bounded(text, max(limit, 8), "'" if quoted else "")


def one_line(message: str, limit: int = LINE_LIMIT) -> str:
    """A whole message made one printable line of at most ``limit`` characters."""
    return _bounded(message, max(limit, 8), "")


def keyed(key: str | None, problem: str) -> str:
    """``key: problem``, or the bare problem when ``key`` is None (the caller names the key)."""
    return problem if key is None else f"{key}: {problem}"


def masked_url(url: str) -> str:
    """``url`` with its password replaced by ``***``, even when the URL cannot be parsed.

    The password is everything between the first ``:`` after the user name and the LAST ``@``
    (a raw ``@`` in a password is the usual reason a URL does not parse), so this masks too much
    rather than too little; a ``password=`` query parameter is masked as well.
    """
    start = url.find("://")
    start = 0 if start < 0 else start + 3
    at = url.rfind("@", start)
    if at >= 0:
        user, colon, _ = url[start:at].partition(":")
        if colon:
            url = f"{url[:start]}{user}:***@{url[at + 1 :]}"
    return shown_input(_PASSWORD_PARAM.sub(r"\1***", url), 2 * ECHO_LIMIT)
