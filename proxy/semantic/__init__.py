"""The opt-in semantic cache (docs/design.md §10): a paraphrase of a stored question, in exactly
the same partition, passing the guards, is served the stored answer."""
