#!/usr/bin/env python3
"""Grounds every image of a folder through a kosmos-farm broker; writes one JSON line per image.

    python ground_folder.py client/examples/images --broker tcp://localhost:5555 > out.jsonl

All images are submitted first (so that the workers can run them in parallel), then the results
are collected with long polls and acked. Each image's idempotency key is derived from the
client id, the file's contents and the settings, so running the script again after a crash or
a broker restart picks up the same jobs instead of running them twice (results already acked by
an earlier run are reported as "gone").
"""
import argparse
import hashlib
import json
import sys
from pathlib import Path

from kosmos_client import (OUTPUT_ALL, BusyError, Client, KosmosError, RejectedError)

# What `kosmos submit` walks for: the formats a worker accepts (docs/submit.md, "Formats"; the
# list is worker/image/image_formats.c, and tests/cli/test_cli_submit.py keeps this copy equal).
EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".gif", ".bmp", ".ppm", ".pgm",
              ".pbm", ".pnm", ".heic", ".heif", ".avif"}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--broker", default="tcp://localhost:5555", help="client endpoint")
    ap.add_argument("--client-id", default="ground-folder", help="identity (CURVE off)")
    ap.add_argument("--prompt", default="<grounding> An image of")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--priority", type=int, default=None)
    ap.add_argument("--timeout", type=float, default=600, help="seconds per job")
    ap.add_argument("--curve-server-key", help="broker.key (enables CURVE)")
    ap.add_argument("--curve-secret", help="this client's .key_secret")
    args = ap.parse_args()

    images = sorted(p for p in args.folder.iterdir() if p.suffix.lower() in EXTENSIONS)
    if not images:
        sys.exit("no images in %s" % args.folder)

    client = Client(args.broker, client_id=args.client_id,
                    curve_server_key=args.curve_server_key, curve_keypair=args.curve_secret)
    jobs = []
    with client:
        for path in images:
            data = path.read_bytes()
            key = hashlib.sha256(b"%s|%s|%d|" % (args.client_id.encode(), args.prompt.encode(),
                                                 args.max_new_tokens) + data).hexdigest()
            try:
                sub = client.submit_job(data, prompt=args.prompt,
                                        max_new_tokens=args.max_new_tokens,
                                        priority=args.priority, outputs=OUTPUT_ALL,
                                        label=path.name, idempotency_key=key,
                                        busy_timeout=args.timeout)
            except (RejectedError, BusyError) as e:
                print(json.dumps({"image": path.name, "error": str(e)}))
                continue
            print("%s: job %s%s" % (path.name, sub.job_id, " (resumed)" if sub.duplicate else ""),
                  file=sys.stderr)
            jobs.append((path, sub.job_id))

        failures = 0
        for path, job_id in jobs:
            try:
                st = client.wait(job_id, timeout=args.timeout)
            except KosmosError as e:
                failures += 1
                print(json.dumps({"image": path.name, "job_id": job_id, "error": str(e)}))
                continue
            if st.result is None:
                print(json.dumps({"image": path.name, "job_id": job_id, "state": st.state,
                                  "error": "gone: acked by an earlier run"}))
                continue
            r = st.result
            p = r.prompts[0]
            failures += not r.ok
            print(json.dumps({
                "image": path.name,
                "job_id": job_id,
                "status": p.status if r.status == "OK" else r.status,
                "message": p.message or r.message,
                "size": [r.image_width, r.image_height],
                "text": p.text,
                "entities": [{"phrase": e.phrase, "span": list(e.span),
                              "boxes": [list(b) for b in e.boxes],
                              "boxes_px": [list(b) for b in e.boxes_px]}
                             for e in p.entities],
                "raw_text": p.raw_text,
                "generated_ids": p.generated_ids,
                "timings": p.timings,
                "worker": r.worker_name,
            }, ensure_ascii=False))
            client.ack(job_id)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
