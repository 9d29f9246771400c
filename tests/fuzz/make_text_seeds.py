#!/usr/bin/env python3
"""Writes the seed corpora of fuzz_tokenizer and fuzz_postprocess: 48 inputs each, spread over
the lengths of the golden fixtures (tests/golden/text), so every kind of input the fixtures
cover (scripts, tags, malformed structures) starts the fuzzers. Standard library only.

    python3 tests/fuzz/make_text_seeds.py
"""
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))
GOLDEN = os.path.join(os.path.dirname(HERE), "golden", "text")


def spread(texts, count):
    texts = sorted({t for t in texts if len(t.encode()) < 4000}, key=lambda s: (len(s), s))
    step = max(1, len(texts) // count)
    return texts[::step][:count]


def main():
    sources = {"fuzz_tokenizer": ("tokenizer.jsonl", "text"),
               "fuzz_postprocess": ("postprocess.jsonl", "generated")}
    for target, (fixture, key) in sources.items():
        with open(os.path.join(GOLDEN, fixture), encoding="utf-8") as f:
            texts = [json.loads(line)[key] for line in f if line.strip()]
        folder = os.path.join(HERE, "corpus", target)
        os.makedirs(folder, exist_ok=True)
        for i, text in enumerate(spread(texts, 48)):
            with open(os.path.join(folder, "seed_%02d" % i), "wb") as f:
                f.write(text.encode())
        print(target, "48 seeds")


if __name__ == "__main__":
    main()
