"""`fastpass tune MOUNTPOINT`: the worker count that suits a live mount, measured under its own load.

The offline tuner (`fastpass.bench.tune`) runs made-up workloads on fresh mounts; this one
measures what the mount's users are doing now.  It sets each count in turn on the mount
(`fastpass workers`: no unmount, no client error), lets the pool settle, and then counts for
`seconds` the requests the workers answer (the stats' totals) and the CPU time their processes
spend.  Rounds go up the counts and then down, alternately, so a load that drifts during the
run favours no count.  A closed-loop load (programs that wait for each answer) shows more
requests per second where more workers serve it faster; a load with a fixed pace shows the
same rate at every count, and then the fewest workers win, as they should.

The verdicts are the offline tuner's (`tune.verdicts`): a count's score is its median rate over
the best median; good within TOLERANCE, clearly worse where its best round is below the best
count's worst, undecided between (more rounds, up to `max_repeat`).  The fewest workers not
clearly worse are recommended, and the mount is left serving with them unless told not to.
Whatever happens (an error, Ctrl-C), a count that was not applied is undone: the mount goes
back to the count it had.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence

import msgspec

from fastpass import stats
from fastpass.bench import tune

SCHEMA = 1
MIN_RATE = 50.0  # requests/s below which the mount is taken as idle: nothing to measure


class LiveError(Exception):
    """Why the live mount cannot be tuned; said in one line."""


class LiveRecord(msgspec.Struct):
    schema: int
    mountpoint: str
    counts: list[int]
    seconds: float  # each measuring window
    rates: list[list[float]]  # per count: requests/s of each round
    cpu_us: list[list[float]]  # per count: the workers' CPU µs per request of each round
    scores: list[float]  # per count: median rate / the best median rate
    round_scores: list[list[float]]
    spread: float  # run to run, as the offline tuner's
    undecided: list[int]  # indices of counts still undecided after max_repeat rounds
    knee: int | None  # `tune.knee` of the median rates
    was: int  # the count the mount had
    workers: int  # the recommendation
    applied: bool  # the mount serves with it now
    started: float
    elapsed: float


def _requests(s: stats.Stats) -> int:
    return sum(o.count for o in s.ops)


def measure(mountpoint: str, seconds: float) -> tuple[float, float]:
    """(requests/s, CPU µs per request) of the mount's workers over the next `seconds`."""
    before = stats.fetch(mountpoint)
    pids = [w.pid for w in before.workers if w.alive]
    cpu = sum(stats.cpu_s(p) for p in pids)
    start = time.monotonic()
    time.sleep(seconds)
    after = stats.fetch(mountpoint)
    elapsed = time.monotonic() - start
    n = _requests(after) - _requests(before)
    used = sum(stats.cpu_s(p) for p in pids) - cpu
    return n / elapsed, used * 1e6 / n if n else 0.0


def run(mountpoint: str, counts: Sequence[int], repeat: int = 3, seconds: float = 3.0, *,
        max_repeat: int | None = None, apply: bool = True,
        progress: Callable[[str], None] = lambda what: None) -> LiveRecord:  # fmt: skip
    """Measure each of `counts` on the live mount `repeat` times (more where undecided, up to
    `max_repeat`) and recommend one; leave the mount with it where `apply`, else as it was."""
    max_repeat = repeat if max_repeat is None else max(max_repeat, repeat)
    try:
        now = stats.fetch(mountpoint)
    except stats.StatsUnavailable as e:
        raise LiveError(str(e)) from None
    counts = sorted(set(counts))
    if not counts or counts[0] < 1 or counts[-1] > now.max_workers:
        raise LiveError(f"{mountpoint} can serve with 1 to {now.max_workers} workers (its --max-workers)")
    was = len(now.workers)
    settle = min(1.0, seconds / 3)
    rates: list[list[float]] = [[] for _ in counts]
    cpu: list[list[float]] = [[] for _ in counts]
    started = time.time()
    applied = False

    def one(i: int) -> None:
        progress(f"{counts[i]} worker{'s' * (counts[i] > 1)}, round {len(rates[i]) + 1}")
        try:
            stats.resize(mountpoint, counts[i])
        except stats.Refused as e:
            raise LiveError(f"{mountpoint}: {e}") from None
        time.sleep(settle)
        rate, per = measure(mountpoint, seconds)
        if rate < MIN_RATE:
            raise LiveError(f"{mountpoint} served {rate:.0f} requests/s with {counts[i]} worker"
                            f"{'s' * (counts[i] > 1)}: tune a live mount while its workload runs")  # fmt: skip
        rates[i].append(rate)
        cpu[i].append(per)

    try:
        for r in range(repeat):
            for i in range(len(counts)) if r % 2 == 0 else reversed(range(len(counts))):
                one(i)
        while True:
            medians = [statistics.median(x) for x in rates]
            best = max(medians)
            per_count = [m / best for m in medians]
            rounds = [[x / best for x in xs] for xs in rates]
            judged = tune.verdicts(per_count, rounds)
            _, workers = tune.recommend([("", n) for n in counts], per_count, judged)
            top = max(range(len(counts)), key=lambda i: per_count[i])
            pending = [i for i, v in enumerate(judged)
                       if v == "undecided" and counts[i] <= workers and len(rates[i]) < max_repeat]  # fmt: skip
            if not pending:
                break
            for i in [*pending, top]:
                one(i)
        if apply:
            stats.resize(mountpoint, workers)
            applied = True
    finally:
        if not applied:
            try:
                stats.resize(mountpoint, was)
            except (stats.Refused, stats.StatsUnavailable, TimeoutError):
                pass  # the mount went away, or another change is under way: it keeps what it has
    return LiveRecord(SCHEMA, mountpoint, counts, seconds, rates, cpu, per_count, rounds,
                      tune.spread(per_count, rounds), [i for i, v in enumerate(judged) if v == "undecided"],
                      tune.knee(counts, medians), was, workers, applied, started, time.time() - started)  # fmt: skip


def lines(record: LiveRecord) -> list[str]:
    """The result as a short table and the recommendation, 80 columns wide."""
    out = [f"{'workers':>7}  {'requests/s':>10}  {'rounds':>17}  {'CPU µs/req':>10}  score"]
    for i, n in enumerate(record.counts):
        rates = record.rates[i]
        mark = " <" if n == record.workers else ""
        out.append(f"{n:>7}  {statistics.median(rates):>10,.0f}  {min(rates):>8,.0f}-{max(rates):<8,.0f}  "
                   f"{statistics.median(record.cpu_us[i]):>10.1f}  {record.scores[i]:.2f}{mark}")  # fmt: skip
    chosen = record.counts.index(record.workers)
    best = record.counts[max(range(len(record.counts)), key=lambda i: record.scores[i])]
    out.append(f"Recommended: {_workers(record.workers)}, the fewest within {tune.TOLERANCE:.0%} of the best rate")
    out.append("  or too close to it to tell apart.")
    if chosen in record.undecided:
        out.append(f"No significant difference between {record.workers} and {best} workers: their rates differ by")
        out.append("  less than the rounds vary.")
    out.append(f"Knee: {tune.knee_text(record.knee, record.counts)} (where more workers stop adding "
               f"{tune.KNEE_GAIN:.0%}); run-to-run spread {record.spread:.1%}")  # fmt: skip
    now = _workers(record.workers if record.applied else record.was)
    out.append(f"{record.mountpoint} now serves with {now}" + ("" if record.applied else " (as before: --no-apply)"))
    return out


def _workers(n: int) -> str:
    return f"{n} worker{'s' * (n != 1)}"
