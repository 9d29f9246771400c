"""Writes the small test images of tests/data/images/ that exercise PIL's mode conversions and
the formats the worker decodes. Deterministic: each is cut from a demo image in
tests/data/kosmos2/images and saved with fixed options, so rerunning gives the same bytes (for a
given Pillow; see tests/golden/requirements.txt).

    /work/venv/bin/python tests/golden/make_mode_images.py

What each file is for (the C test checks each against the reference, tests/unit/test_image.c):
  rgba.png        RGBA with an alpha gradient down to 0: alpha is dropped, never composited
  la.png          grayscale + alpha
  gray.png        8-bit grayscale ("L")
  gray.jpg        one-component JPEG
  bilevel.png     1-bit ("1")
  palette.png     palette ("P"), 64 colours
  palette_trns.png palette with a transparent index (tRNS): PIL ignores it in convert("RGB")
  cmyk.jpg        Adobe CMYK JPEG (PIL's own CMYK->RGB formula)
  gray16.png      16-bit grayscale: PIL opens it as "I;16" and clips to 255 (no scaling)
  rgb16.png       16-bit RGB: PIL keeps the high byte of each sample
  exif_rot6.jpg   EXIF orientation 6: the reference applies no rotation
  rgb.tiff        LZW TIFF
  lossless.webp   lossless WebP
  lossy.webp      lossy WebP
  opaque.gif      GIF without transparency
  small.avif      AVIF (decoded only where libvips has HEIF/AVIF)
"""
import os
import struct
import zlib

from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
IMAGES = os.path.join(REPO, "tests", "data", "kosmos2", "images")
OUT = os.path.join(REPO, "tests", "data", "images")


def demo(name, box, size):
    """A crop of a demo image, resized with PIL bicubic to `size` (w, h), mode RGB."""
    im = Image.open(os.path.join(IMAGES, name)).convert("RGB")
    return im.crop(box).resize(size, Image.BICUBIC)


def png_chunk(kind, data):
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)


def write_png16_rgb(path, im):
    """A 16-bit RGB PNG (PIL cannot write one): sample = v*257 + a per-pixel offset, so the low
    byte is not a copy of the high byte and a loader that scales instead of truncating shows."""
    w, h = im.size
    px = im.load()
    raw = bytearray()
    for y in range(h):
        raw.append(0)
        for x in range(w):
            for c, v in enumerate(px[x, y]):
                s = v * 256 + ((x * 7 + y * 13 + c * 31) & 0xFF)
                raw += struct.pack(">H", s)
    data = b"\x89PNG\r\n\x1a\n"
    data += png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
    data += png_chunk(b"IDAT", zlib.compress(bytes(raw), 9))
    data += png_chunk(b"IEND", b"")
    with open(path, "wb") as f:
        f.write(data)


def main():
    os.makedirs(OUT, exist_ok=True)
    # Upscaled (smaller than 224) and downscaled (larger than 224) sources, odd sizes.
    base = demo("man_ball.png", (200, 100, 700, 500), (301, 241))
    small = demo("two_dogs.jpg", (100, 50, 700, 450), (97, 65))
    dogs = demo("two_dogs.jpg", (0, 0, 1200, 602), (333, 167))

    rgba = base.copy()
    alpha = Image.linear_gradient("L").resize(base.size)  # 0 at the top .. 255 at the bottom
    rgba.putalpha(alpha)
    rgba.save(os.path.join(OUT, "rgba.png"))

    la = base.convert("L")
    la.putalpha(alpha.transpose(Image.FLIP_LEFT_RIGHT))
    la.save(os.path.join(OUT, "la.png"))

    base.convert("L").save(os.path.join(OUT, "gray.png"))
    dogs.convert("L").save(os.path.join(OUT, "gray.jpg"), quality=90)
    small.convert("1").save(os.path.join(OUT, "bilevel.png"))
    base.quantize(64, dither=Image.Dither.NONE).save(os.path.join(OUT, "palette.png"))
    pal = small.quantize(16, dither=Image.Dither.NONE)
    pal.info["transparency"] = 3
    pal.save(os.path.join(OUT, "palette_trns.png"), transparency=3)
    dogs.convert("CMYK").save(os.path.join(OUT, "cmyk.jpg"), quality=90)

    g16 = Image.new("I;16", small.size)
    gray = small.convert("L")
    # Values 0..510: half of them above 255, which PIL clips when converting to RGB.
    g16.putdata([v * 2 for v in gray.tobytes()])
    g16.save(os.path.join(OUT, "gray16.png"))
    write_png16_rgb(os.path.join(OUT, "rgb16.png"), small)

    exif = Image.Exif()
    exif[0x0112] = 6
    dogs.save(os.path.join(OUT, "exif_rot6.jpg"), quality=90, exif=exif)

    small.save(os.path.join(OUT, "rgb.tiff"), compression="tiff_lzw")
    small.save(os.path.join(OUT, "lossless.webp"), lossless=True)
    dogs.save(os.path.join(OUT, "lossy.webp"), quality=80, method=4)
    small.quantize(32, dither=Image.Dither.NONE).save(os.path.join(OUT, "opaque.gif"))
    try:
        small.save(os.path.join(OUT, "small.avif"), quality=80)
    except Exception as e:  # Pillow without AVIF: the C test skips the file when it is absent
        print("no AVIF:", e)
    for name in sorted(os.listdir(OUT)):
        print(name, os.path.getsize(os.path.join(OUT, name)))


if __name__ == "__main__":
    main()
