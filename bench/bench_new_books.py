"""What the stored TF-IDF vocabulary costs (issue 13, new books): its size in the model
folder, the fresh-process load time with and without it, and the CPU of ``similar`` for a
book the model was not trained with.

    .venv/bin/python -m bench.bench_new_books             # full data (Kaggle CSVs)
    .venv/bin/python -m bench.bench_new_books --sample    # the bundled sample

The CF catalogue is kept small (``--max-items``, 500 by default): the vocabulary does not
depend on it, and the fit stays cheap. Loads alternate with and without the vocabulary.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

VOCABULARY = ("tfidf_terms_blob", "tfidf_terms_offsets", "tfidf_idf")
NEW_ISBN = "5550000016"  # in neither the sample nor the full data
NEW_BOOK = {"title": "Harry Potter and the Secret Diary", "author": "J. K. Rowling",
            "publisher": "Scholastic"}
_LOAD = ("import time;t=time.perf_counter();from bookrec.models.persist import load_model;"
         "load_model({!r});print(time.perf_counter()-t)")


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir())


def main(argv: list[str] | None = None) -> int:
    """Fit, save twice, load in fresh processes, time ``similar`` for a new book."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sample", action="store_true", help="the bundled sample")
    parser.add_argument("--max-items", type=int, default=500)
    parser.add_argument("--loads", type=int, default=5)
    args = parser.parse_args(argv)
    from bench.bench_foldin import load
    from bookrec.models.dataset import build_dataset
    from bookrec.models.fit import fit_hybrid
    from bookrec.models.hybrid import HybridRecommender
    from bookrec.models.persist import load_model, save_model

    ratings, books = load("sample" if args.sample else "full")
    model = fit_hybrid(build_dataset(ratings, books), {"max_items": args.max_items})
    root = Path(tempfile.mkdtemp(prefix="bench-new-books-"))
    try:
        save_model(model, root / "with", extra={"version": "with"})
        old = HybridRecommender({k: v for k, v in model.arrays.items() if k not in VOCABULARY},
                                vars(model.params))
        save_model(old, root / "without", extra={"version": "without"})
        vocab = sum((root / "with" / f"{n}.npy").stat().st_size for n in VOCABULARY)
        sizes = {name: _folder_bytes(root / name) / 2**20 for name in ("with", "without")}
        loads: dict[str, list[float]] = {"with": [], "without": []}
        for _ in range(args.loads):
            for name in loads:
                out = subprocess.run([sys.executable, "-c", _LOAD.format(str(root / name))],
                                     capture_output=True, text=True, check=True)
                loads[name].append(float(out.stdout))
        loaded = load_model(root / "with")
        if loaded.knows_book(NEW_ISBN):
            raise SystemExit(f"{NEW_ISBN} is in the data; pick another new ISBN")
        cpu = []
        for _ in range(300):
            started = time.process_time()
            recs = loaded.similar(NEW_ISBN, 10, book=NEW_BOOK)
            cpu.append(time.process_time() - started)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    figures = {
        "terms": int(len(model.idf)), "content_rows": int(len(model.content_items)),
        "vocabulary_mb": vocab / 2**20,
        "folder_mb": sizes,
        "load_s_with_median": float(np.median(loads["with"])),
        "load_s_without_median": float(np.median(loads["without"])),
        "loads": loads,
        "similar_new_book_cpu_ms_median": float(np.median(cpu) * 1000),
        "similar_new_book_cpu_ms_p90": float(np.percentile(cpu, 90) * 1000),
        "example": [(r.title, r.author, r.source) for r in recs[:5]],
    }
    print(json.dumps(figures, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
