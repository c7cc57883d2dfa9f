"""The errors the engine raises on purpose: each carries one line a person can act on."""


class IndexerError(Exception):
    """Base class: the command line prints the message alone and exits non-zero."""


class ModelError(IndexerError):
    """The embedding model is missing, cannot be loaded, or does not match an index."""


class StoreError(IndexerError):
    """An index folder is missing, damaged, or from another model or format version."""


class QueryError(IndexerError):
    """A query or a batch file that cannot be answered."""


class ReadError(IndexerError):
    """A file or folder that cannot be read; the message is one line naming the file."""


class NotFound(IndexerError):
    """A document (or another thing a request names) that the index does not hold."""


class Gone(IndexerError):
    """Something the index names that can no longer be had: a document's file moved or deleted
    since it was read."""
