"""The relaxed versions of a response that IFEval's loose scoring also accepts.

Models often wrap an answer in a greeting line, a sign-off line or markdown emphasis; loose
scoring forgives those by also checking the response with its first and/or last line removed,
and each of those with every "*" removed.
"""
from __future__ import annotations


def response_variants(response: str) -> list[str]:
    """The response first, then its distinct non-blank relaxed variants.

    Blank variants are left out (IFEval keeps them): removing the only line of a one-line answer
    leaves nothing, and an empty text would trivially "follow" constraints such as "no commas".
    """
    lines = response.split("\n")
    trimmed = [
        response,
        "\n".join(lines[1:]).strip(),
        "\n".join(lines[:-1]).strip(),
        "\n".join(lines[1:-1]).strip(),
    ]
    candidates = trimmed + [text.replace("*", "") for text in trimmed]
    variants: list[str] = []
    for text in candidates:
        if text.strip() and text not in variants:
            variants.append(text)
    return variants
