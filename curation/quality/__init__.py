"""Model-based quality classification (DCLM-style): a fastText classifier trained on reference
text (high quality) against rejected or low-value text, and used by the ``quality_classifier``
step (:mod:`curation.filters.quality`) to score every document."""
