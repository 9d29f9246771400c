#!/usr/bin/env python3
"""The `kosmos tokenize | encode | postprocess` command-line contract, checked against the
golden fixtures (tests/golden/text/) by running the real binary. Standard library only.

    test_cli_text.py --kosmos build/client/cli/kosmos --data tests/data --golden tests/golden
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

import strict_unittest

ARGS = None


def load_jsonl(name):
    with open(os.path.join(ARGS.golden, "text", name), encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def run(args, lines, expect_code=None):
    """Runs kosmos with JSON Lines input; returns (exit code, parsed output lines, stderr)."""
    payload = "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines)
    proc = subprocess.run([ARGS.kosmos] + args, input=payload.encode(), capture_output=True,
                          timeout=600)
    out = [json.loads(line) for line in proc.stdout.decode().split("\n")[:-1]]
    if expect_code is not None and proc.returncode != expect_code:
        raise AssertionError("kosmos %s exited %d, expected %d; stderr: %s"
                             % (" ".join(args), proc.returncode, expect_code, proc.stderr.decode()))
    return proc.returncode, out, proc.stderr.decode()


def boxes_close(a, b):
    return len(a) == len(b) and all(
        len(x) == len(y) and all(abs(p - q) <= 1e-9 for p, q in zip(x, y)) for x, y in zip(a, b))


def entities_equal(got, want):
    if len(got) != len(want):
        return False
    for g, w in zip(got, want):
        if g[0] != w[0] or list(g[1]) != list(w[1]) or not boxes_close(g[2], w[2]):
            return False
    return True


class Tokenize(unittest.TestCase):
    def setUp(self):
        self.model = os.path.join(ARGS.data, "kosmos2")

    def test_ids_match_reference(self):
        rows = load_jsonl("tokenizer.jsonl")
        code, out, _ = run(["tokenize", "--model", self.model], [r["text"] for r in rows], 0)
        self.assertEqual(len(out), len(rows))
        bad = [(r["text"], r["ids"], o) for r, o in zip(rows, out) if o != r["ids"]]
        self.assertFalse(bad, "%d of %d differ; first: %r" % (len(bad), len(rows), bad[:1]))

    def check_decodes(self, rows, flags, key, model=None):
        code, out, _ = run(["tokenize", "--model", model or self.model, "--decode"] + flags,
                           [r["ids"] for r in rows], 0)
        self.assertEqual(len(out), len(rows))
        bad = [(r["ids"], r["decode"][key], o) for r, o in zip(rows, out) if o != r["decode"][key]]
        self.assertFalse(bad, "%s: %d of %d differ; first: %r" % (key, len(bad), len(rows), bad[:1]))

    def test_decodes_match_reference(self):
        rows = load_jsonl("tokenizer.jsonl") + load_jsonl("tokenizer_decode.jsonl")
        self.check_decodes(rows, [], "plain")  # no tokenizer_config.json: no clean-up
        self.check_decodes(rows, ["--clean-up-spaces"], "clean")
        self.check_decodes(rows, ["--skip-special-tokens"], "skip")
        self.check_decodes(rows, ["--skip-special-tokens", "--clean-up-spaces"], "skip_clean")
        self.check_decodes(rows, ["--skip-special-tokens", "--no-clean-up-spaces"], "skip")

    def test_tokenizer_config_sets_clean_up_default(self):
        with tempfile.TemporaryDirectory() as folder:
            os.symlink(os.path.join(self.model, "sentencepiece.bpe.model"),
                       os.path.join(folder, "sentencepiece.bpe.model"))
            shutil.copy(os.path.join(self.model, "checkpoint", "tokenizer_config.json"), folder)
            rows = load_jsonl("tokenizer_decode.jsonl")
            self.check_decodes(rows, [], "clean", model=folder)
            self.check_decodes(rows, ["--no-clean-up-spaces"], "plain", model=folder)

    def test_bad_lines_fail_in_place(self):
        lines = ["ok", 5, "fine", [1, 2]]
        code, out, _ = run(["tokenize", "--model", self.model], lines, 1)
        self.assertEqual(len(out), 4)
        self.assertIsInstance(out[0], list)
        self.assertIn("error", out[1])
        self.assertIsInstance(out[2], list)
        self.assertIn("error", out[3])
        code, out, _ = run(["tokenize", "--model", self.model, "--decode"],
                           [[0, 5], [99999999], ["x"], [-1], []], 1)
        self.assertEqual([isinstance(o, str) for o in out], [True, False, False, False, True])

    def test_invalid_json_and_blank_lines(self):
        proc = subprocess.run([ARGS.kosmos, "tokenize", "--model", self.model],
                              input=b'"a"\n\n{bad\n"b"', capture_output=True)
        out = [json.loads(line) for line in proc.stdout.decode().split("\n")[:-1]]
        self.assertEqual(proc.returncode, 1)
        self.assertEqual(len(out), 4)
        self.assertIn("error", out[1])
        self.assertIn("error", out[2])
        self.assertIsInstance(out[3], list)

    def test_missing_model_folder(self):
        for command in ("tokenize", "encode"):
            proc = subprocess.run([ARGS.kosmos, command, "--model", "/nonexistent/model"],
                                  input=b"", capture_output=True)
            self.assertEqual(proc.returncode, 2, command)
            self.assertIn(b"no such model folder: /nonexistent/model", proc.stderr, command)

    def test_usage_errors(self):
        for args in (["tokenize"], ["tokenize", "--model", "/nonexistent"], ["tokenize", "--bogus"],
                     ["encode"], ["nosuchcommand"], [], ["postprocess", "extra"]):
            proc = subprocess.run([ARGS.kosmos] + args, input=b"", capture_output=True)
            self.assertEqual(proc.returncode, 2, args)
            self.assertEqual(proc.stdout, b"", args)
            self.assertTrue(proc.stderr.strip(), args)
        for args in (["--help"], ["tokenize", "--help"], ["encode", "--help"],
                     ["postprocess", "--help"], ["help", "encode"]):
            proc = subprocess.run([ARGS.kosmos] + args, capture_output=True)
            self.assertEqual(proc.returncode, 0, args)
            self.assertIn(b"usage", proc.stdout, args)


class Encode(unittest.TestCase):
    def test_matches_reference(self):
        rows = load_jsonl("processor.jsonl")
        inputs = [{"prompt": r["prompt"], "bboxes": r["bboxes"]} for r in rows]
        code, out, _ = run(["encode", "--model", os.path.join(ARGS.data, "kosmos2")], inputs)
        self.assertEqual(len(out), len(rows))
        bad = []
        for r, o in zip(rows, out):
            if "error" in r:
                if "error" not in o:
                    bad.append((r["prompt"], r["bboxes"], "expected an error", o))
            elif o != {k: r[k] for k in ("input_ids", "attention_mask", "image_embeds_position_mask")}:
                bad.append((r["prompt"], r["bboxes"], o))
        self.assertFalse(bad, "%d of %d differ; first: %r" % (len(bad), len(rows), bad[:1]))
        self.assertEqual(code, 1 if any("error" in r for r in rows) else 0)

    def test_missing_bboxes_key_means_none(self):
        model = os.path.join(ARGS.data, "kosmos2")
        _, a, _ = run(["encode", "--model", model], [{"prompt": "<grounding>An image of"}], 0)
        _, b, _ = run(["encode", "--model", model],
                      [{"prompt": "<grounding>An image of", "bboxes": None}], 0)
        self.assertEqual(a, b)
        self.assertEqual(len(a[0]["input_ids"]), 71)


class Postprocess(unittest.TestCase):
    def test_matches_reference(self):
        rows = load_jsonl("postprocess.jsonl")
        code, out, _ = run(["postprocess"], [r["generated"] for r in rows], 0)
        self.assertEqual(len(out), len(rows))
        bad = [(r["generated"], o) for r, o in zip(rows, out)
               if o.get("text") != r["text"] or not entities_equal(o.get("entities", []), r["entities"])]
        self.assertFalse(bad, "%d of %d differ; first: %r" % (len(bad), len(rows), bad[:1]))

    def test_no_cleanup_matches_reference(self):
        rows = load_jsonl("postprocess.jsonl")
        code, out, _ = run(["postprocess", "--no-cleanup"], [r["generated"] for r in rows], 0)
        bad = [(r["generated"], r["raw"], o) for r, o in zip(rows, out) if o != r["raw"]]
        self.assertFalse(bad, "%d of %d differ; first: %r" % (len(bad), len(rows), bad[:1]))


def main():
    global ARGS
    parser = argparse.ArgumentParser()
    parser.add_argument("--kosmos", required=True)
    parser.add_argument("--data", required=True, help="the repository's tests/data folder")
    parser.add_argument("--golden", required=True)
    ARGS, rest = parser.parse_known_args()
    strict_unittest.main([sys.argv[0]] + rest)


if __name__ == "__main__":
    main()
