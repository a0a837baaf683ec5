"""What the endpoint has done, summed over every replica: batch sizes and latency per stage,
job outcomes and latency. The stage replicas report each batch to the job store, which
keeps one ``ServingMetrics``; ``/v1/stats`` shows it as JSON and ``/metrics`` in
Prometheus' text format, so a scrape needs no Ray metrics agent.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from typing import Any

# Upper bounds (seconds) of the latency histograms' buckets.
LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)


class Histogram:
    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.buckets = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.buckets[bisect_left(self.bounds, value)] += 1
        self.count += 1
        self.sum += value

    def prometheus(self, name: str, labels: str) -> list[str]:
        lines, cumulative = [], 0
        for bound, n in zip((*self.bounds, "+Inf"), self.buckets):
            cumulative += n
            lines.append(f'{name}_bucket{{{labels}{"," if labels else ""}le="{bound}"}} {cumulative}')
        braces = f"{{{labels}}}" if labels else ""
        lines += [f"{name}_sum{braces} {self.sum}", f"{name}_count{braces} {self.count}"]
        return lines


class ServingMetrics:
    def __init__(self, stages: list[str], max_batch_sizes: dict[str, int]) -> None:
        self.max_batch_sizes = max_batch_sizes
        self.batch_sizes: dict[str, Counter[int]] = {stage: Counter() for stage in stages}
        self.batch_size_histograms = {stage: Histogram(tuple(range(1, max_batch_sizes[stage] + 1))) for stage in stages}
        self.batch_seconds = {stage: Histogram(LATENCY_BUCKETS) for stage in stages}
        self.outcomes: Counter[str] = Counter()
        self.job_seconds = Histogram(LATENCY_BUCKETS)

    def record_batch(self, stage: str, size: int, seconds: float) -> None:
        self.batch_sizes[stage][size] += 1
        self.batch_size_histograms[stage].observe(size)
        self.batch_seconds[stage].observe(seconds)

    def record_outcome(self, status: str, seconds: float) -> None:
        self.outcomes[status] += 1
        if status == "succeeded":
            self.job_seconds.observe(seconds)

    def snapshot(self, jobs: dict[str, int]) -> dict[str, Any]:
        """``/v1/stats``: the job table's counts, outcomes since start, and per-stage batching."""
        out: dict[str, Any] = {"jobs": jobs, "outcomes": dict(self.outcomes)}
        for stage, sizes in self.batch_sizes.items():
            seconds = self.batch_seconds[stage]
            out[stage] = {
                "batches": sum(sizes.values()),
                "requests": sum(size * n for size, n in sizes.items()),
                "batch_sizes": {str(size): n for size, n in sorted(sizes.items())},
                "max_batch_size": self.max_batch_sizes[stage],
                "mean_batch_s": seconds.sum / seconds.count if seconds.count else None,
            }
        return out

    def prometheus(self, jobs: dict[str, int]) -> str:
        """Prometheus text exposition (version 0.0.4)."""
        lines = ["# HELP i2vgen_jobs Jobs in the store by status (queued and running are the queue).",
                 "# TYPE i2vgen_jobs gauge"]
        lines += [f'i2vgen_jobs{{status="{status}"}} {n}' for status, n in jobs.items()]
        lines += ["# HELP i2vgen_job_outcomes_total Jobs that ended, by how.", "# TYPE i2vgen_job_outcomes_total counter"]
        lines += [f'i2vgen_job_outcomes_total{{status="{status}"}} {n}' for status, n in sorted(self.outcomes.items())]
        lines += ["# HELP i2vgen_job_seconds Submission to finish of succeeded jobs.", "# TYPE i2vgen_job_seconds histogram"]
        lines += self.job_seconds.prometheus("i2vgen_job_seconds", "")
        lines += ["# HELP i2vgen_batch_size Requests per batch a stage ran.", "# TYPE i2vgen_batch_size histogram"]
        for stage, sizes in self.batch_size_histograms.items():
            lines += sizes.prometheus("i2vgen_batch_size", f'stage="{stage}"')
        lines += ["# HELP i2vgen_batch_seconds Time a stage took per batch.", "# TYPE i2vgen_batch_seconds histogram"]
        for stage, seconds in self.batch_seconds.items():
            lines += seconds.prometheus("i2vgen_batch_seconds", f'stage="{stage}"')
        return "\n".join(lines) + "\n"
