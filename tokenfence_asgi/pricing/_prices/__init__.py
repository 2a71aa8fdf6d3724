"""Data the price book ships: the price snapshot and the tokenizer files (see ``snapshot``)."""
