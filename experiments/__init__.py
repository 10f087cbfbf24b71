"""Studies composed from memexp, prompt_pool and decoding (random labels, hallucination vs loss)."""
