"""Driver memory of ``--resume``'s id pre-scan (``pipelines.resume.check_resumable_ids``) for many ids.

Builds a Ray dataset of ``--ids`` synthetic note ids (``note-000000001`` ...) on a local Ray and
runs the pre-scan once in this process; prints the driver's peak resident memory above its
baseline (Linux ``VmHWM``, reset through ``/proc/self/clear_refs``) and the time. Run it from
two checkouts to compare implementations. Not a test (10 million ids take a minute or two).

    python -m benchmarks.resume_ids [--ids 10000000] [--blocks 200]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pyarrow as pa


class SyntheticKeys:
    """The ``keys`` a notes job passes: here the id column of ``ray.data.range`` made text."""

    def __call__(self, block: pa.Table) -> list[str]:
        return self.with_problems(block)[0]

    def with_problems(self, block: pa.Table):
        ids = [f"note-{i:09d}" for i in block.column("id").to_pylist()]
        return ids, [None] * len(ids)


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ids", type=int, default=10_000_000)
    parser.add_argument("--blocks", type=int, default=200)
    args = parser.parse_args(argv)
    import ray
    from ray.data import DataContext

    from epee_annotate.pipelines.resume import check_resumable_ids

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    DataContext.get_current().enable_progress_bars = False
    ds = ray.data.range(args.ids, override_num_blocks=args.blocks)
    Path("/proc/self/clear_refs").write_text("5")
    baseline = peak_rss_mb()
    started = time.perf_counter()
    count = check_resumable_ids(ds, SyntheticKeys())
    seconds = time.perf_counter() - started
    peak = peak_rss_mb()
    ray.shutdown()
    print(f"{count:,} ids: driver peak +{peak - baseline:.0f} MB above its baseline ({baseline:.0f} MB), "
          f"{seconds:.1f} s")


if __name__ == "__main__":
    main()
