#!/usr/bin/env python3
"""The `kosmos submit` command-line contract on the tiny test checkpoint (meaningless text, real
pipeline): complete JSON Lines over the demo images, --resume after a killed run, COCO and
--draw outputs, a broken image, usage errors, a run against separately started
kosmos-broker + kosmos-worker processes (deduplication by idempotency key), every BMP variant,
and the one list of image formats (--help, docs/submit.md, docs/protocol.md, the worker and
the folder walk agree). Standard library only.

    test_cli_submit.py --kosmos build/bin/kosmos --data tests/data \
        --model tests/data/tiny-kosmos2 [--device ref] \
        --broker-bin build/bin/kosmos-broker --worker-bin build/bin/kosmos-worker \
        --test-worker-bin build/bin/kosmos-test-worker
"""
import argparse
import base64
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest

import strict_unittest

ARGS = None
MAX_NEW = "4"
REG_PROMPT = "<grounding><phrase> It</phrase> is"
CAPTION = "<grounding>An image of"
LINE_KEYS = {"path", "prompt", "status", "text", "entities", "boxes_px", "timings", "worker"}


def images_dir():
    return os.path.join(ARGS.data, "kosmos2", "images")


def image_names():
    return sorted(n for n in os.listdir(images_dir()) if not n.startswith("."))


def submit(*args, env=None, timeout=600):
    cmd = [ARGS.kosmos, "submit", "--max-new-tokens", MAX_NEW] + list(args)
    return subprocess.run(cmd, capture_output=True, timeout=timeout, env=env)


def embedded(*args, **kw):
    return submit("--model", ARGS.model, "--device", ARGS.device, *args, **kw)


def read_lines(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def summary(stderr):
    """The numbers of the summary line on stderr."""
    text = stderr.decode(errors="replace")
    m = re.search(r"(\d+) ok, (\d+) failed; (\d+) skipped \(already ok\); (\d+) submitted, "
                  r"(\d+) deduplicated(?:; the embedded worker computed (\d+))?", text)
    assert m, "no summary in: " + text
    keys = ["ok", "failed", "skipped", "submitted", "deduplicated", "computed"]
    return {k: (int(v) if v is not None else None) for k, v in zip(keys, m.groups())}


class Scratch(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="kosmos-submit-test-")
        # The embedded broker's folder goes here too, so a killed run leaves nothing behind.
        self.env = dict(os.environ, TMPDIR=self.dir)

    def tearDown(self):
        shutil.rmtree(self.dir, ignore_errors=True)

    def path(self, *names):
        return os.path.join(self.dir, *names)


class UsageErrors(Scratch):
    def check_usage(self, *args):
        proc = subprocess.run([ARGS.kosmos, "submit"] + list(args), capture_output=True,
                              timeout=60, env=self.env)
        self.assertEqual(proc.returncode, 2, (args, proc.stderr))
        self.assertIn(b"kosmos: submit:", proc.stderr)
        self.assertEqual(proc.stdout, b"")
        return proc

    def test_usage(self):
        img = images_dir()
        self.check_usage()
        self.check_usage(img)                                             # no --broker/--model
        self.check_usage("--broker", "tcp://127.0.0.1:1", "--model", ARGS.model, img)
        self.check_usage("--broker", "tcp://127.0.0.1:1", "--device", "ref", img)
        self.check_usage("--model", ARGS.model)                           # no images
        self.check_usage("--model", ARGS.model, "--task", "ground", img)  # no --phrase
        self.check_usage("--model", ARGS.model, "--task", "vqa", img)     # no --question
        self.check_usage("--model", ARGS.model, "--task", "poem", img)
        self.check_usage("--model", ARGS.model, "--prompt", "x", "--task", "caption", img)
        self.check_usage("--model", ARGS.model, "--phrase", "a dog", img)
        self.check_usage("--model", ARGS.model, "--resume", img)          # no -o
        self.check_usage("--model", ARGS.model, "--window", "0", img)
        self.check_usage("--model", ARGS.model, "--max-new-tokens", "5000", img)
        self.check_usage("--model", ARGS.model, "--priority", "101", img)
        self.check_usage("--model", ARGS.model, self.path("missing.png"))
        self.check_usage("--model", ARGS.model, "@" + self.path("missing.txt"))
        self.check_usage("--model", ARGS.model, "--bogus", img)

    def test_help(self):
        proc = subprocess.run([ARGS.kosmos, "submit", "--help"], capture_output=True, timeout=60)
        self.assertEqual(proc.returncode, 0)
        self.assertIn(b"--resume", proc.stdout)

    def test_no_broker_answers(self):
        # A connection error is exit 2, found before anything is written.
        out = self.path("out.jsonl")
        proc = subprocess.run([ARGS.kosmos, "submit", "--broker",
                               "ipc://" + self.path("nobody"), images_dir(), "-o", out],
                              capture_output=True, timeout=120, env=self.env)
        self.assertEqual(proc.returncode, 2, proc.stderr)
        self.assertIn(b"does not answer", proc.stderr)

    def test_missing_model_folder(self):
        # kosmos submit --model and kosmos-worker --model name the folder itself.
        missing = self.path("no-such-model")
        proc = submit("--model", missing, "--device", ARGS.device, images_dir(), env=self.env,
                      timeout=120)
        self.assertEqual(proc.returncode, 2, proc.stderr)
        self.assertIn(b"no such model folder: " + missing.encode(), proc.stderr)
        proc = subprocess.run([ARGS.worker_bin, "--broker", "ipc://" + self.path("nobody"),
                               "--model", missing, "--device", ARGS.device],
                              capture_output=True, timeout=120, env=self.env)
        self.assertNotEqual(proc.returncode, 0)
        self.assertLess(proc.returncode, 128, "killed by a signal")
        self.assertIn(b"no such model folder: " + missing.encode(), proc.stderr + proc.stdout)

    def test_worker_chunk_options(self):
        # kosmos-worker --vision-chunk / --prefill-tokens: out of range or not a number is a
        # usage error (exit 1) naming the option, before the model is read; a good value
        # reaches the batch (the "started" log line says what it runs with).
        base = [ARGS.worker_bin, "--broker", "ipc://" + self.path("nobody"), "--model",
                ARGS.model, "--device", ARGS.device]
        for opt, value in (("--vision-chunk", "0"), ("--vision-chunk", "65"),
                           ("--vision-chunk", "two"), ("--vision-chunk", "-3"),
                           ("--vision-chunk", ""), ("--prefill-tokens", "0"),
                           ("--prefill-tokens", "12x"), ("--prefill-tokens", "2000000")):
            proc = subprocess.run(base + [opt, value], capture_output=True, timeout=60,
                                  env=self.env)
            self.assertEqual(proc.returncode, 1, (opt, value, proc.stderr))
            self.assertIn(b"bad value for " + opt.encode() + b": '" + value.encode() + b"'",
                          proc.stderr)
        proc = subprocess.run([ARGS.worker_bin, "--help"], capture_output=True, timeout=60)
        self.assertEqual(proc.returncode, 0)
        for opt in (b"--vision-chunk N", b"--prefill-tokens N"):
            self.assertIn(opt, proc.stdout)
        for extra, chunk, prefill in ((["--vision-chunk", "3", "--prefill-tokens", "100"], 3, 100),
                                      ([], None, 512)):
            worker = subprocess.Popen(base + extra + ["--log-level", "info"],
                                      stderr=subprocess.PIPE, env=self.env)
            try:
                started = None
                deadline = time.monotonic() + 120
                while started is None and time.monotonic() < deadline:
                    line = worker.stderr.readline()
                    if not line:
                        break
                    event = json.loads(line)
                    if event.get("event") == "started":
                        started = event
            finally:
                worker.terminate()
                worker.communicate(timeout=60)
            self.assertIsNotNone(started, "no started line")
            self.assertEqual(started["prefill_tokens"], prefill)
            if chunk is not None:
                self.assertEqual(started["vision_chunk"], chunk)
            else:  # the backend's default for the device
                self.assertGreaterEqual(started["vision_chunk"], 1)

    def test_bad_model(self):
        empty = self.path("empty-model")
        os.mkdir(empty)
        proc = submit("--model", empty, "--device", ARGS.device, images_dir(), env=self.env,
                      timeout=120)
        self.assertEqual(proc.returncode, 2, proc.stderr)


class Embedded(Scratch):
    def test_complete_coco_draw(self):
        """7 images x 2 prompts (a caption over the folder, a referring expression generation
        prompt with a box per image from --jobs): every pair once, ok; COCO and drawings."""
        names = image_names()
        self.assertEqual(len(names), 7)
        jobs = self.path("jobs.jsonl")
        with open(jobs, "w") as f:
            for n in names:
                f.write(json.dumps({"path": os.path.join(images_dir(), n), "prompt": REG_PROMPT,
                                    "bboxes": [[0.390625, 0.046875, 0.984375, 0.828125]]}) + "\n")
        out, coco, draw = self.path("out.jsonl"), self.path("coco.json"), self.path("draw")
        proc = embedded(images_dir(), "--jobs", jobs, "-o", out, "--coco", coco, "--draw", draw,
                        env=self.env)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertEqual(proc.stdout, b"")
        lines = read_lines(out)
        self.assertEqual(len(lines), 14)
        pairs = {(l["path"], l["prompt"]) for l in lines}
        want = {(os.path.join(images_dir(), n), p) for n in names for p in (CAPTION, REG_PROMPT)}
        self.assertEqual(pairs, want)
        for l in lines:
            self.assertTrue(LINE_KEYS <= set(l), l)
            self.assertEqual(l["status"], "ok", l)
            self.assertNotIn("error", l)
            self.assertTrue(l["text"].startswith("An image of" if l["prompt"] == CAPTION
                                                 else "It is"), l["text"])
            self.assertEqual(len(l["entities"]), len(l["boxes_px"]))
            self.assertEqual(l["worker"], "embedded")
            self.assertGreater(l["width"], 0)
            self.assertIn("decode_ms", l["timings"])
            for entity, px in zip(l["entities"], l["boxes_px"]):
                phrase, span, boxes = entity
                self.assertIsInstance(phrase, str)
                self.assertEqual(len(span), 2)
                self.assertEqual(len(boxes), len(px))
                for b, p in zip(boxes, px):   # pixels = normalized x source size
                    self.assertAlmostEqual(p[0], b[0] * l["width"], places=3)
                    self.assertAlmostEqual(p[3], b[3] * l["height"], places=3)
            if l["prompt"] == REG_PROMPT:   # the prompt's own grounded phrase comes back
                self.assertEqual(l["entities"][0][0], "It")
                self.assertEqual(l["entities"][0][2], [[0.390625, 0.046875, 0.984375, 0.828125]])
        s = summary(proc.stderr)
        self.assertEqual((s["ok"], s["failed"], s["submitted"], s["computed"]), (14, 0, 14, 14))

        with open(coco) as f:
            c = json.load(f)
        self.assertEqual(len(c["images"]), 7)
        self.assertEqual({i["file_name"] for i in c["images"]},
                         {os.path.join(images_dir(), n) for n in names})
        sizes = {(l["path"]): (l["width"], l["height"]) for l in lines}
        for i in c["images"]:
            self.assertEqual((i["width"], i["height"]), sizes[i["file_name"]])
        n_boxes = sum(len(px) for l in lines for px in l["boxes_px"])
        phrases = sorted({e[0] for l in lines for e in l["entities"] if e[2]})
        self.assertGreaterEqual(n_boxes, 7)
        self.assertEqual(len(c["annotations"]), n_boxes)
        self.assertEqual([k["name"] for k in c["categories"]], phrases)   # ids by name order
        self.assertEqual([k["id"] for k in c["categories"]], list(range(1, len(phrases) + 1)))
        image_ids = {i["id"] for i in c["images"]}
        cat_ids = {k["id"] for k in c["categories"]}
        for a in c["annotations"]:
            self.assertIn(a["image_id"], image_ids)
            self.assertIn(a["category_id"], cat_ids)
            x, y, w, h = a["bbox"]
            self.assertGreater(w, 0)
            self.assertGreater(h, 0)

        drawn = sorted(os.listdir(draw))
        self.assertEqual(len(drawn), 14)   # one per image and prompt, never overwritten
        for name in drawn:
            self.assertTrue(name.endswith(".png"))
            with open(os.path.join(draw, name), "rb") as f:
                self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n")

    def test_stdout_and_tasks(self):
        """Without -o the lines go to stdout; --task builds the documented prompts."""
        one = os.path.join(images_dir(), "snowman.png")
        for task, extra, prompt in [
                ("detailed", [], "<grounding> Describe this image in detail:"),
                ("ground", ["--phrase", "a snowman"], "<grounding><phrase>a snowman</phrase>"),
                ("vqa", ["--question", "What is it?"],
                 "<grounding> Question: What is it? Answer:")]:
            proc = embedded("--task", task, *extra, one, env=self.env)
            self.assertEqual(proc.returncode, 0, proc.stderr)
            lines = [json.loads(l) for l in proc.stdout.decode().splitlines()]
            self.assertEqual(len(lines), 1)
            self.assertEqual(lines[0]["prompt"], prompt)
            self.assertEqual(lines[0]["status"], "ok")

    def test_broken_image(self):
        """A broken image gives one failed line and exit 1; the others succeed. Folders are
        walked recursively, a symlink loop is harmless."""
        imgs = self.path("imgs")
        os.makedirs(os.path.join(imgs, "sub"))
        for n in image_names():
            shutil.copy(os.path.join(images_dir(), n), os.path.join(imgs, n))
        shutil.move(os.path.join(imgs, "snowman.png"), os.path.join(imgs, "sub", "snowman.png"))
        os.symlink("..", os.path.join(imgs, "sub", "loop"))
        with open(os.path.join(imgs, "broken.jpg"), "wb") as f:
            f.write(b"\xff\xd8\xff\xe0 this is not a JPEG" * 10)
        with open(os.path.join(imgs, "notes.txt"), "w") as f:
            f.write("not an image: skipped by extension\n")
        out = self.path("out.jsonl")
        proc = embedded(imgs, "-o", out, env=self.env)
        self.assertEqual(proc.returncode, 1, proc.stderr)
        lines = read_lines(out)
        self.assertEqual(len(lines), 8)
        failed = [l for l in lines if l["status"] != "ok"]
        self.assertEqual(len(failed), 1)
        self.assertEqual(failed[0]["path"], os.path.join(imgs, "broken.jpg"))
        self.assertEqual(failed[0]["status"], "failed")
        self.assertTrue(failed[0]["error"])
        self.assertIn(os.path.join(imgs, "sub", "snowman.png"), {l["path"] for l in lines})

    def test_resume_after_kill(self):
        """Kill a run after some lines; --resume submits only what is missing (the pairs not
        ok, the broken image included), appending."""
        imgs = self.path("imgs")
        os.mkdir(imgs)
        for n in image_names():
            shutil.copy(os.path.join(images_dir(), n), os.path.join(imgs, n))
        with open(os.path.join(imgs, "broken.png"), "wb") as f:
            f.write(b"\x89PNG\r\n\x1a\n truncated")
        out = self.path("out.jsonl")
        cmd = [ARGS.kosmos, "submit", "--max-new-tokens", MAX_NEW, "--model", ARGS.model,
               "--device", ARGS.device, "--window", "1", imgs, "-o", out]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env=self.env)
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            if os.path.exists(out) and len(read_lines(out)) >= 3:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        before = read_lines(out)
        ok_before = {l["path"] for l in before if l["status"] == "ok"}
        self.assertGreaterEqual(len(before), 3)
        self.assertLess(len(before), 8, "the run finished before it could be killed")

        proc = embedded(imgs, "-o", out, "--resume", env=self.env)
        self.assertEqual(proc.returncode, 1, proc.stderr)   # the broken image fails again
        after = read_lines(out)
        self.assertEqual(after[:len(before)], before)       # appended, not rewritten
        new = after[len(before):]
        every = {os.path.join(imgs, n) for n in image_names() + ["broken.png"]}
        self.assertEqual({l["path"] for l in new}, every - ok_before)
        self.assertEqual(len(new), len(every - ok_before))
        self.assertEqual({l["path"] for l in after if l["status"] == "ok"},
                         every - {os.path.join(imgs, "broken.png")})
        s = summary(proc.stderr)
        self.assertEqual(s["skipped"], len(ok_before))
        self.assertEqual(s["submitted"], len(new))
        self.assertEqual(s["computed"], len(new))   # the worker ran only the missing ones

        # Nothing left: a second resume skips all but the broken image.
        proc = embedded(imgs, "-o", out, "--resume", env=self.env)
        s = summary(proc.stderr)
        self.assertEqual((s["skipped"], s["submitted"]), (7, 1))

    def test_names_not_utf8(self):
        """File names that differ only in bytes that are not UTF-8 (bad\\xff\\xfe.jpg and
        bad\\xff\\xfd.jpg) stay apart: each line names its exact file in "path_bytes" ("path"
        shows U+FFFD for both), COCO keeps both images, and --resume skips exactly the file
        that is done. A file written before "path_bytes" existed is still read: its UTF-8 names
        resume as before, and a name it wrote lossily matches no file, so it runs again rather
        than being skipped wrongly."""
        d = os.fsencode(self.path("imgs"))
        os.mkdir(d)
        a, b = os.path.join(d, b"bad\xff\xfe.jpg"), os.path.join(d, b"bad\xff\xfd.jpg")
        good = os.path.join(d, b"good.jpg")
        shutil.copy(os.path.join(images_dir(), "corgi.jpg"), a)
        shutil.copy(os.path.join(images_dir(), "two_dogs.jpg"), b)
        shutil.copy(os.path.join(images_dir(), "carnaby_street.jpg"), good)
        out, coco = self.path("out.jsonl"), self.path("coco.json")
        proc = embedded(os.fsdecode(d), "-o", out, "--coco", coco, env=self.env)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        lines = read_lines(out)
        self.assertEqual(len(lines), 3)

        def exact(line):
            return base64.b64decode(line["path_bytes"]) if "path_bytes" in line \
                else os.fsencode(line["path"])
        self.assertEqual({exact(l) for l in lines}, {a, b, good})
        lossy = os.path.join(self.path("imgs"), "bad\ufffd\ufffd.jpg")
        self.assertEqual(sorted(l["path"] for l in lines if "path_bytes" in l), [lossy, lossy])
        self.assertNotIn("path_bytes", [l for l in lines if exact(l) == good][0])
        with open(coco, encoding="utf-8") as f:
            images = json.load(f)["images"]
        self.assertEqual(len(images), 3)
        self.assertEqual({base64.b64decode(i["file_name_bytes"]) for i in images
                          if "file_name_bytes" in i}, {a, b})

        # --resume with only a's line: b and good run again, a is skipped.
        with open(out, "w", encoding="utf-8") as f:
            f.write(json.dumps([l for l in lines if exact(l) == a][0]) + "\n")
        proc = embedded(os.fsdecode(d), "-o", out, "--resume", env=self.env)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        s = summary(proc.stderr)
        self.assertEqual((s["skipped"], s["submitted"]), (1, 2))
        self.assertEqual({exact(l) for l in read_lines(out)[1:]}, {b, good})

        # The same lines as a file written before "path_bytes" existed.
        with open(out, "w", encoding="utf-8") as f:
            for l in lines:
                l.pop("path_bytes", None)
                f.write(json.dumps(l) + "\n")
        proc = embedded(os.fsdecode(d), "-o", out, "--resume", env=self.env)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        s = summary(proc.stderr)
        self.assertEqual((s["skipped"], s["submitted"]), (1, 2))
        self.assertEqual({exact(l) for l in read_lines(out)[3:]}, {a, b})


class RealBroker(Scratch):
    """kosmos-broker and kosmos-worker as separate processes; --broker mode."""

    def setUp(self):
        super().setUp()
        self.client_ep = "ipc://" + self.path("client.sock")
        worker_ep = "ipc://" + self.path("worker.sock")
        self.logs = [open(self.path(n), "wb") for n in ("broker.log", "worker.log")]
        self.broker = subprocess.Popen(
            [ARGS.broker_bin, "--client-endpoint", self.client_ep, "--worker-endpoint", worker_ep,
             "--db", self.path("broker.db"), "--log-level", "warn"], stderr=self.logs[0])
        # A slow device (kosmos-test-worker's seam), so that a killed submit leaves jobs running.
        self.worker = subprocess.Popen(
            [ARGS.test_worker_bin, "--broker", worker_ep, "--model", ARGS.model, "--device",
             ARGS.device, "--max-batch", "2", "--log-level", "warn", "--test-sleep-ms", "400",
             "--vision-chunk", "2", "--prefill-tokens", "64"],
            stderr=self.logs[1])

    def tearDown(self):
        for p in (getattr(self, "worker", None), getattr(self, "broker", None)):
            if p and p.poll() is None:
                p.terminate()
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()
        for f in getattr(self, "logs", []):
            f.close()
        super().tearDown()

    def test_submit_twice_dedup(self):
        out1, out2 = self.path("one.jsonl"), self.path("two.jsonl")
        args = ["--broker", self.client_ep, "--client-id", "test-submit", images_dir()]
        proc = submit(*args, "-o", out1, env=self.env)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        first = read_lines(out1)
        self.assertEqual(len(first), 7)
        self.assertTrue(all(l["status"] == "ok" for l in first))
        s = summary(proc.stderr)
        self.assertEqual((s["submitted"], s["deduplicated"]), (7, 0))

        # The same inputs again: the broker knows every key, nothing is computed again.
        proc = submit(*args, "-o", out2, env=self.env)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        second = read_lines(out2)
        s = summary(proc.stderr)
        self.assertEqual((s["submitted"], s["deduplicated"]), (7, 7))
        key = lambda l: l["path"]
        self.assertEqual([(l["job_id"], l["text"]) for l in sorted(first, key=key)],
                         [(l["job_id"], l["text"]) for l in sorted(second, key=key)])

        # Another identity shares nothing: its jobs are computed afresh.
        proc = submit("--broker", self.client_ep, "--client-id", "someone-else",
                      os.path.join(images_dir(), "snowman.png"), env=self.env)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertEqual(summary(proc.stderr)["deduplicated"], 0)

    def test_resume_with_jobs_in_flight(self):
        """Kill submit while the broker still holds its jobs: --resume gets them by their keys
        (deduplicated, computed once) and submits nothing new."""
        out = self.path("out.jsonl")
        cmd = [ARGS.kosmos, "submit", "--max-new-tokens", MAX_NEW, "--broker", self.client_ep,
               "--client-id", "test-resume", images_dir(), "-o", out]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env=self.env)
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            if os.path.exists(out) and len(read_lines(out)) >= 1:
                break
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        before = read_lines(out)
        self.assertGreaterEqual(len(before), 1)
        self.assertLess(len(before), 7, "the run finished before it could be killed")

        proc = submit("--broker", self.client_ep, "--client-id", "test-resume", images_dir(),
                      "-o", out, "--resume", env=self.env)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        after = read_lines(out)
        self.assertEqual(len(after), 7)
        self.assertEqual({l["path"] for l in after},
                         {os.path.join(images_dir(), n) for n in image_names()})
        s = summary(proc.stderr)
        missing = 7 - len(before)
        # Every job was submitted by the killed run (window 64): all of them deduplicated.
        self.assertEqual((s["skipped"], s["submitted"], s["deduplicated"]),
                         (len(before), missing, missing))
        self.assertEqual(len({l["job_id"] for l in after}), 7)


def help_extensions():
    """The extensions `kosmos submit --help` says a folder walk takes, in its order."""
    out = subprocess.run([ARGS.kosmos, "submit", "--help"], capture_output=True, timeout=60,
                         check=True).stdout.decode()
    m = re.search(r"files ending in\n(.*?)\n\(any case\)", out, re.S)
    assert m, out
    return m.group(1).split()


def doc_formats(name):
    """(accepted [(format, [extensions])], refused [format]) from the marked part of a doc."""
    path = os.path.join(ARGS.data, os.pardir, os.pardir, "docs", name)
    with open(path, encoding="utf-8") as f:
        text = f.read()
    m = re.search(r"<!-- image formats:.*?-->\n(.*?)<!-- end of image formats -->", text, re.S)
    assert m, path + ": no marked list of image formats"
    part = m.group(1)
    accepted, refused = [], []
    if part.lstrip().startswith("|"):  # submit.md: a table
        for row in re.findall(r"^\| `(\w+)` \| ([^|]*) \|", part, re.M):
            exts = re.findall(r"`(\.\w+)`", row[1])
            (accepted.append((row[0], exts)) if exts else refused.append(row[0]))
    else:  # protocol.md: `name` (`.ext` ...), then "Refused by name: ..."
        accepted = [(n, re.findall(r"`(\.\w+)`", e))
                    for n, e in re.findall(r"`(\w+)` \(((?:`\.\w+`\s*)+)", part)]
        refused = re.findall(r"`(\w+)`", part.split("Refused by name:")[1])
    return accepted, refused


# A test file of each format, copied under each of its extensions.
FORMAT_SAMPLES = {"jpeg": "kosmos2/images/two_dogs.jpg", "png": "images/rgba.png",
                  "webp": "images/lossless.webp", "tiff": "images/rgb.tiff",
                  "gif": "images/opaque.gif", "bmp": "images/bmp/rgb24.bmp",
                  "pnm": "images/pnm/pillow.ppm", "heif": "images/heif/small.heic",
                  ".avif": "images/small.avif"}


class Formats(Scratch):
    def test_bmp_folder(self):
        """Every BMP variant (tests/data/images/bmp, made with Pillow) is annotated; the size
        of each is the one its header gives."""
        folder = os.path.join(ARGS.data, "images", "bmp")
        names = sorted(n for n in os.listdir(folder) if n.endswith(".bmp"))
        self.assertGreaterEqual(len(names), 19)
        out = self.path("out.jsonl")
        proc = embedded(folder, "-o", out, env=self.env)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        lines = {os.path.basename(l["path"]): l for l in read_lines(out)}
        self.assertEqual(sorted(lines), names)
        for name in names:
            with open(os.path.join(folder, name), "rb") as f:
                head = f.read(26)
            if head[14] == 12:  # OS/2 1.x: 16-bit sizes
                w, h = int.from_bytes(head[18:20], "little"), int.from_bytes(head[20:22], "little")
            else:
                w = int.from_bytes(head[18:22], "little")
                h = abs(int.from_bytes(head[22:26], "little", signed=True))
            self.assertEqual(lines[name]["status"], "ok", lines[name])
            self.assertEqual((lines[name]["width"], lines[name]["height"]), (w, h), name)
        self.assertEqual(summary(proc.stderr)["ok"], len(names))

    def test_one_list(self):
        """--help, docs/submit.md, docs/protocol.md, the worker and the Python example's folder
        walk name the same formats and extensions; a folder with a file under every extension is walked and annotated in
        full, and nothing else in it is walked."""
        exts = help_extensions()
        self.assertIn(".bmp", exts)
        docs = {name: doc_formats(name) for name in ("submit.md", "protocol.md")}
        for name, (accepted, refused) in docs.items():
            self.assertEqual([e for _, es in accepted for e in es], exts, name)
            self.assertEqual(refused, ["ico", "tga"], name)
        names = [n for n, _ in docs["submit.md"][0]]
        self.assertEqual(names, [n for n, _ in docs["protocol.md"][0]])
        example = os.path.join(ARGS.data, os.pardir, os.pardir, "client", "python", "examples",
                               "ground_folder.py")
        with open(example, encoding="utf-8") as f:
            m = re.search(r"^EXTENSIONS = \{(.*?)\}", f.read(), re.S | re.M)
        self.assertEqual(set(re.findall(r'"(\.\w+)"', m.group(1))), set(exts), example)

        imgs = self.path("imgs")
        os.makedirs(imgs)
        walked = []
        for fmt, fmt_exts in docs["submit.md"][0]:
            for ext in fmt_exts:
                sample = FORMAT_SAMPLES.get(ext, FORMAT_SAMPLES[fmt])
                name = "sample" + (ext.upper() if ext == ".jpeg" else ext)  # any case
                shutil.copy(os.path.join(ARGS.data, sample), os.path.join(imgs, name))
                walked.append(os.path.join(imgs, name))
        for decoy in ("x.tga", "x.ico", "notes.txt", ".hidden.png", "bmp"):
            with open(os.path.join(imgs, decoy), "wb") as f:
                f.write(b"\0\0\1\0\1\0" + b"\0" * 40)  # an ICO directory
        ico = os.path.join(imgs, "x.ico")  # named on the command line: submitted anyway
        out = self.path("out.jsonl")
        proc = embedded(imgs, ico, "-o", out, env=self.env)
        self.assertEqual(proc.returncode, 1, proc.stderr)
        lines = {l["path"]: l for l in read_lines(out)}
        self.assertEqual(sorted(lines), sorted(walked + [ico]))
        for path in walked:
            self.assertEqual(lines[path]["status"], "ok", lines[path])
        error = lines[ico]["error"]
        self.assertIn("ICO/CUR", error)
        m = re.search(r"accepted: ([a-z ]+)\)", error)
        self.assertTrue(m, error)
        self.assertEqual(m.group(1).split(), names)  # every worker format is in the docs


def main():
    global ARGS
    parser = argparse.ArgumentParser()
    parser.add_argument("--kosmos", required=True)
    parser.add_argument("--data", required=True, help="the repository's tests/data folder")
    parser.add_argument("--model", required=True)
    parser.add_argument("--device", default="ref")
    parser.add_argument("--broker-bin", required=True)
    parser.add_argument("--worker-bin", required=True)
    parser.add_argument("--test-worker-bin", required=True,
                        help="kosmos-test-worker (tests/support): the worker with --test-* seams")
    ARGS, rest = parser.parse_known_args()
    strict_unittest.main([sys.argv[0]] + rest)


if __name__ == "__main__":
    main()
