"""Near-duplicate removal with MinHash LSH, and decontamination against evaluation sets."""
