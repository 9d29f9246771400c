#!/usr/bin/env python3
"""Tokenizer throughput: ours (bench_tokenizer) against Hugging Face's Rust tokenizer on the
same text, in the same run, on one thread each. Prints both in MB/s and the ratio.

    /work/venv/bin/python tests/bench/tokenizer_vs_hf.py --build build [--seconds 3]

Needs the reference virtual environment (tests/golden/requirements.txt).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("RAYON_NUM_THREADS", "1")  # one thread, as our encoder
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "golden"))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--build", default="build")
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    bench = os.path.join(args.build, "tests", "bench", "bench_tokenizer")

    with tempfile.TemporaryDirectory() as scratch:
        corpus = os.path.join(scratch, "corpus.txt")
        subprocess.run([bench, "--dump-corpus", corpus], check=True)
        ours = json.loads(subprocess.run([bench, "--input", corpus, "--seconds", str(args.seconds)],
                                         check=True, capture_output=True, text=True).stdout)
        with open(corpus, encoding="utf-8") as f:
            lines = f.read().split("\n")
        size = sum(len(line.encode()) + 1 for line in lines) - 1

    import reference

    tokenizer = reference.build_processor().tokenizer
    rounds, start = 0, time.perf_counter()
    while True:
        tokenizer(lines, add_special_tokens=False)
        rounds += 1
        elapsed = time.perf_counter() - start
        if elapsed >= args.seconds:
            break
    hf_mb_s = size * rounds / 1e6 / elapsed
    print(json.dumps({"bench": "tokenizer_encode_vs_hf", "bytes": size,
                      "ours_mb_per_s": round(ours["mb_per_s"], 2),
                      "hf_mb_per_s": round(hf_mb_s, 2),
                      "ratio_ours_over_hf": round(ours["mb_per_s"] / hf_mb_s, 3),
                      "hf": "transformers %s batch call, 1 thread" % reference.versions()["transformers"]}))


if __name__ == "__main__":
    main()
