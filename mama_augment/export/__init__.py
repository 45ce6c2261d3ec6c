"""The augmented dataset out: exports that other trainers read (``mama-augment export``).

``FORMATS`` (:mod:`~mama_augment.export.registry`) is the registry the CLI lists: name -> factory of an
:class:`~mama_augment.export.base.ExportFormat`. Adding a format is adding a module
with one ``write_shard`` method (and optionally ``finish``) and one entry here.
"""

from mama_augment.export.registry import FORMATS, get_format

__all__ = ["FORMATS", "get_format"]
