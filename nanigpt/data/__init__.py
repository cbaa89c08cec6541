"""Data pipeline: synthetic sources, tokenizer, token shards, batch loader."""
