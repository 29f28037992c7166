"""N-gram language models for perplexity filtering: SentencePiece pieces, our own modified
Kneser-Ney estimator written as ARPA, and KenLM for scoring (CCNet's recipe)."""
