"""Soak: N frames (default 10,000) through the real node process; memory, threads and files stay flat.

    PYTHONPATH=. .venv/bin/python bench/reliability_soak.py                  # 10,000 frames, tiny model
    PYTHONPATH=. .venv/bin/python bench/reliability_soak.py --frames 1000    # a quick look
    PYTHONPATH=. .venv/bin/python bench/reliability_soak.py --model shipped --width 640 --height 480

The node runs as its own process with reliable keep-last-1 input (the soak measures the node, not
DDS loss). Frames go one at a time: the next is published when the previous one's output arrived
(a frame without output within 10 s is counted lost). The clip is a procedural video, so tracks are
born and die all the time; every `--bad-every`-th frame is a broken message (truncated data) that the
node must skip, and every `--switch-prompts-every` frames the prompts change through the parameter
service (three lists in turn): the error path and the prompt path run in the soak as well.

Measured after a warm-up of `--warmup` frames (first model runs, lazily created threads and
buffers): the node's RSS (growth in % from the warm-up level to the end; both the median of 5
samples), its thread count and open file descriptors (after warm-up vs at the end), end-to-end
latency per frame. Writes a section of docs/RELIABILITY.md and docs/reliability_soak.png.
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

PLOT = rig.ROOT / "docs" / "reliability_soak.png"
PROMPT_LISTS = (["red star", "blue circle"], ["green triangle", "yellow square", "purple heart"], ["orange ring"])


def set_prompts(client: rig.Client, prompts: list[str]) -> bool:
    from rclpy.parameter import Parameter
    from rclpy.parameter_client import AsyncParameterClient

    if not hasattr(client, "parameters"):
        client.parameters = AsyncParameterClient(client.node, f"{rig.NAMESPACE}/mobius_segmenter")
        client.parameters.wait_for_services(10)
    future = client.parameters.set_parameters([Parameter("prompts", value=prompts)])
    deadline = time.monotonic() + 10
    while not future.done() and time.monotonic() < deadline:
        time.sleep(0.01)
    return future.done() and future.result().results[0].successful


def broken(client: rig.Client, frame: np.ndarray):
    msg = client.message(frame)
    msg.data = bytes(msg.data[: len(msg.data) // 2])
    return msg


def run(client: rig.Client, frames: list[np.ndarray], count: int, args, start: float) -> dict:
    """count frames; {'times': per good frame (seconds since start), 'latency_ms', 'lost', 'bad', ...}."""
    times, latency, lost, bad, switches, refused = [], [], 0, 0, 0, 0
    for index in tqdm(range(count), desc="soak", unit="frame", mininterval=2.0):
        if args.switch_prompts_every and index and index % args.switch_prompts_every == 0:
            switches += 1
            refused += not set_prompts(client, PROMPT_LISTS[switches % len(PROMPT_LISTS)])
        frame = frames[index % len(frames)]
        if args.bad_every and index % args.bad_every == args.bad_every - 1:
            client.publish(broken(client, frame))
            bad += 1
            time.sleep(0.02)  # let the node take it before the next frame replaces it
            continue
        key = client.publish(client.message(frame))
        if client.wait_for(key, timeout=10.0):
            times.append(client.received[key] - start)
            latency.append((client.received[key] - client.published[key]) * 1000)
        else:
            lost += 1
    return {"times": np.array(times), "latency_ms": np.array(latency), "lost": lost, "bad": bad,
            "switches": switches, "refused": refused}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=10_000, help="frames after the warm-up")
    parser.add_argument("--warmup", type=int, default=200, help="frames before the baseline is taken")
    parser.add_argument("--bad-every", type=int, default=50, help="every n-th frame is broken (0: none)")
    parser.add_argument("--switch-prompts-every", type=int, default=1000, help="frames between prompt changes (0: never)")
    rig.add_common_arguments(parser)
    args = parser.parse_args()
    rig.ros_environment()
    parameters = rig.node_parameters(args, reliable=True)
    conditions = rig.describe(args, parameters)
    frames = rig.clip(args.width, args.height)
    node = rig.NodeProcess(parameters)
    client = None
    try:
        node.wait_active()
        client = rig.Client(reliable=True)
        client.wait_connected()
        start = time.monotonic()
        warm = run(client, frames, args.warmup, argparse.Namespace(bad_every=0, switch_prompts_every=0), start)
        time.sleep(1.0)
        baseline = rig.samples_now(node.pid, start)
        sampler = rig.Sampler(node.pid, start, period=1.0)
        soak = run(client, frames, args.frames, args, start)
        samples = sampler.stop()
        time.sleep(1.0)
        final = rig.samples_now(node.pid, start)
        diagnostics = client.fresh_diagnostics()
    finally:
        if client is not None:
            client.close()
        exit_code = node.stop()

    rss_warm = float(np.median([s.rss_mb for s in baseline]))
    rss_end = float(np.median([s.rss_mb for s in final]))
    growth = (rss_end - rss_warm) / rss_warm
    stats = rig.percentiles(soak["latency_ms"])
    served = len(soak["latency_ms"])
    rows = [
        ("frames after warm-up (good / broken)", f"{args.frames} ({served + soak['lost']} / {soak['bad']})"),
        ("good frames served / lost", f"{served} / {soak['lost']}"),
        ("broken frames counted by the node (whole run)", f"{diagnostics.get('frames_bad', '?')} of {soak['bad']}"),
        ("processing failures (node)", diagnostics.get("frames_failed", "?")),
        ("prompt changes (refused)", f"{soak['switches']} ({soak['refused']})"),
        ("warm-up frames", f"{args.warmup}"),
        ("node RSS after warm-up / at the end", f"{rss_warm:.1f} / {rss_end:.1f} MB"),
        ("RSS growth after warm-up", f"{growth:+.2%} (target < 5 %)"),
        ("RSS slope during the soak", f"{rig.rss_slope_mb_per_min(samples):+.2f} MB/min"),
        ("node threads after warm-up / at the end", f"{baseline[-1].threads} / {final[-1].threads}"),
        ("node open file descriptors after warm-up / at the end", f"{baseline[-1].fds} / {final[-1].fds}"),
        ("latency publish -> output, p50 / p90 / p99 / max",
         " / ".join(f"{stats[k]:.1f}" for k in ("p50", "p90", "p99", "max")) + " ms"),
        ("duration", f"{soak['times'][-1] - soak['times'][0]:.0f} s" if served > 1 else "-"),
        ("node exit code on SIGINT", f"{exit_code}"),
    ]
    text = "\n".join([
        "## Soak (bench/reliability_soak.py)", "",
        f"{args.frames} frames through the node process, one at a time (reliable keep-last-1 input), every "
        f"{args.bad_every}th broken, prompts changed every {args.switch_prompts_every} frames. Conditions: "
        f"{conditions}.", "", rig.table(rows), "", f"![RSS and latency over the soak]({PLOT.name})", "",
        f"Rerun: `PYTHONPATH=. .venv/bin/python bench/reliability_soak.py --frames {args.frames} --model "
        f"{args.model} --input-size {args.input_size} --width {args.width} --height {args.height}`; the full run "
        f"is the default `--frames 10000` (add `--model shipped --width 640 --height 480` for the shipped model).",
        ""])
    print(text)
    if not args.no_doc:
        rig.plot(PLOT, f"soak: {args.frames} frames after {args.warmup} warm-up frames", [
            ("node RSS (MB)", "seconds", np.array([s.seconds for s in samples]),
             {"RSS": np.array([s.rss_mb for s in samples])}),
            ("count", "seconds", np.array([s.seconds for s in samples]),
             {"threads": np.array([s.threads for s in samples]), "open fds": np.array([s.fds for s in samples])}),
            ("latency (ms)", "seconds", soak["times"], {"publish -> output": soak["latency_ms"]})])
        rig.write_section("reliability_soak", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
