"""docs/BENCHMARKS.md writer: one block per benchmark section, between HTML comment markers

    <!-- bench:KEY -->
    ## Title
    body
    <!-- /bench:KEY -->

so that `run_all.py --only KEY` replaces that block and keeps the others from earlier runs.
Blocks appear in ORDER (unknown keys after, in the order given).
"""
from __future__ import annotations

import re
from typing import Sequence

from perf_common import Section

ORDER = ("flops", "latency", "reuse", "node", "runtime", "pruning", "efficiency", "int8", "peers", "scaling")
HEADER = """# Benchmarks

Written by `make bench` (`bench/run_all.py`; `--quick` for a smoke run, `--only SECTION` to redo one
section and keep the others). The machine is shared and noisy: every timing is a median of repeats, and
ratios are taken between contenders timed in the same run (round-robin), which is what to compare.
Each section states its conditions (threads, load average, model, inputs) and when it was run. Goals
come from issue 9 and are reported as met or not, as measured."""
_BLOCK = re.compile(r"<!-- bench:(?P<key>[\w-]+) -->\n(?P<content>.*?)<!-- /bench:(?P=key) -->", re.S)


def render_block(section: Section) -> str:
    """One section as a marked Markdown block (title as a level-2 heading)."""
    if not section.key or not re.fullmatch(r"[\w-]+", section.key):
        raise ValueError(f"section key {section.key!r} must be letters, digits, '_' or '-'")
    body = section.body.rstrip("\n")
    return f"<!-- bench:{section.key} -->\n## {section.title}\n\n{body}\n<!-- /bench:{section.key} -->"


def parse_blocks(text: str) -> dict[str, str]:
    """{key: whole marked block} of a BENCHMARKS.md written by `render`; {} for other text."""
    return {match.group("key"): match.group(0) for match in _BLOCK.finditer(text)}


def render(sections: Sequence[Section], previous: str | None = None) -> str:
    """The whole file: HEADER, then the given sections and the blocks of `previous` that they do not
    replace, in ORDER."""
    blocks = parse_blocks(previous) if previous else {}
    for section in sections:
        blocks[section.key] = render_block(section)
    keys = [k for k in ORDER if k in blocks] + [k for k in blocks if k not in ORDER]
    return HEADER + "\n\n" + "\n\n".join(blocks[k] for k in keys) + "\n"
