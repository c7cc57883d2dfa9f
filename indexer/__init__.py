"""Semantic search over Chinese (and any-language) documents: read → chunk → embed → store → search."""
