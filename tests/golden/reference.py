"""The reference objects every golden fixture comes from, built by hand (no hub is reachable)
exactly as the project's issues specify:

- tokenizer: XLMRobertaTokenizer.from_pretrained(D), D holding only sentencepiece.bpe.model;
- processor: Kosmos2Processor(image_processor, tokenizer), which adds the 11 tag tokens and the
  1,024 patch tokens;
- image processor: CLIPImageProcessor with the checkpoint's preprocessor_config.json values and
  size 224x224.

Run with the virtual environment made from tests/golden/requirements.txt (see README).
"""
import json
import os
import shutil
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
# Real Kosmos-2 files committed for the tests (tests/data/README.md says where each came from).
KOSMOS2 = os.path.join(REPO, "tests", "data", "kosmos2")
SPM_MODEL = os.path.join(KOSMOS2, "sentencepiece.bpe.model")
CHECKPOINT = os.path.join(KOSMOS2, "checkpoint")
DEMO_IMAGES = os.path.join(KOSMOS2, "images")


def versions():
    """The versions of everything that shapes a fixture, recorded next to it."""
    import importlib.metadata as md

    names = ["transformers", "tokenizers", "torch", "torchvision", "sentencepiece", "pillow",
             "safetensors", "numpy"]
    out = {"python": sys.version.split()[0]}
    for name in names:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def build_tokenizer():
    from transformers import XLMRobertaTokenizer

    with tempfile.TemporaryDirectory() as folder:
        shutil.copy(SPM_MODEL, folder)
        return XLMRobertaTokenizer.from_pretrained(folder)


def build_image_processor():
    from transformers import CLIPImageProcessor

    with open(os.path.join(CHECKPOINT, "preprocessor_config.json")) as f:
        config = json.load(f)
    for key in ("image_processor_type", "processor_class"):
        config.pop(key, None)
    config["size"] = {"height": 224, "width": 224}
    return CLIPImageProcessor(**config)


def build_processor():
    from transformers import Kosmos2Processor

    return Kosmos2Processor(build_image_processor(), build_tokenizer())


def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def write_versions(path, extra=None):
    data = {"versions": versions()}
    if extra:
        data.update(extra)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")
