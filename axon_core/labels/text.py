"""A label as the page may show it: the fallback while none is known, and third-party text made safe.

Worked example::

    fallback_label(4821)                          # 'Feature 4821'
    safe_text(" tab\\there\\x1b[31m\\u202eevil ")   # 'tab here[31mevil' (no escapes, no bidi override)
    safe_text("x" * 200)[-1]                      # '…': cut to 120 characters

Safety: labels are stored and returned *raw* otherwise; HTML escaping is the
job of each renderer, not of this package.
"""

from __future__ import annotations

import unicodedata


def fallback_label(index: int) -> str:
    return f"Feature {index}"


def safe_text(label: str, max_len: int = 120) -> str:
    """``label`` without control/format characters (bidi overrides included),
    whitespace collapsed, cut to ``max_len`` characters with an ellipsis.
    Does *not* HTML-escape.

    >>> safe_text(" tab\\there\\x1b[31m\\u202eevil ")
    'tab here[31mevil'
    """
    out = []
    for ch in label:
        cat = unicodedata.category(ch)
        if ch.isspace() or cat in ("Zl", "Zp"):
            out.append(" ")
        elif cat not in ("Cc", "Cf", "Cs"):
            out.append(ch)
    text = " ".join("".join(out).split())
    if len(text) > max_len:
        text = text[: max(0, max_len - 1)].rstrip() + "…"
    return text
