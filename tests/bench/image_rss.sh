#!/usr/bin/env bash
# image_rss.sh: the peak resident memory a kosmos-worker needs for one large image (a program,
# not a test; docs/operations.md "Image memory" quotes its output).
#
# Makes a square PNG of N megapixels (16-bit RGBA by default: 8 bytes per decoded pixel, the
# most a source can take; highly compressible, as an image bomb is), starts kosmos-broker and
# one kosmos-worker (tiny model, --device ref, --max-batch 1) in a temporary folder, warms the
# worker with a small job, resets the worker's peak (/proc/PID/clear_refs), submits the big
# image with `kosmos submit`, and reads the worker's VmHWM. Prints the peak above the warm
# worker's resident size, and that per source pixel.
#
# usage: tests/bench/image_rss.sh [--build DIR] [--megapixels N | --size WxH] [--format rgba16|rgb8]
#                                 [--image FILE --size WxH]   (an image of your own instead)
set -euo pipefail
build=build
mp=100
format=rgba16
size=
image=
while [[ $# -gt 0 ]]; do
  case "$1" in
    --build) build=$2; shift 2 ;;
    --megapixels) mp=$2; shift 2 ;;
    --format) format=$2; shift 2 ;;
    --size) size=$2; shift 2 ;;
    --image) image=$2; shift 2 ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "image_rss.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
root=$(cd "$(dirname "$0")/../.." && pwd)
for f in "$build/bin/kosmos-broker" "$build/bin/kosmos-worker" "$build/bin/kosmos"; do
  [[ -x $f ]] || { echo "image_rss.sh: $f missing" >&2; exit 2; }
done
dir=$(mktemp -d /tmp/kosmos-image-rss.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT

if [[ -n $image ]]; then
  [[ -n $size ]] || { echo "image_rss.sh: --image needs --size WxH" >&2; exit 2; }
  cp "$image" "$dir/big.png"   # the name does not matter: libvips sniffs the format
else
[[ -n $size ]] || size=$(python3 -c "import math; s=int(math.sqrt($mp*1e6)); print(f'{s}x{s}')")
python3 - "$dir/big.png" "$size" "$format" <<'EOF'
import struct, sys, zlib
path, size, fmt = sys.argv[1], sys.argv[2], sys.argv[3]
width, height = (int(v) for v in size.split("x"))
depth, colour, bpp = (16, 6, 8) if fmt == "rgba16" else (8, 2, 3)
def chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
z = zlib.compressobj(9)
with open(path, "wb") as f:
    f.write(b"\x89PNG\r\n\x1a\n")
    f.write(chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)))
    idat = bytearray()
    for y in range(height):
        # a gradient, one value per row: no two rows alike, still a few bytes compressed
        row = bytes([0]) + bytes([y & 255]) * (width * bpp)
        idat += z.compress(row)
        if len(idat) > 1 << 20:
            f.write(chunk(b"IDAT", bytes(idat)))
            idat.clear()
    idat += z.flush()
    f.write(chunk(b"IDAT", bytes(idat)))
    f.write(chunk(b"IEND", b""))
print(f"{width}x{height} {fmt} PNG")
EOF
fi
ls -l "$dir/big.png" | awk '{print "  " $5 " bytes"}'

"$build/bin/kosmos-broker" --client-endpoint "ipc://$dir/c" --worker-endpoint "ipc://$dir/w" \
  --db "$dir/broker.db" --log-level warn 2> "$dir/broker.log" &
pids+=($!)
"$build/bin/kosmos-worker" --broker "ipc://$dir/w" --model "$root/tests/data/tiny-kosmos2" \
  --device ref --max-batch 1 --log-level warn 2> "$dir/worker.log" &
worker=$!
pids+=($worker)
submit() {
  "$build/bin/kosmos" submit --broker "ipc://$dir/c" --max-new-tokens 2 --quiet "$1" > "$dir/out.jsonl"
  grep -q '"status":"ok"' "$dir/out.jsonl" || { cat "$dir/out.jsonl" "$dir/worker.log" >&2; exit 1; }
}
submit "$root/tests/data/kosmos2/images/snowman.png"  # warm: model, caches, first batch
kb() { awk -v k="$1:" '$1 == k {print $2}' "/proc/$worker/status"; }
echo 5 > "/proc/$worker/clear_refs"                    # VmHWM := VmRSS
base=$(kb VmRSS)
submit "$dir/big.png"
peak=$(kb VmHWM)
pixels=$(( ${size%x*} * ${size#*x} ))
awk -v b="$base" -v p="$peak" -v n="$pixels" 'BEGIN {
  printf "worker RSS warm %.1f MiB, peak with the image %.1f MiB: +%.1f MiB, %.2f bytes per source pixel\n",
         b / 1024, p / 1024, (p - b) / 1024, (p - b) * 1024 / n }'
