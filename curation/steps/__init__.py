"""General-purpose steps: text normalisation and exact deduplication."""
