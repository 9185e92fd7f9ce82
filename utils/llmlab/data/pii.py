"""Personal data in training text: find it, replace it, and the k-anonymity idea.

A language model can memorise and repeat what it read, including e-mail addresses, phone
numbers and leaked credentials. Pipelines therefore *scrub* such spans before training,
replacing each with a placeholder (``<EMAIL>``, ``<IP>`` ...). Regular expressions catch the
structured kinds well; names and addresses need a trained tagger (NER) and are out of scope.

Kinds found by :func:`scrub_pii` (in this order, so a key is not half-eaten by the phone rule):

- ``KEY``: API keys and secrets with a recognisable shape (AWS ``AKIA...``, GitHub
  ``ghp_...``, OpenAI-style ``sk-...``, Slack ``xox.-...``, PEM private-key blocks).
- ``EMAIL``: ``name@domain.tld``.
- ``CARD``: 13-19 digit card numbers that pass the Luhn checksum (so most long numbers don't).
- ``IP``: IPv4 addresses with every octet <= 255, and full IPv6 addresses.
- ``PHONE``: international numbers (+country code) and North-American ones written with
  dashes, dots or an area code in parentheses (bare digit groups are left alone).

**k-anonymity** (Sweeney 2002) is a property of a *table*: every combination of the
quasi-identifiers (zip code, birth year, gender ...) is shared by at least k rows, so no row
can be singled out by them. :func:`k_anonymity` measures k; generalising values (zip 02139 ->
021**, age 34 -> 30-39) raises it, at the cost of detail.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

__all__ = ["PII_KINDS", "scrub_pii", "luhn_valid", "k_anonymity"]

_KEY = re.compile(
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----"
    r"|\bAKIA[0-9A-Z]{16}\b"
    r"|\bgh[pousr]_[A-Za-z0-9]{36,}\b"
    r"|\bsk-[A-Za-z0-9_-]{20,}\b"
    r"|\bxox[abposr]-[A-Za-z0-9-]{10,}\b"
)
_EMAIL = re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
_CARD = re.compile(r"\b(?:\d[ -]?){12,18}\d\b")
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV4 = re.compile(rf"(?<![\d.]){_OCTET}(?:\.{_OCTET}){{3}}(?![\d.])")
_IPV6 = re.compile(r"(?<![:\w])(?:[0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]{1,4}(?![:\w])")
_PHONE = re.compile(
    r"(?<![\w+])\+\d{1,3}[ .-]?\(?\d{1,4}\)?(?:[ .-]?\d{2,4}){2,4}(?!\w)"  # +44 20 7946 0958
    r"|(?:\(\d{3}\) ?|(?<!\w)\d{3}[-.])\d{3}[-.]\d{4}(?!\w)"  # (617) 555-0123, 617-555-0123
)

#: The placeholder kinds, in the order they are applied.
PII_KINDS = ("KEY", "EMAIL", "CARD", "IP", "PHONE")


def luhn_valid(number: str) -> bool:
    """The Luhn checksum of a card number (spaces and dashes ignored)."""
    digits = [int(c) for c in number if c.isdigit()]
    if len(digits) < 13:
        return False
    total = 0
    for i, d in enumerate(reversed(digits)):
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def scrub_pii(text: str) -> tuple[str, Counter]:
    """(``text`` with PII replaced by ``<KIND>`` placeholders, Counter of replacements by kind)."""
    if not isinstance(text, str):
        raise TypeError(f"text: expected a str, got {type(text).__name__}")
    counts: Counter = Counter()

    def replace(kind: str, pattern: re.Pattern, text: str, check=None) -> str:
        def sub(match: re.Match) -> str:
            if check is not None and not check(match.group(0)):
                return match.group(0)
            counts[kind] += 1
            return f"<{kind}>"

        return pattern.sub(sub, text)

    text = replace("KEY", _KEY, text)
    text = replace("EMAIL", _EMAIL, text)
    text = replace("CARD", _CARD, text, luhn_valid)
    text = replace("IP", _IPV4, text)
    text = replace("IP", _IPV6, text)
    text = replace("PHONE", _PHONE, text)
    return text, counts


def k_anonymity(rows: Sequence[dict], quasi_identifiers: Sequence[str]) -> int:
    """The k of a table: the size of the smallest group of rows sharing quasi-identifier values."""
    if not rows:
        raise ValueError("rows: expected at least one row")
    missing = [q for q in quasi_identifiers if q not in rows[0]]
    if missing:
        raise ValueError(f"quasi_identifiers: {missing} are not columns of the rows")
    groups = Counter(tuple(row[q] for q in quasi_identifiers) for row in rows)
    return min(groups.values())
