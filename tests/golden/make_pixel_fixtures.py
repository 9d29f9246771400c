"""Writes tests/golden/pixels/<file>.safetensors for every demo image in tests/data/kosmos2/images
and every test image in tests/data/images (made by make_mode_images.py):

  pixel_values  F32 [3, 224, 224]  (demo images) transformers 5.17.0's processor output for the
                                   image as PIL opens it (reference.build_image_processor(); in
                                   5.17 this is the torchvision backend: torch resize, within one
                                   8-bit step of Pillow)
  pixel_values_u8 U8 [3, 224, 224] (test images of tests/data/images, to keep the fixtures
                                   small) the same output mapped back to its 8-bit steps:
                                   u8 = rint((v*std + mean)*255). The script checks that every
                                   value sits within 1e-5 of a step and that the §3.1 float32
                                   recipe gives pixel_values back within 1e-6 (the torch backend
                                   fuses rescale and normalize, so a few ulps differ; recorded
                                   as pixel_values_roundtrip_max_err)
  pil_resize    U8  [224, 224, 3]  Image.open(f).convert("RGB").resize((224, 224), BICUBIC):
                                   what the C pipeline must reproduce bit for bit
  __metadata__  source_width, source_height, pil_mode, backend

and tests/golden/pixels/versions.json. Run with the pinned reference environment:

    /work/venv/bin/python tests/golden/make_pixel_fixtures.py
"""
import json
import os
import struct
import sys

import numpy as np
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import reference  # noqa: E402

REPO = reference.REPO
OUT = os.path.join(HERE, "pixels")
DEMO = reference.DEMO_IMAGES
MODES = os.path.join(REPO, "tests", "data", "images")


def write_safetensors(path, tensors, metadata):
    """tensors: name -> numpy array (float32 or uint8), written in name order."""
    dtypes = {np.dtype(np.float32): "F32", np.dtype(np.uint8): "U8"}
    header = {"__metadata__": {k: str(v) for k, v in metadata.items()}}
    blobs, offset = [], 0
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        raw = a.astype(a.dtype.newbyteorder("<")).tobytes()
        header[name] = {"dtype": dtypes[a.dtype], "shape": list(a.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":"), sort_keys=True).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned, as safetensors writes it
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for raw in blobs:
            f.write(raw)


MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)[:, None, None]
STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)[:, None, None]


def normalize(u8):
    """§3.1 steps 4-5: float32((double)u8 * 0.00392156862745098), then (x - mean) / std."""
    x = (u8.astype(np.float64) * 0.00392156862745098).astype(np.float32)
    return (x - MEAN) / STD


def to_steps(pv):
    """The 8-bit steps behind a pixel_values array, and the round trip's largest error."""
    level = (pv.astype(np.float64) * STD + MEAN) * 255.0
    u8 = np.rint(level)
    assert np.abs(level - u8).max() < 1e-4 and u8.min() >= 0 and u8.max() <= 255
    u8 = u8.astype(np.uint8)
    err = float(np.abs(normalize(u8) - pv).max())
    assert err < 1e-6, err
    return u8, err


def main():
    os.makedirs(OUT, exist_ok=True)
    processor = reference.build_image_processor()
    backend = [c.__name__ for c in type(processor).__mro__ if "Backend" in c.__name__]
    backend = backend[0] if backend else "unknown"
    files = [os.path.join(DEMO, n) for n in sorted(os.listdir(DEMO))]
    # Files only: the subfolders (bmp/, pnm/, heif/) have decoded-RGB fixtures of their own
    # (make_format_images.py).
    files += [os.path.join(MODES, n) for n in sorted(os.listdir(MODES))
              if os.path.isfile(os.path.join(MODES, n))]
    written = []
    for path in files:
        name = os.path.basename(path)
        with Image.open(path) as im:
            im.load()
            mode, size = im.mode, im.size
            pv = processor(images=im, return_tensors="pt")["pixel_values"]
            pv = pv[0].numpy().astype(np.float32)
            rgb = im if im.mode == "RGB" else im.convert("RGB")
            u8 = np.asarray(rgb.resize((224, 224), Image.BICUBIC), dtype=np.uint8)
        assert pv.shape == (3, 224, 224) and u8.shape == (224, 224, 3)
        meta = {"source_width": size[0], "source_height": size[1], "pil_mode": mode,
                "backend": backend}
        if path.startswith(DEMO):
            tensors = {"pixel_values": pv, "pil_resize": u8}
        else:
            steps, err = to_steps(pv)
            tensors = {"pixel_values_u8": steps, "pil_resize": u8}
            meta["pixel_values_roundtrip_max_err"] = repr(err)
        write_safetensors(os.path.join(OUT, name + ".safetensors"), tensors, meta)
        written.append({"file": name, "mode": mode, "size": list(size)})
        print(name, mode, size)
    reference.write_versions(os.path.join(OUT, "versions.json"), {
        "processor": "reference.build_image_processor() (CLIPImageProcessor)",
        "processor_backend": backend,
        "pil_resize": "Image.open(f).convert('RGB').resize((224, 224), Image.BICUBIC)",
        "images": written,
    })


if __name__ == "__main__":
    main()
