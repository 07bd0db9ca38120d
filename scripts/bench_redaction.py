"""Redaction timing on adversarial text, as ratios of the old signed-URL pattern to `redact_text()`.

    python -m scripts.bench_redaction [--kib 72] [--mib 1]

The old pattern started a match at every `http://` and rescanned the rest of the word for a
signature parameter, so a run of "http://a?" cost quadratic time (51 s for 72 KB). It is timed
here on `--kib` of text only (the whole 1 MB would take hours); `redact_text()` (every pattern,
registered secrets included) is timed on `--mib` of each adversarial case and on the small
input for a like-for-like ratio.
"""

from __future__ import annotations

import argparse
import re
import time

from common.redaction import redact_text

# The pattern common/redaction.py used before it was made linear (kept here only to be measured).
OLD_SIGNED_URL = re.compile(
    r"(https?://[^\s?'\"]+)\?[^\s'\"]*(?:X-Amz-Signature|X-Amz-Credential|Signature=|X-Goog-Signature"
    r"|sig=|[?&]token=|access_token=|AWSAccessKeyId=)[^\s'\"]*",
    re.IGNORECASE,
)

CASES = {
    "http://a? run": "http://a?",
    "relative a? run": "a?",
    "&token run": "&token",
    "token : run": "token :",
    "bearer run": "bearer ",
    "plain words": "lorem ipsum ",
}


def _timed(fn, text: str) -> float:
    start = time.perf_counter()
    fn(text)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kib", type=int, default=16, help="size of the text the old pattern gets")
    parser.add_argument("--mib", type=float, default=1.0, help="size of the text redact_text() gets")
    args = parser.parse_args()
    small, big = args.kib * 1024, int(args.mib * 2**20)
    print(f"{'case':<18} {'old pattern':>14} {'redact_text':>14} {'ratio':>8}   {'redact_text':>12}")
    print(f"{'':<18} {f'{args.kib} KiB':>14} {f'{args.kib} KiB':>14} {'old/new':>8}   {f'{args.mib:g} MiB':>12}")
    for name, unit in CASES.items():
        text_small = unit * (small // len(unit))
        old = _timed(lambda t: OLD_SIGNED_URL.sub(r"\1?***", t), text_small)
        new = _timed(redact_text, text_small)
        new_big = _timed(redact_text, unit * (big // len(unit)) + " X-Amz-Signature=1 sig=2")
        print(f"{name:<18} {old:>13.4f}s {new:>13.4f}s {old / max(new, 1e-9):>7.1f}x   {new_big:>11.3f}s")


if __name__ == "__main__":
    main()
