"""Writes the test images of the formats we decode ourselves or newly test, and what Pillow
decodes them to:

  tests/data/images/bmp/*.bmp     every BMP variant Pillow reads (the list below)
  tests/data/images/pnm/*.p?m     PBM, PGM and PPM, binary and plain text, maxval 1..65535
  tests/data/images/heif/         small.heic (HEVC, 4:2:0), made with pillow-heif (Pillow has no
                                  HEIC writer); yuv444.avif (AV1, 4:4:4), made with Pillow
  tests/golden/decoded/<file>.safetensors
      rgb  U8 [height, width, 3]  Image.open(BytesIO(bytes)).convert("RGB"): the bytes the C
                                  decoder must give (bit for bit, or within a measured step for
                                  the YUV formats); also for tests/data/images/small.avif
      __metadata__  pil_mode, pil_format, width, height, reference ("pillow", or "pillow_heif" for HEIC,
                    which Pillow opens only with the pillow-heif plugin)
  tests/golden/decoded/versions.json
  tests/fuzz/corpus/fuzz_image_decoders/  the BMP and PNM variants again, a few pixels each

Deterministic: each image is cut from a demo image in tests/data/kosmos2/images and encoded
here byte by byte (Pillow writes only 1-, 8-, 24- and 32-bit BMPs with the 40-byte header, so
the other variants are written by this script). The script checks that Pillow reads every
lossless file back as the picture it was made from, and that reading from a file name and from
memory agree. Needs only Pillow, numpy and pillow-heif (tests/golden/requirements.txt pins
Pillow and numpy); CI never runs it:

    python3 -m venv /tmp/venv && /tmp/venv/bin/pip install pillow==13.0.0 numpy==2.4.6 \\
        pillow-heif==1.8.1
    /tmp/venv/bin/python tests/golden/make_format_images.py

BMP variants (tests/unit/test_image.c checks each against its fixture, and
tests/cli/test_cli_submit.py annotates the whole folder):
  p1.bmp            1 bit, a two-colour palette
  bw1.bmp           1 bit, black and white (Pillow reads it as mode "1"), Pillow's own writer
  p4.bmp            4 bits, 16 colours
  p8.bmp            8 bits, 256 colours, Pillow's own writer
  gray8.bmp         8 bits, a gray ramp palette (Pillow reads it as mode "L"), Pillow's writer
  p8_colors_used.bmp 8 bits, 20 colours (biClrUsed), odd width
  rle8.bmp          RLE8: runs, literal runs, end of line, delta, end of bitmap
  rle4.bmp          RLE4: runs of one and of two alternating indices, literal runs, delta
  rgb555.bmp        16 bits, 5-5-5 (no bit fields)
  rgb565.bmp        16 bits, 5-6-5 by bit fields after a 40-byte header
  rgb24.bmp         24 bits, Pillow's own writer
  bgrx32.bmp        32 bits, no bit fields (the fourth byte is not alpha)
  rgba32_v5.bmp     32 bits, BGRA bit fields in a V5 header: alpha is read, then dropped
  xbgr32_v4.bmp     32 bits, another mask layout (XBGR) in a V4 header
  rgb24_v4.bmp      24 bits, V4 header
  p8_v5_topdown.bmp 8 bits, V5 header, top-down rows (negative height)
  rgb24_topdown.bmp 24 bits, top-down rows
  rle8_topdown.bmp  RLE8 with a negative height (Pillow reads it top-down)
  os2_p8.bmp        8 bits, OS/2 1.x 12-byte header with a 3-byte palette
"""
import io
import json
import os
import struct
import sys

import numpy as np
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
DEMO = os.path.join(REPO, "tests", "data", "kosmos2", "images")
IMAGES = os.path.join(REPO, "tests", "data", "images")
OUT = os.path.join(HERE, "decoded")


def demo(name, box, size):
    """A crop of a demo image, resized with PIL bicubic to `size` (w, h), mode RGB."""
    im = Image.open(os.path.join(DEMO, name)).convert("RGB")
    return im.crop(box).resize(size, Image.BICUBIC)


# ---------------------------------------------------------------------------------- BMP
HEADER_V4_EXTRA = 108 - 56  # CSType, endpoints, gamma (after the four masks)


def info_header(size, width, height, bits, compression, image_size, colors, masks=None):
    """A BITMAPINFOHEADER-family header of `size` bytes (40, 52, 56, 108, 124)."""
    h = struct.pack("<IiiHHIIiiII", size, width, height, 1, bits, compression, image_size,
                    2835, 2835, colors, colors)
    if size >= 52:
        m = list(masks or (0, 0, 0, 0))
        h += struct.pack("<III", *m[:3])
        if size >= 56:
            h += struct.pack("<I", m[3])
    if size >= 108:
        h += struct.pack("<I", 0x73524742)  # LCS_sRGB
        h += b"\0" * (36 + 12)  # endpoints and gamma: unused with sRGB
    if size == 124:
        h += struct.pack("<IIII", 4, 0, 0, 0)  # LCS_GM_IMAGES, no profile
    assert len(h) == size, (len(h), size)
    return h


def bmp(width, height, bits, data, palette=(), header=40, compression=0, masks=None,
        top_down=False, colors=None, entry=4):
    """A whole BMP file around pixel `data` (already in file row order and padded)."""
    pal = b"".join(bytes((b, g, r)) + (b"\0" if entry == 4 else b"") for r, g, b in palette)
    if header == 12:
        info = struct.pack("<IHHHH", 12, width, height, 1, bits)
    else:
        n = len(palette) if colors is None else colors
        info = info_header(header, width, -height if top_down else height, bits, compression,
                           len(data), n, masks)
    extra = b""
    if header == 40 and compression == 3:
        extra = struct.pack("<III", *masks[:3])
    offset = 14 + len(info) + len(extra) + len(pal)
    return b"BM" + struct.pack("<IHHI", offset + len(data), 0, 0, offset) + info + extra + pal + data


def rows(pixels, bits, top_down=False):
    """Raw rows of a (h, w) index array or (h, w, k) byte array, padded to 4 bytes."""
    out = []
    for row in pixels:
        if bits in (1, 4):
            per = 8 // bits
            b = bytearray((len(row) + per - 1) // per)
            for x, v in enumerate(row):
                b[x // per] |= int(v) << (8 - bits - bits * (x % per))
            raw = bytes(b)
        elif bits == 16:
            raw = b"".join(struct.pack("<H", int(v)) for v in row)
        else:
            raw = np.asarray(row, dtype=np.uint8).tobytes()
        out.append(raw + b"\0" * (-len(raw) % 4))
    return b"".join(out if top_down else out[::-1])


def rle_row(row, rle4, zero_delta):
    """One row, RLE8 or RLE4: repeats as runs, the rest as literal runs; with zero_delta, a
    stretch of 4+ zeros inside the row as a delta, zeros at its end as the end of line (which
    pads only a row already begun), and a row of zeros as a delta to the next row."""
    out, x, w = bytearray(), 0, len(row)
    while x < w:
        if zero_delta and row[x] == 0:
            z = x
            while z < w and row[z] == 0:
                z += 1
            if z == w and x == 0:
                out += bytes((0, 2, 0, 1))  # a whole row of zeros: a delta one row up
                break
            if z == w:
                break  # the end of line pads the row with index 0
            if z - x >= 4:
                step = min(z - x, 255)
                out += bytes((0, 2, step, 0))
                x += step
                continue
        run = 1
        if rle4:  # a run alternates two indices: take the longest a, b, a, b, ...
            while x + run < w and run < 255 and row[x + run] == row[x + run % 2]:
                run += 1
        else:
            while x + run < w and run < 255 and row[x + run] == row[x]:
                run += 1
        if run >= 3 or w - x < 3:
            first, second = row[x], row[x + 1] if run > 1 else row[x]
            out += bytes((run, (first << 4 | second) if rle4 else first))
            x += run
            continue
        lit = 0  # literal: up to the next run of 3
        while x + lit < w and lit < 255 and not (
                x + lit + 2 < w and row[x + lit] == row[x + lit + 1] == row[x + lit + 2]):
            lit += 1
        lit = max(lit, 3) if w - x >= 3 else lit
        vals = list(row[x:x + lit])
        if rle4:
            vals += [0] * (len(vals) % 2)
            payload = bytes(vals[i] << 4 | vals[i + 1] for i in range(0, len(vals), 2))
        else:
            payload = bytes(vals)
        out += bytes((0, lit)) + payload + b"\0" * (len(payload) % 2)
        x += lit
    return bytes(out) + b"\0\0"


def rle(indices, rle4, zero_delta=True, top_down=False):
    rws = [rle_row([int(v) for v in r], rle4, zero_delta) for r in indices]
    return b"".join(rws if top_down else rws[::-1]) + b"\0\1"  # end of bitmap


def quantized(im, colors):
    p = im.quantize(colors, dither=Image.Dither.NONE)
    pal = p.getpalette()[:3 * colors]
    return np.asarray(p), [tuple(pal[i:i + 3]) for i in range(0, len(pal), 3)]


FULL = {"base": (97, 65), "dogs": (61, 43), "corgi": (83, 59), "small": (37, 29)}
TINY = {"base": (13, 7), "dogs": (9, 5), "corgi": (11, 6), "small": (7, 4)}  # fuzz seeds


def make_bmps(folder, size=FULL):
    base = demo("man_ball.png", (200, 100, 700, 500), size["base"])
    dogs = demo("two_dogs.jpg", (100, 50, 700, 450), size["dogs"])
    corgi = demo("corgi.jpg", (300, 100, 1500, 1000), size["corgi"])
    (bw_, bh), (dw, dh), (cw, ch) = size["base"], size["dogs"], size["corgi"]
    files = {}

    idx, pal = quantized(dogs, 2)
    files["p1.bmp"] = (bmp(dw, dh, 1, rows(idx, 1), pal), idx, pal)
    bw = dogs.convert("1")
    buf = io.BytesIO()
    bw.save(buf, "BMP")
    files["bw1.bmp"] = (buf.getvalue(), None, None)
    idx, pal = quantized(base, 16)
    files["p4.bmp"] = (bmp(bw_, bh, 4, rows(idx, 4), pal), idx, pal)
    for name, im in [("p8.bmp", corgi.quantize(256, dither=Image.Dither.NONE)),
                     ("gray8.bmp", corgi.convert("L")), ("rgb24.bmp", corgi)]:
        buf = io.BytesIO()
        im.save(buf, "BMP")
        files[name] = (buf.getvalue(), None, None)
    idx, pal = quantized(dogs, 20)
    files["p8_colors_used.bmp"] = (bmp(dw, dh, 8, rows(idx, 8), pal), idx, pal)

    # RLE: a checkerboard of index 0 cut into the picture gives zero stretches for deltas.
    idx, pal = quantized(base, 200)
    yy, xx = np.mgrid[0:bh, 0:bw_]
    idx = np.where(((xx // 9 + yy // 7) % 4 == 0) | (yy < 3) | (xx > bw_ - 7), 0, idx)
    files["rle8.bmp"] = (bmp(bw_, bh, 8, rle(idx, False), pal, compression=1), idx, pal)
    files["rle8_topdown.bmp"] = (bmp(bw_, bh, 8, rle(idx, False, top_down=True), pal,
                                     compression=1, top_down=True), idx, pal)
    idx, pal = quantized(dogs, 16)
    yy, xx = np.mgrid[0:dh, 0:dw]
    idx = np.where(((xx // 6 + yy // 5) % 3 == 0) | (xx > dw - 6), 0, idx)
    run = min(dw - 1, 20)
    idx[dh // 4, 1:1 + run] = np.array([3, 7] * (run // 2) + [3] * (run % 2))  # alternating
    files["rle4.bmp"] = (bmp(dw, dh, 4, rle(idx, True), pal, compression=2), idx, pal)

    rgb = np.asarray(base).astype(np.uint32)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    p555 = (r >> 3) << 10 | (g >> 3) << 5 | b >> 3
    files["rgb555.bmp"] = (bmp(bw_, bh, 16, rows(p555, 16)), None, None)
    p565 = (r >> 3) << 11 | (g >> 2) << 5 | b >> 3
    files["rgb565.bmp"] = (bmp(bw_, bh, 16, rows(p565, 16), compression=3,
                               masks=(0xF800, 0x7E0, 0x1F, 0)), None, None)

    c = np.asarray(dogs)
    bgr = c[..., ::-1]
    alpha = np.tile(np.linspace(0, 255, dw).astype(np.uint8), (dh, 1))[..., None]
    files["bgrx32.bmp"] = (bmp(dw, dh, 32, rows(np.concatenate([bgr, 255 - alpha], 2), 32)),
                           None, None)
    files["rgba32_v5.bmp"] = (bmp(dw, dh, 32, rows(np.concatenate([bgr, alpha], 2), 32),
                                  header=124, compression=3,
                                  masks=(0xFF0000, 0xFF00, 0xFF, 0xFF000000)), None, None)
    xbgr = np.concatenate([alpha, c[..., ::-1]], 2)  # bytes X, B, G, R
    files["xbgr32_v4.bmp"] = (bmp(dw, dh, 32, rows(xbgr, 32), header=108, compression=3,
                                  masks=(0xFF000000, 0xFF0000, 0xFF00, 0)), None, None)
    files["rgb24_v4.bmp"] = (bmp(dw, dh, 24, rows(bgr, 24), header=108), None, None)
    files["rgb24_topdown.bmp"] = (bmp(dw, dh, 24, rows(bgr, 24, True), top_down=True),
                                  None, None)
    idx, pal = quantized(corgi, 100)
    files["p8_v5_topdown.bmp"] = (bmp(cw, ch, 8, rows(idx, 8, True), pal, header=124,
                                      top_down=True), idx, pal)
    idx, pal = quantized(base, 256)
    files["os2_p8.bmp"] = (bmp(bw_, bh, 8, rows(idx, 8), pal, header=12, entry=3), idx, pal)

    os.makedirs(folder, exist_ok=True)
    for name, (data, idx, pal) in sorted(files.items()):
        with open(os.path.join(folder, name), "wb") as f:
            f.write(data)
        if idx is not None:  # Pillow must read back the picture it was made from
            want = np.asarray(pal, dtype=np.uint8)[idx]
            got = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
            assert np.array_equal(got, want), name
    return sorted(files)


# ---------------------------------------------------------------------------------- PNM
def plain(magic, width, height, maxval, values, per_line=12):
    """A plain-text PNM with comments in the header and between samples."""
    head = "%s\n# made by make_format_images.py\n%d %d\n" % (magic, width, height)
    if maxval is not None:
        head += "# maxval next\n%d\n" % maxval
    vals = [str(int(v)) for v in values]
    lines = [" ".join(vals[i:i + per_line]) for i in range(0, len(vals), per_line)]
    lines.insert(len(lines) // 2, "# a comment among the samples")
    return (head + "\n".join(lines) + "\n").encode()


def make_pnms(folder, size=FULL):
    dogs = demo("two_dogs.jpg", (100, 50, 700, 450), size["dogs"])
    small = demo("snowman.png", (100, 100, 500, 400), size["small"])
    (dw, dh), (sw, sh) = size["dogs"], size["small"]
    gray = np.asarray(dogs.convert("L")).astype(np.uint32)
    rgb = np.asarray(dogs).astype(np.uint32)
    files = {}
    for name, im in [("pillow.pbm", dogs.convert("1")), ("pillow.pgm", dogs.convert("L")),
                     ("pillow.ppm", dogs)]:
        buf = io.BytesIO()
        im.save(buf, "PPM")
        files[name] = buf.getvalue()
    g16 = Image.new("I;16", dogs.size)
    g16.putdata([int(v) * 257 + (i % 7) for i, v in enumerate(gray.flatten())])
    buf = io.BytesIO()
    g16.save(buf, "PPM")  # P5 with maxval 65535: Pillow's "I" image, clipped in convert
    files["gray16.pgm"] = buf.getvalue()
    # maxval 100 (1 byte) and 1023 (2 bytes): scaled by Pillow with round-half-even.
    g100 = (gray * 100 + 127) // 255
    files["gray_maxval100.pgm"] = b"P5\n%d %d\n100\n" % (dw, dh) + bytes(g100.astype(np.uint8).flatten())
    s = np.asarray(small).astype(np.uint32)
    r1023 = (s * 1023 + 127) // 255
    files["rgb_maxval1023.ppm"] = (b"P6\n# 10-bit\n%d %d\n1023\n" % (sw, sh) +
                                   r1023.astype(">u2").tobytes())
    # Plain text: P1, P2 (maxval 255 and 1000: the latter is Pillow's "I"), P3 (maxval 7).
    bits = np.asarray(small.convert("1")) == 0  # 1 is black
    files["plain.pbm"] = plain("P1", sw, sh, None, bits.flatten(), per_line=sw)
    files["plain.pgm"] = plain("P2", sw, sh, 255, np.asarray(small.convert("L")).flatten())
    g1000 = (np.asarray(small.convert("L")).astype(np.uint32) * 1000 + 127) // 255
    files["plain_maxval1000.pgm"] = plain("P2", sw, sh, 1000, g1000.flatten())
    files["plain_maxval7.ppm"] = plain("P3", sw, sh, 7, ((s * 7 + 127) // 255).flatten())
    files["rgb.pnm"] = b"P6\n# any of the three may be named .pnm\n%d %d 255\n" % (sw, sh) + s.astype(
        np.uint8).tobytes()

    os.makedirs(folder, exist_ok=True)
    for name, data in sorted(files.items()):
        with open(os.path.join(folder, name), "wb") as f:
            f.write(data)
    return sorted(files)


# ---------------------------------------------------------------------------------- HEIF
def make_heif(folder):
    import pillow_heif

    os.makedirs(folder, exist_ok=True)
    small = demo("two_dogs.jpg", (100, 50, 700, 450), (97, 65))
    pillow_heif.register_heif_opener()
    small.save(os.path.join(folder, "small.heic"), quality=80)
    # AVIF without chroma subsampling, beside the 4:2:0 tests/data/images/small.avif: it
    # separates the YUV-to-RGB arithmetic from chroma upsampling (docs/submit.md).
    small.save(os.path.join(folder, "yuv444.avif"), quality=80, subsampling="4:4:4")
    return ["small.heic", "yuv444.avif"]


# ---------------------------------------------------------------------------------- fixtures
def write_safetensors(path, rgb, metadata):
    header = {"__metadata__": {k: str(v) for k, v in metadata.items()},
              "rgb": {"dtype": "U8", "shape": list(rgb.shape), "data_offsets": [0, rgb.size]}}
    text = json.dumps(header, separators=(",", ":"), sort_keys=True).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + rgb.tobytes())


def decode(path):
    """Pillow's RGB from memory (as the worker gets bytes), checked against from the file."""
    with open(path, "rb") as f:
        data = f.read()
    with Image.open(io.BytesIO(data)) as im:
        mode, fmt = im.mode, im.format
        rgb = np.asarray(im.convert("RGB"), dtype=np.uint8)
    with Image.open(path) as im:  # the file path may take Pillow's mmap route
        assert np.array_equal(np.asarray(im.convert("RGB")), rgb), path
    return mode, fmt, rgb


def main():
    import PIL
    import pillow_heif

    os.makedirs(OUT, exist_ok=True)
    made = [("bmp", n) for n in make_bmps(os.path.join(IMAGES, "bmp"))]
    made += [("pnm", n) for n in make_pnms(os.path.join(IMAGES, "pnm"))]
    made += [("heif", n) for n in make_heif(os.path.join(IMAGES, "heif"))]
    made += [("", "small.avif")]  # made by make_mode_images.py
    # The fuzz target's seeds: every BMP and PNM variant again, a few pixels in size.
    seeds = os.path.join(REPO, "tests", "fuzz", "corpus", "fuzz_image_decoders")
    make_bmps(seeds, TINY)
    make_pnms(seeds, TINY)
    written = []
    for sub, name in made:
        path = os.path.join(IMAGES, sub, name)
        reference = "pillow_heif" if name.endswith(".heic") else "pillow"
        mode, fmt, rgb = decode(path)
        meta = {"pil_mode": mode, "pil_format": fmt, "width": rgb.shape[1],
                "height": rgb.shape[0], "reference": reference}
        write_safetensors(os.path.join(OUT, name + ".safetensors"), rgb, meta)
        written.append({"file": os.path.join(sub, name) if sub else name, "mode": mode,
                        "format": fmt,
                        "size": [rgb.shape[1], rgb.shape[0]], "reference": reference})
        print(name, mode, rgb.shape[1], rgb.shape[0], os.path.getsize(path))
    versions = {"python": sys.version.split()[0], "pillow": PIL.__version__,
                "numpy": np.__version__, "pillow_heif": pillow_heif.__version__,
                "libheif (pillow-heif's)": pillow_heif.libheif_version()}
    with open(os.path.join(OUT, "versions.json"), "w", encoding="utf-8") as f:
        json.dump({"versions": versions, "images": written,
                   "rgb": "Image.open(BytesIO(bytes)).convert('RGB')"}, f, indent=2,
                  sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    main()
