"""Data: the official shard format, tokenizers and the byte table, the embedded demo corpus,
building shards from text, and the training-token loader."""
