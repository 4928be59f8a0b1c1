"""Overload: frames at 3x the node's processing rate for N seconds, through the real node process.

    PYTHONPATH=. .venv/bin/python bench/reliability_overload.py                 # 60 s, tiny model
    PYTHONPATH=. .venv/bin/python bench/reliability_overload.py --seconds 20    # a quick look
    PYTHONPATH=. .venv/bin/python bench/reliability_overload.py --model shipped --width 640 --height 480

1. The node (its own process, default config/segment.yaml: best-effort keep-last-1 input) starts.
2. Calibration: frames one at a time (the next after the previous one's output) for a few seconds
   give the processing rate R (frames/s end to end, transport included).
3. Overload: a best-effort camera publishes at `--factor` x R (default 3) for `--seconds`.
   Every frame is either served (~/instances with its stamp) or dropped; the node counts its drops
   on /diagnostics (replaced in its one-slot mailbox, or overwritten in the keep-last-1 queue).
4. Reported: frames published / served / dropped (and the node's own counts), end-to-end latency
   p50/p90/p99/max of served frames (publish -> output received), the node's RSS over time (first,
   last, slope), threads. Writes a section of docs/RELIABILITY.md and docs/reliability_overload.png.
Nothing here asserts a number: the numbers are the result.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import reliability_rig as rig  # noqa: E402

PLOT = rig.ROOT / "docs" / "reliability_overload.png"


def calibrate(client: rig.Client, frames: list[np.ndarray], seconds: float) -> tuple[float, float]:
    """(processing rate in frames/s, median closed-loop latency ms) with one frame in flight."""
    done, latencies, start = 0, [], time.monotonic()
    while time.monotonic() - start < seconds:
        key = client.publish(client.message(frames[done % len(frames)]))
        if client.wait_for(key, timeout=10):
            done += 1
            latencies.append((client.received[key] - client.published[key]) * 1000)
    elapsed = time.monotonic() - start
    if not done:
        raise RuntimeError("no frame was served during calibration")
    return done / elapsed, float(np.median(latencies))


def overload(client: rig.Client, frames: list[np.ndarray], rate: float, seconds: float) -> list[tuple[int, int]]:
    """Publishes at `rate` Hz for `seconds` (absolute schedule: no drift); the stamps published."""
    period, keys = 1.0 / rate, []
    start = time.monotonic()
    with tqdm(total=int(seconds), desc=f"overload {rate:.0f} Hz", unit="s") as progress:
        while (now := time.monotonic()) - start < seconds:
            index = len(keys)
            target = start + index * period
            if target > now:
                time.sleep(target - now)
            keys.append(client.publish(client.message(frames[index % len(frames)])))
            if int(now - start) > progress.n:
                progress.update(int(now - start) - progress.n)
    return keys


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0, help="overload duration")
    parser.add_argument("--factor", type=float, default=3.0, help="input rate / processing rate")
    parser.add_argument("--calibrate-seconds", type=float, default=5.0)
    rig.add_common_arguments(parser)
    args = parser.parse_args()
    rig.ros_environment()
    parameters = rig.node_parameters(args, reliable=False)
    conditions = rig.describe(args, parameters)
    frames = rig.clip(args.width, args.height)
    node = rig.NodeProcess(parameters)
    client = None
    try:
        node.wait_active()
        client = rig.Client(reliable=False)
        client.wait_connected()
        start = time.monotonic()
        sampler = rig.Sampler(node.pid, start)
        rate, closed_ms = calibrate(client, frames, args.calibrate_seconds)
        before = client.fresh_diagnostics()
        overload_start = time.monotonic() - start
        keys = overload(client, frames, rate * args.factor, args.seconds)
        overload_end = time.monotonic() - start
        time.sleep(2.0)  # the last frame's outputs
        after = client.fresh_diagnostics()
        samples = sampler.stop()
    finally:
        if client is not None:
            client.close()
        exit_code = node.stop()

    latency = client.latencies_ms()
    served = [key for key in keys if key in latency]
    during = [s for s in samples if overload_start <= s.seconds <= overload_end]
    steady = during[len(during) // 10:]  # the first 10 % of the run is warm-up of buffers
    counts = {k: int(after.get(k, 0)) - int(before.get(k, 0)) for k in
              ("frames_received", "frames_processed", "frames_dropped_by_node", "frames_dropped_before_node",
               "frames_bad", "frames_failed")}
    stats = rig.percentiles(latency[k] for k in served)
    unaccounted = len(keys) - len(served) - counts["frames_dropped_by_node"] - counts["frames_dropped_before_node"]
    achieved = len(keys) / args.seconds
    rows = [
        ("processing rate R (calibration, one frame in flight)", f"{rate:.1f} frames/s ({closed_ms:.1f} ms median)"),
        ("input rate (target / achieved)", f"{rate * args.factor:.1f} / {achieved:.1f} frames/s for {args.seconds:.0f} s"),
        ("frames published", f"{len(keys)}"),
        ("frames served (outputs with their stamp)", f"{len(served)} ({len(served) / max(len(keys), 1):.1%})"),
        ("frames dropped (published - served)", f"{len(keys) - len(served)}"),
        ("node: received / processed", f"{counts['frames_received']} / {counts['frames_processed']}"),
        ("node: dropped in its mailbox / before it (keep-last-1 queue)",
         f"{counts['frames_dropped_by_node']} / {counts['frames_dropped_before_node']}"),
        ("every frame accounted for (served + dropped in mailbox + dropped before = published)",
         f"{'yes' if unaccounted == 0 else 'no'} (difference {unaccounted})"),
        ("node: bad / failed frames", f"{counts['frames_bad']} / {counts['frames_failed']}"),
        ("served rate during overload", f"{len(served) / args.seconds:.1f} frames/s"),
        ("latency publish -> output, p50 / p90 / p99 / max",
         " / ".join(f"{stats[k]:.1f}" for k in ("p50", "p90", "p99", "max")) + " ms"),
        ("p99 latency / calibration latency", f"{stats['p99'] / closed_ms:.2f}"),
        ("node RSS first / last / max (overload)", " / ".join(f"{v:.1f}" for v in (
            during[0].rss_mb, during[-1].rss_mb, max(s.rss_mb for s in during))) + " MB" if during else "-"),
        ("node RSS slope after the first 10 %", f"{rig.rss_slope_mb_per_min(steady):+.2f} MB/min"),
        ("node threads first / last", f"{during[0].threads} / {during[-1].threads}" if during else "-"),
        ("node exit code on SIGINT", f"{exit_code}"),
    ]
    text = "\n".join([
        "## Overload (bench/reliability_overload.py)", "",
        f"Input at {args.factor:g}x the processing rate for {args.seconds:g} s through the node process "
        f"(default best-effort keep-last-1 input QoS, as a camera driver publishes). Conditions: {conditions}.", "",
        rig.table(rows), "", f"![RSS and latency over time]({PLOT.name})", "",
        f"Rerun: `PYTHONPATH=. .venv/bin/python bench/reliability_overload.py --seconds {args.seconds:g} "
        f"--model {args.model} --input-size {args.input_size} --width {args.width} --height {args.height}`; "
        "the full run is the default `--seconds 60` (add `--model shipped --width 640 --height 480` for the "
        "shipped model).", ""])
    print(text)
    if not args.no_doc:
        t0 = overload_start
        rig.plot(PLOT, f"overload: {args.factor:g}x input for {args.seconds:g} s", [
            ("node RSS (MB)", "seconds since overload start", np.array([s.seconds - t0 for s in samples]),
             {"RSS": np.array([s.rss_mb for s in samples])}),
            ("latency (ms)", "seconds since overload start", np.array([client.published[k] - start - t0 for k in served]),
             {"publish -> output (served frames)": np.array([latency[k] for k in served])})])
        rig.write_section("reliability_overload", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
