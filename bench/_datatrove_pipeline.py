"""The datatrove side of bench/curation.py; runs in the bench environment (.venv-bench).

Runs datatrove's equivalent of crucible's default pipeline on the same Parquet shards with one
task on one core, and prints JSON: wall seconds, and per step the seconds datatrove's own
timers recorded and the documents that step received. Not part of the product.

    .venv-bench/bin/python bench/_datatrove_pipeline.py INPUT_DIR WORK_DIR LID_MODEL
"""

import json
import os
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

from datatrove.executor import LocalPipelineExecutor  # noqa: E402
from datatrove.pipeline.filters import (  # noqa: E402
    C4QualityFilter, FineWebQualityFilter, GopherQualityFilter, GopherRepetitionFilter,
    LanguageFilter)
from datatrove.pipeline.formatters import PIIFormatter  # noqa: E402
from datatrove.pipeline.readers import ParquetReader  # noqa: E402
from datatrove.pipeline.writers import ParquetWriter  # noqa: E402
from datatrove.utils import lid  # noqa: E402


def use_local_model(path: str) -> None:
    """Point datatrove's fastText LID at a local file instead of downloading lid.176.bin."""
    from fasttext.FastText import _FastText

    def model(self):
        if self._model is None:
            self._model = _FastText(path)
        return self._model

    lid.FastTextLID.model = property(model)


def main() -> None:
    input_dir, work_dir, model_path = sys.argv[1:4]
    use_local_model(model_path)
    steps = [
        ("read", ParquetReader(input_dir, glob_pattern="*.parquet", read_metadata=False)),
        ("language_id", LanguageFilter(languages=["en"], language_threshold=0.65)),
        ("gopher_repetition", GopherRepetitionFilter()),
        ("gopher_quality", GopherQualityFilter()),
        ("c4", C4QualityFilter(filter_no_terminal_punct=False)),
        ("fineweb", FineWebQualityFilter()),
        ("pii", PIIFormatter()),
        ("write", ParquetWriter(os.path.join(work_dir, "out"))),
    ]
    logs = os.path.join(work_dir, "logs")
    start = time.perf_counter()
    LocalPipelineExecutor(pipeline=[s for _, s in steps], tasks=1, workers=1,
                          logging_dir=logs, skip_completed=False).run()
    wall = time.perf_counter() - start
    with open(os.path.join(logs, "stats.json")) as f:
        stats = json.load(f)
    per_step = []
    for (name, _), stat in zip(steps, stats):
        counters = stat.get("stats", {})
        docs = counters.get("total", counters.get("documents", 0))
        if isinstance(docs, dict):
            docs = docs.get("total", 0)
        per_step.append({"step": name, "seconds": stat["time_stats"]["total"], "docs": docs})
    print(json.dumps({"wall_seconds": wall, "steps": per_step}))


if __name__ == "__main__":
    main()
