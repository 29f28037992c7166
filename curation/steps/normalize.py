"""Text normalisation: Unicode NFC, control characters, line endings and whitespace.

Runs entirely in Arrow compute kernels over the whole text column. Each rule can be switched
off; the defaults make documents that differ only in encoding accidents compare equal (which
exact dedup relies on) without touching their words.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import pyarrow as pa
import pyarrow.compute as pc

from curation.io.reader import TEXT
from curation.registry import register
from curation.step import Annotator

# C0 controls except \t \n \r, DEL, C1 controls, zero-width and BOM characters.
_CONTROL = r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\x{200b}\x{200c}\x{200d}\x{2060}\x{feff}]"


@dataclass
class NormalizeConfig:
    """Which normalisations to apply, in this order."""

    nfc: bool = True
    """Unicode NFC composition (``e`` + combining accent becomes one code point)."""
    strip_control: bool = True
    """Remove control, zero-width and byte-order-mark characters (tabs and newlines stay)."""
    line_endings: bool = True
    """``\\r\\n`` and lone ``\\r`` become ``\\n``."""
    whitespace: bool = True
    """Runs of spaces/tabs/no-break spaces become one space, trailing spaces on lines go, three
    or more newlines become two, and the document is stripped."""


@register
class Normalize(Annotator):
    """Normalises the ``text`` column (see the module docstring)."""

    name: ClassVar[str] = "normalize"
    Config: ClassVar[type] = NormalizeConfig

    def annotate(self, batch: pa.RecordBatch) -> dict[str, pa.Array]:
        text = batch.column(TEXT)
        c = self.config
        if c.nfc:
            text = pc.utf8_normalize(text, "NFC")
        if c.strip_control:
            text = pc.replace_substring_regex(text, _CONTROL, "")
        if c.line_endings:
            text = pc.replace_substring_regex(text, r"\r\n?", "\n")
        if c.whitespace:
            text = pc.replace_substring_regex(text, r"[ \t\x{00a0}\x{3000}]+", " ")
            text = pc.replace_substring_regex(text, r" *\n *", "\n")
            text = pc.replace_substring_regex(text, r"\n{3,}", "\n\n")
            text = pc.utf8_trim_whitespace(text)
        return {TEXT: text}
