"""Stores: where vectors, chunk records and the manifest live. FAISS folder is the default."""
