"""Runs every benchmark in bench/ and regenerates the README's benchmark tables.

    python bench/run_all.py [--quick]     (what `make bench` runs; BENCH_ARGS=--quick for short)
"""

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
NOT_BENCHMARKS = {"run_all.py", "readme_tables.py"}


def main() -> int:
    scripts = sorted(p for p in HERE.glob("*.py")
                     if p.name not in NOT_BENCHMARKS and not p.name.startswith("_"))
    failed = []
    for script in scripts:
        print(f"== {script.name}", flush=True)
        if subprocess.run([sys.executable, str(script), *sys.argv[1:]]).returncode != 0:
            failed.append(script.name)
    subprocess.run([sys.executable, str(HERE / "readme_tables.py")], check=True)
    if failed:
        print(f"benchmarks that failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
