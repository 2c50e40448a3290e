"""Data: tokenizers, corpus sources, packed token caches, and DataModules (text and MQAR)."""
