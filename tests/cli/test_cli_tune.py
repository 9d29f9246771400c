#!/usr/bin/env python3
"""The `kosmos tune` command-line contract on the OpenCL CPU device (PoCL): a small sweep of the
tiny config writes an entry for the device into a --db file (keeping other devices' entries),
`kosmos bench --tune-db` then reports that its tunables came from that entry, --no-tune-db
and --gemm-tune take precedence, and a corrupt database is refused by the tuner (left as it
was) and set aside with a warning by the backend. Standard library only.

    test_cli_tune.py --kosmos build/bin/kosmos

Without an OpenCL CPU device it exits 77 (ctest: skipped), unless KOSMOS_TEST_REQUIRE_ALL=1
makes that a failure.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import unittest

import strict_unittest

ARGS = None
DEVICE = None  # the CPU device of `kosmos devices --json`


def kosmos(*args, check=True):
    cmd = [ARGS.kosmos] + list(args)
    proc = subprocess.run(cmd, capture_output=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError("%s failed (%d): %s" % (" ".join(cmd), proc.returncode,
                                                     proc.stderr.decode()))
    return proc


def bench_tunables(*extra):
    proc = kosmos("bench", "--config", "tiny", "--device", "cpu", "--phases", "prefill",
                  "--repeats", "1", "--warmup", "0", "--batch", "1", "--json", *extra)
    line = json.loads(proc.stdout.decode().splitlines()[0])
    return line["tunables"]


class Tune(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.scratch = tempfile.TemporaryDirectory()
        cls.db = os.path.join(cls.scratch.name, "gemm-tune.json")
        # another machine's entry, which the tuner must keep
        with open(cls.db, "w") as f:
            json.dump({"format": 1, "entries": [
                {"platform": "Other", "device": "other-gpu", "driver": "9",
                 "tune": "gpu,rows_xk=32", "date": "2026-01-01T00:00:00Z"}]}, f)
        cls.tune = kosmos("tune", "--config", "tiny", "--device", "cpu", "--m", "1,9",
                          "--seconds", "0.05", "--max-candidates", "1", "--db", cls.db)

    @classmethod
    def tearDownClass(cls):
        cls.scratch.cleanup()

    def entry(self):
        with open(self.db) as f:
            data = json.load(f)
        self.assertEqual(data["format"], 1)
        mine = [e for e in data["entries"] if e["device"] == DEVICE["name"]]
        return data, mine

    def test_writes_an_entry_for_the_device(self):
        out, err = self.tune.stdout.decode(), self.tune.stderr.decode()
        print(err, file=sys.stderr)
        self.assertIn("written: %s (entry for %s)" % (self.db, DEVICE["name"]), out)
        self.assertIn("tune: [0] cpu:", err)  # the row, then a line per candidate
        self.assertIn("tune: [1] cpu,", err)
        data, mine = self.entry()
        self.assertEqual(len(mine), 1)
        e = mine[0]
        self.assertEqual(e["platform"], DEVICE["platform"])
        self.assertEqual(e["driver"], DEVICE["driver_version"])
        self.assertTrue(e["tune"].startswith("cpu,rows_nt="), e["tune"])
        self.assertIn("best: %s" % e["tune"], out)
        fig = e["figures"]
        self.assertEqual(fig["config"], "tiny")
        self.assertEqual(fig["m"], [1, 9])
        self.assertEqual(fig["measured"], 2)
        self.assertEqual([s["name"] for s in fig["shapes"]][:5],
                         ["t_qkv", "t_out", "t_fc1", "t_fc2", "lm_head"])
        self.assertEqual(len(fig["row"]["ms"]), len(fig["shapes"]))
        # the other machine's entry is still there
        self.assertEqual([x["tune"] for x in data["entries"] if x["device"] == "other-gpu"],
                         ["gpu,rows_xk=32"])

    def test_bench_reads_the_entry(self):
        _, mine = self.entry()
        tunables = bench_tunables("--tune-db", self.db)
        self.assertEqual(tunables, "from %s (entry for %s, driver %s): %s"
                         % (self.db, DEVICE["name"], DEVICE["driver_version"], mine[0]["tune"]))
        # precedence: --gemm-tune over the database; --no-tune-db reads none
        self.assertEqual(bench_tunables("--tune-db", self.db, "--gemm-tune", "cpu,rows_nt=4"),
                         "--gemm-tune cpu,rows_nt=4")
        self.assertEqual(bench_tunables("--no-tune-db"), "built-in row cpu")
        # a database that does not exist is silent
        self.assertEqual(bench_tunables("--tune-db", self.db + ".missing"), "built-in row cpu")

    def test_corrupt_database(self):
        bad = os.path.join(self.scratch.name, "corrupt.json")
        with open(bad, "w") as f:
            f.write('{"format": 1, "entries": [')
        proc = kosmos("tune", "--config", "tiny", "--device", "cpu", "--m", "1",
                      "--seconds", "0", "--max-candidates", "1", "--db", bad, check=False)
        self.assertEqual(proc.returncode, 1)
        self.assertIn("not JSON", proc.stderr.decode())
        self.assertIn("not overwritten", proc.stderr.decode())
        with open(bad) as f:
            self.assertEqual(f.read(), '{"format": 1, "entries": [')
        # the backend starts anyway, on the built-in row, and says why
        tunables = bench_tunables("--tune-db", bad)
        self.assertTrue(tunables.startswith("built-in row cpu (warning: "), tunables)
        self.assertIn(bad, tunables)

    def test_print_writes_nothing(self):
        path = os.path.join(self.scratch.name, "never.json")
        proc = kosmos("tune", "--config", "tiny", "--device", "cpu", "--m", "1",
                      "--seconds", "0", "--try", "cpu,rows_max_m=64", "--db", path, "--print")
        self.assertIn("not written (--print)", proc.stdout.decode())
        self.assertFalse(os.path.exists(path))

    def test_usage(self):
        self.assertIn("tune ", kosmos("--help").stdout.decode())
        help_text = kosmos("tune", "--help").stdout.decode()
        for option in ("--device", "--config", "--m", "--seconds", "--db", "--print"):
            self.assertIn(option, help_text)
        for bad in (["--device", "ref"], ["--config", "huge"], ["--m", "0"], ["--m", "1,x"],
                    ["--seconds", "-1"], ["--bogus"], ["--db", ""]):
            proc = kosmos("tune", *bad, check=False)
            self.assertEqual(proc.returncode, 2, bad)
            self.assertIn("kosmos tune: ", proc.stderr.decode(), bad)


def cpu_device():
    proc = subprocess.run([ARGS.kosmos, "devices", "--json"], capture_output=True, timeout=120)
    try:
        devices = json.loads(proc.stdout) if proc.returncode == 0 else []
    except ValueError:
        devices = []
    cpus = [d for d in devices if d["type"] == "CPU"]
    return cpus[0] if cpus else None


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--kosmos", required=True)
    ARGS, rest = parser.parse_known_args()
    DEVICE = cpu_device()
    if DEVICE is None:
        if os.environ.get("KOSMOS_TEST_REQUIRE_ALL", "0") not in ("", "0"):
            print("FAIL: no OpenCL CPU device, and KOSMOS_TEST_REQUIRE_ALL=1")
            sys.exit(1)
        print("no OpenCL CPU device: skipped")
        sys.exit(77)
    strict_unittest.main([sys.argv[0]] + rest)
