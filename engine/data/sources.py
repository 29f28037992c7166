"""A token group's indexed datasets seen as one list of documents, read slice by slice.

Opening a group maps its ``.idx``/``.bin`` files; only the document lengths of a group made of
several datasets are copied (4 bytes per document). Tokens are read from the memory-mapped
``.bin`` a slice at a time.
"""

from __future__ import annotations

from bisect import bisect_right
from pathlib import Path

import numpy as np

from curation.tokens.indexed import IndexedDataset


class GroupDocuments:
    """The documents of ``prefixes`` (in order) as one list: document ``j`` of the group is
    document ``j - start[s]`` of dataset ``s``."""

    def __init__(self, name: str, prefixes: list[Path]) -> None:
        if not prefixes:
            raise ValueError(f"token group {name!r} lists no datasets in the manifest; "
                             "rerun `crucible tokenize` or drop the group from the mixture")
        self.name = name
        self.datasets = [IndexedDataset(p) for p in prefixes]
        counts = [len(ds) for ds in self.datasets]
        self._starts = [0, *np.cumsum(counts).tolist()]
        # (documents,) int32: a view into the mapped index when there is one dataset
        self.lengths = self.datasets[0].lengths if len(self.datasets) == 1 else \
            np.concatenate([ds.lengths for ds in self.datasets])

    def __len__(self) -> int:
        return self._starts[-1]

    def read(self, document: int, offset: int, count: int) -> np.ndarray:
        """Tokens ``offset : offset + count`` of the group's ``document`` (a memmap view)."""
        s = bisect_right(self._starts, document) - 1
        return self.datasets[s].get(document - self._starts[s], offset, count)
