"""Throughput of the machine when several streams share it: S onnxruntime sessions of T intra-op
threads each run the model at the same time, one Python thread per stream (onnxruntime releases
the GIL inside `run`). Two cameras on one board, two nodes, are this case.

One stream at 2 threads is the latency case: between its small nodes one core often waits for the
other (a second thread speeds the default model up far less than 2x). Two streams of one thread
each keep both cores busy, as the sgemm peak does; two streams of 2 threads each oversubscribe the
cores. `stream_run` measures a configuration; `lines` renders the rows and the verdict.

On this shared VM the single stream at 2 threads is also the unstable case: a process ran it either
at ~9 or at ~12.5 ms per frame and mostly kept that mode (1 thread, two streams and the sgemm peak
did not swing so). `process_spread` times it in several fresh processes, one after another, so a
section reports the spread instead of one process's luck.
"""
from __future__ import annotations

import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from perf_common import goal, onnx_session

# (streams, intra-op threads per session); the first is the single-stream latency case
CONFIGS = ((1, 2), (2, 1), (2, 2))


@dataclass(frozen=True)
class StreamRun:
    streams: int
    threads: int            # intra-op threads of each stream's session
    frame_ms: float         # median latency of one run as a stream saw it
    aggregate_fps: float    # frames finished per second by all streams together (median over rounds)


def stream_run(onnx_path, feed: dict, streams: int, threads: int, frames: int, rounds: int,
               warmup: int = 2) -> StreamRun:
    """`streams` sessions start together (a barrier) and each runs `frames` frames; a round's throughput
    is streams * frames over the time from the start to the last stream's end. Median over `rounds`."""
    if streams < 1 or threads < 1 or frames < 1 or rounds < 1 or warmup < 0:
        raise ValueError(f"streams={streams}, threads={threads}, frames={frames} and rounds={rounds} must be "
                         f">= 1 and warmup={warmup} >= 0")
    sessions = [onnx_session(onnx_path, threads) for _ in range(streams)]
    for session in sessions:
        for _ in range(warmup):
            session.run(None, feed)
    rates: list[float] = []
    latencies: list[float] = []
    for _ in range(rounds):
        barrier = threading.Barrier(streams + 1)
        samples: list[list[float]] = [[] for _ in sessions]
        errors: list[BaseException] = []

        def loop(index: int) -> None:
            try:
                barrier.wait()
                for _ in range(frames):
                    start = time.perf_counter()
                    sessions[index].run(None, feed)
                    samples[index].append((time.perf_counter() - start) * 1000.0)
            except BaseException as error:  # re-raised in the caller: a failed stream must not pass as fast
                errors.append(error)

        workers = [threading.Thread(target=loop, args=(i,), daemon=True) for i in range(streams)]
        for worker in workers:
            worker.start()
        barrier.wait()
        start = time.perf_counter()
        for worker in workers:
            worker.join()
        wall = time.perf_counter() - start
        if errors:
            raise errors[0]
        rates.append(streams * frames / wall)
        latencies += [ms for stream in samples for ms in stream]
    return StreamRun(streams, threads, statistics.median(latencies), statistics.median(rates))


def measure(onnx_path, feed: dict, frames: int, rounds: int, warmup: int = 2) -> list[StreamRun]:
    """Every configuration of CONFIGS, each run back to back (its sessions are closed before the next)."""
    return [stream_run(onnx_path, feed, s, t, frames, rounds, warmup) for s, t in CONFIGS]


def process_spread(onnx_path, feed: dict, threads: int, processes: int, runs: int, work_dir: Path) -> list[float]:
    """Median ms per run of one stream (`threads` intra-op threads, `runs` runs after 3 warm-ups) in
    each of `processes` fresh Python processes (this file's __main__), run one after another."""
    if processes < 1 or runs < 1:
        raise ValueError(f"processes={processes} and runs={runs} must be >= 1")
    work_dir.mkdir(parents=True, exist_ok=True)
    feed_path = work_dir / "stream_feed.npz"
    np.savez(feed_path, **feed)
    medians = []
    for _ in range(processes):
        done = subprocess.run([sys.executable, __file__, str(onnx_path), str(feed_path), str(threads), str(runs)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"timing process failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
        medians.append(float(done.stdout.split()[-1]))
    return medians


def _time_in_this_process(onnx_path: str, feed_path: str, threads: int, runs: int) -> float:
    with np.load(feed_path) as stored:
        feed = {name: stored[name] for name in stored.files}
    session = onnx_session(onnx_path, threads)
    for _ in range(3):
        session.run(None, feed)
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, feed)
        samples.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(samples)


def lines(runs: list[StreamRun], gflops: float, peak_gflops_s: float, frames: int, rounds: int,
          spread: list[float] | None = None) -> list[str]:
    """The table (achieved GFLOP/s = gflops x frames per second of all streams, against the 2-thread
    peak: the whole machine), the single stream's spread over processes, and the goal judged per case:
    the single stream by its median over processes where `spread` is given."""
    if not runs:
        return []
    fraction = lambda ms: gflops / (ms / 1000.0) / peak_gflops_s   # noqa: E731
    out = ["", "### The whole machine: streams side by side", "",
           f"S sessions of T intra-op threads run the model at once, one per stream, {frames} frames each per "
           f"round, median of {rounds} rounds; the peak is the 2-thread one (both cores, as here). Two cameras on "
           "one board, each with its own node, are the two-stream rows: give each node `threads: 1`.", "",
           "| streams x threads per session | frames/s, all streams | ms per frame, each stream "
           "| achieved GFLOP/s | fraction of peak |", "|---|---|---|---|---|"]
    for run in runs:
        achieved = gflops * run.aggregate_fps
        out.append(f"| {run.streams} x {run.threads} | {run.aggregate_fps:.1f} | {run.frame_ms:.1f} "
                   f"| {achieved:.1f} | {achieved / peak_gflops_s:.1%} |")
    single = runs[0]
    best = max(runs[1:], key=lambda r: r.aggregate_fps, default=single)
    one = gflops * single.aggregate_fps / peak_gflops_s
    whole = gflops * best.aggregate_fps / peak_gflops_s
    how, single_ms = "in this run", single.frame_ms
    if spread:
        ms = sorted(spread)
        single_ms = statistics.median(ms)
        one, how = fraction(single_ms), f"median over {len(ms)} processes"
        out += ["", f"One stream at {single.threads} threads in {len(ms)} fresh processes, one after another: median "
                    f"ms {', '.join(f'{m:.1f}' for m in ms)}, that is {fraction(ms[-1]):.1%} to {fraction(ms[0]):.1%} "
                    f"of peak (slowest / fastest process: {ms[-1] / ms[0]:.2f}x). Checked by hand on this VM "
                    "(2026-11-22, 50+ processes): one stream at 2 threads runs in one of two states, ~8-9 or ~11-12.5 "
                    "ms per frame. The state is the machine's: it lasts minutes, and processes started meanwhile share "
                    "it (six in a row: 8.1-8.5 ms; minutes earlier, 10.7-12.0 ms). Pinning the threads, the spinning "
                    "settings, the address-space layout and the core-to-core hand-off (a 73 ns round trip in the slow "
                    "state) did not decide it. The peak, timed in the same run, meets the same state, but the small "
                    "model loses more in the slow one; runs differ in how much of it they meet."]
    out += ["", f"Goal (achieved >= 50% of peak), per case: one stream at {single.threads} threads, the latency case "
                f"({how}): {one:.1%}, {goal(one >= 0.5)}; the machine's throughput ({best.streams} streams x "
                f"{best.threads} thread{'s' if best.threads > 1 else ''}): {whole:.1%}, {goal(whole >= 0.5)}. Each "
                f"stream then waits {best.frame_ms / single_ms:.2f}x as long for its frame as the single stream "
                "does."]
    return out

if __name__ == "__main__":   # process_spread's timing process: ONNX FEED.npz THREADS RUNS -> median ms
    print(f"{_time_in_this_process(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])):.4f}")
