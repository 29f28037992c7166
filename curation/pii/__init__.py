"""PII scrubbing: the ``pii`` step, its patterns, checksums and a per-string reference detector."""

from curation.pii.detect import (PiiSpan, find_credit_cards, find_ibans, find_ip_addresses,
                                 scrub_reference)
from curation.pii.patterns import DEFAULT_PLACEHOLDERS, PII_TYPES
from curation.pii.scrub import PiiConfig, PiiScrubber

__all__ = ["DEFAULT_PLACEHOLDERS", "PII_TYPES", "PiiConfig", "PiiScrubber", "PiiSpan",
           "find_credit_cards", "find_ibans", "find_ip_addresses", "scrub_reference"]
