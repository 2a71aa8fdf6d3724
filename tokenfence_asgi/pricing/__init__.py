"""Prices of LLM calls and offline token counts: the price book, its snapshot, the tokenizers."""
