"""Golden fixtures for the prompt processor (worker/text/processor.c), from transformers'
Kosmos2Processor(text=prompt, images=<an image>, bboxes=...).

Writes text/processor.jsonl, one line per case:
  {"prompt", "bboxes", "input_ids", "attention_mask", "image_embeds_position_mask",
   "processed_text"}                      the reference's output; processed_text is the string
                                          it tokenizes after "<s>" (preprocess_examples)
  {"prompt", "bboxes", "error", "error_type"}
                                          the reference raises: str(exception), its class name
                                          (ValueError: Kosmos2Processor's own message, which we
                                          reproduce; StrictDataclassFieldValidationError: the
                                          kwargs type check of transformers 5)
  {"prompt", "bboxes", "error", "reject_reason"}
                                          the reference accepts, but we must reject (e.g. a box
                                          that would make a token that does not exist)
and text/versions_processor.json.

Boxes are JSON, converted to the reference's Python form as the project's contract says: an
array of 4 numbers -> a tuple of 4 floats; an array of 2 integers -> a tuple of 2 ints; an array
whose elements are all arrays -> a list of such tuples; null -> None; the outer array -> a list.
Anything else is passed through as the corresponding Python value (and the reference rejects it).

Deterministic. Run from tests/golden:  /work/venv/bin/python make_processor_fixtures.py
"""
import json
import math
import os

import reference

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "text")

SNOWMAN_TEXT = "<grounding> An image of<phrase> a snowman</phrase> warming himself by<phrase> a fire</phrase>"

CASES = [
    # --- the paper's prompt formats, no boxes (reference doc section 9.3)
    ("<grounding>An image of", None),
    ("<grounding> An image of", None),
    ("<grounding>Describe this image in detail:", None),
    ("<grounding> Describe this image in detail:", None),
    ("An image of", None),
    ("<grounding> A photo of two dogs and <phrase>a ball</phrase>", None),
    ("<grounding><phrase>a man in a red shirt</phrase>", None),
    ("<grounding> Question: What is the man holding? Answer:", None),
    ("Question: What color is the car? Answer:", None),
    ("<grounding> An image of<phrase> a snowman</phrase><object><patch_index_0044><patch_index_0863></object> "
     "warming himself by<phrase> a fire</phrase><object><patch_index_0005><patch_index_0911></object>", None),
    # --- phrase grounding (Flickr30k Entities style) with boxes
    ("<grounding> Two dogs play with <phrase>a red ball</phrase>", [[0.1, 0.2, 0.3, 0.4]]),
    ("<grounding> A man in a hat walks past<phrase> a bakery</phrase>", [[0.5, 0.5, 1.0, 1.0]]),
    # --- referring expression comprehension (RefCOCO style)
    ("<grounding><phrase>the woman on the left</phrase>", None),
    ("<grounding><phrase> the woman on the left</phrase>", [None]),
    # --- referring expression generation: box given, model describes it
    ("<grounding><phrase> It</phrase> is", [[0.390625, 0.046875, 0.984375, 0.828125]]),
    ("<grounding><phrase> It</phrase> is", [[44, 863]]),
    ("<grounding><phrase> It</phrase><object><patch_index_0044><patch_index_0863></object> is", None),
    # --- grounded VQA, and VQA about a region
    ("<grounding> Question: Where is<phrase> the fire</phrase> next to? Answer:", [[5, 911]]),
    ("<grounding> Question: Where is<phrase> the fire</phrase> next to? Answer:",
     [[0.171875, 0.015625, 0.484375, 0.890625]]),
    ("<grounding> Question: What is<phrase> this</phrase> and what is<phrase> that</phrase>? Answer:",
     [[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]]),
    # --- the snowman caption with every box form
    (SNOWMAN_TEXT, [[0.390625, 0.046875, 0.984375, 0.828125], [0.171875, 0.015625, 0.484375, 0.890625]]),
    (SNOWMAN_TEXT, [[44, 863], [5, 911]]),
    (SNOWMAN_TEXT, [[[44, 863]], [[5, 911]]]),
    (SNOWMAN_TEXT, [None, [5, 911]]),
    (SNOWMAN_TEXT, [[44, 863], None]),
    (SNOWMAN_TEXT, [None, None]),
    (SNOWMAN_TEXT, [[], [5, 911]]),
    (SNOWMAN_TEXT, [[], []]),
    (SNOWMAN_TEXT, [[[44, 863], [0.1, 0.2, 0.3, 0.4]], None]),
    (SNOWMAN_TEXT, [[[44, 863], [100, 200], [300, 400]], [[5, 911], [0, 1023]]]),
    (SNOWMAN_TEXT, [[[0.1, 0.1, 0.2, 0.2], [0.3, 0.3, 0.4, 0.4]], [0.5, 0.5, 0.6, 0.6]]),
    (SNOWMAN_TEXT, [[0, 0, 1, 1], [0, 0, 1, 1]]),
    (SNOWMAN_TEXT, [[0, 0.5, 1, 1], [0.25, 0, 0.75, 1]]),
    (SNOWMAN_TEXT, []),
    (SNOWMAN_TEXT, None),
    # --- patch pairs: any order, edges of the grid
    ("<grounding><phrase> x</phrase>", [[0, 0]]),
    ("<grounding><phrase> x</phrase>", [[1023, 1023]]),
    ("<grounding><phrase> x</phrase>", [[900, 5]]),
    ("<grounding><phrase> x</phrase>", [[0, 1023]]),
    ("<grounding><phrase> x</phrase>", [[[0, 1], [2, 3], [4, 5], [6, 7]]]),
    # --- boundary coordinates: 0.0, 1.0, grid lines, 1/32 multiples, just inside/outside
    ("<grounding><phrase> b</phrase>", [[0.0, 0.0, 1.0, 1.0]]),
    ("<grounding><phrase> b</phrase>", [[0.0, 0.0, 0.5, 0.5]]),
    ("<grounding><phrase> b</phrase>", [[0.5, 0.5, 1.0, 1.0]]),
    ("<grounding><phrase> b</phrase>", [[0.25, 0.25, 0.75, 0.75]]),
    ("<grounding><phrase> b</phrase>", [[1 / 32, 2 / 32, 3 / 32, 4 / 32]]),
    ("<grounding><phrase> b</phrase>", [[31 / 32, 31 / 32, 1.0, 1.0]]),
    ("<grounding><phrase> b</phrase>", [[0.0, 0.0, 1 / 32, 1 / 32]]),
    ("<grounding><phrase> b</phrase>", [[0.0, 0.0, 1 / 64, 1 / 64]]),
    ("<grounding><phrase> b</phrase>", [[0.999, 0.999, 1.0, 1.0]]),
    ("<grounding><phrase> b</phrase>", [[0.1, 0.2, 0.3, 0.4]]),
    ("<grounding><phrase> b</phrase>", [[1 / 3, 1 / 7, 2 / 3, 6 / 7]]),
    ("<grounding><phrase> b</phrase>", [[0.0, 0.0, 1e-15, 1e-15]]),
    ("<grounding><phrase> b</phrase>", [[0.0, 0.0, 3.1e-17, 0.5]]),
    ("<grounding><phrase> b</phrase>", [[math.nextafter(1.0, 0.0), 0.0, 1.0, 1.0]]),
    ("<grounding><phrase> b</phrase>", [[0.03125, 0.03125, 0.0625, 0.0625]]),
    ("<grounding><phrase> b</phrase>", [[0.5, 0.0, 0.5000000000000001, 1.0]]),
    # --- whitespace around the prompt (str.strip(), Unicode whitespace)
    ("   <grounding> An image of   ", None),
    ("\n\t<grounding><phrase> a dog</phrase>\n", [[0.1, 0.1, 0.9, 0.9]]),
    ("\u3000<grounding> An image of\u3000", None),
    ("\u00a0\u2028 text \u2029\x1c", None),
    ("", None),
    ("   ", None),
    ("", []),
    # --- no phrases but boxes given; counts that do not match
    ("<grounding> An image of", [[0.1, 0.2, 0.3, 0.4]]),
    ("<grounding> An image of", [None]),
    ("<grounding> An image of", []),
    (SNOWMAN_TEXT, [[0.1, 0.2, 0.3, 0.4]]),
    (SNOWMAN_TEXT, [None, None, None]),
    ("<grounding><phrase> a</phrase>", [[1, 2], [3, 4]]),
    # --- phrase matching details (non-greedy, no newline, at least one character)
    ("<grounding><phrase></phrase> x", [[1, 2]]),
    ("<grounding><phrase></phrase></phrase> x", [[1, 2]]),
    ("<grounding><phrase> a\nb</phrase> x", [[1, 2]]),
    ("<grounding><phrase> a\nb</phrase> x", []),
    ("<grounding><phrase> a\nb</phrase><phrase> c</phrase>", [[1, 2]]),
    ("<grounding><phrase><phrase> a</phrase>", [[1, 2]]),
    ("<grounding><phrase> a</phrase></phrase>", [[1, 2]]),
    ("<grounding><phrase> a<phrase> b</phrase> c</phrase>", [[1, 2]]),
    ("<grounding><phrase> unclosed", [[1, 2]]),
    ("<grounding><phrase> a</phrase><phrase> b</phrase><phrase> c</phrase>", [[1, 2], None, [[3, 4], [5, 6]]]),
    ("<grounding><phrase> a</phrase>", [[1, 2]]),
    ("<phrase> first</phrase> no grounding tag", [[0.2, 0.2, 0.4, 0.4]]),
    # --- malformed entries (the reference's shape check)
    (SNOWMAN_TEXT, [[0.1, 0.2, 0.3], None]),
    (SNOWMAN_TEXT, [[1.0, 2.0], None]),
    (SNOWMAN_TEXT, [[1, 2.5], None]),
    (SNOWMAN_TEXT, [[1, 2, 3], None]),
    (SNOWMAN_TEXT, [[0.1, 0.2, 0.3, 0.4, 0.5], None]),
    (SNOWMAN_TEXT, [["a", "b"], None]),
    (SNOWMAN_TEXT, [[0.1, "0.2", 0.3, 0.4], None]),
    (SNOWMAN_TEXT, [[[1, 2], None], None]),
    (SNOWMAN_TEXT, [[[1, 2], 3], None]),
    (SNOWMAN_TEXT, [[[[1, 2]]], None]),
    (SNOWMAN_TEXT, [0.5, None]),
    (SNOWMAN_TEXT, ["box", None]),
    (SNOWMAN_TEXT, [{"x": 1}, None]),
    (SNOWMAN_TEXT, [[None, None], None]),
    (SNOWMAN_TEXT, 5),
    (SNOWMAN_TEXT, "boxes"),
    (SNOWMAN_TEXT, {"a": [1, 2]}),
    ("<grounding> no phrases", [[0.1, 0.2, 0.3]]),  # shape error before the count check
    # --- unordered boxes (the reference's ValueError), also inside a list and after a good one
    (SNOWMAN_TEXT, [[0.5, 0.5, 0.2, 0.9], None]),
    (SNOWMAN_TEXT, [[0.1, 0.5, 0.2, 0.5], None]),
    (SNOWMAN_TEXT, [[0.3, 0.3, 0.3, 0.4], None]),
    (SNOWMAN_TEXT, [[0.1, 0.2, 0.3, 0.4], [[0.1, 0.1, 0.2, 0.2], [0.9, 0.1, 0.2, 0.2]]]),
    (SNOWMAN_TEXT, [[-0.5, 0.1, 0.2, 0.2], [0.9, 0.1, 0.2, 0.2]]),
    # --- boxes that would make tokens that do not exist (we reject; the reference tokenizes text)
    ("<grounding><phrase> b</phrase>", [[-0.1, 0.0, 0.5, 0.5]]),
    ("<grounding><phrase> b</phrase>", [[0.0, -0.000001, 0.5, 0.5]]),
    ("<grounding><phrase> b</phrase>", [[0.0, 0.0, 1.1, 0.5]]),
    ("<grounding><phrase> b</phrase>", [[0.0, 0.0, 0.5, 1.0000001]]),
    ("<grounding><phrase> b</phrase>", [[0.5, 0.5, 2, 3]]),
    ("<grounding><phrase> b</phrase>", [[0.0, 0.0, 1e-300, 1e-300]]),
    ("<grounding><phrase> b</phrase>", [[1024, 5]]),
    ("<grounding><phrase> b</phrase>", [[5, 1024]]),
    ("<grounding><phrase> b</phrase>", [[-1, 5]]),
    ("<grounding><phrase> b</phrase>", [[5, 99999]]),
    ("<grounding><phrase> b</phrase>", [[[1, 2], [5, 4096]]]),
    (SNOWMAN_TEXT, [[0.1, 0.2, 0.3, 0.4], [-0.1, 0.2, 0.3, 0.4]]),
    ("<grounding><phrase> b</phrase>", [[True, False]]),
    # --- non-ASCII text
    ("<grounding> Une image de<phrase> un bonhomme de neige</phrase> près du feu", [[0.1, 0.2, 0.3, 0.4]]),
    ("<grounding> 一张<phrase> 雪人</phrase>的图片", [[44, 863]]),
    ("<grounding> An image of<phrase> a 😀 face</phrase> 🎉", [[0.25, 0.25, 0.75, 0.75]]),
    ("<grounding> cafe\u0301 and<phrase> re\u0301sume\u0301</phrase>", [[[1, 2], [3, 4]]]),
    ("<grounding> Ｆｕｌｌｗｉｄｔｈ ½ ™ …", None),
    ("<grounding> Привет,<phrase> мир</phrase>!", [None]),
    # --- other tags and special tokens in the prompt
    ("<grounding> a</image> b<image> c", None),
    ("<s> literal bos</s> and <pad> <unk> <mask>", None),
    ("</doc></chunk></line> tags", None),
    ("<grounding> An image of<object><patch_index_0001><patch_index_0002></object>", None),
    ("<grounding>   spaced    words   and\ttabs\nnewlines", None),
    ("<grounding> Describe this image in detail: The image features a snowman sitting by a campfire in "
     "the snow. He is wearing a hat, scarf, and gloves, with a pot nearby and a cup placed nearby.", None),
]


def is_number(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def to_py_box(a):
    if not isinstance(a, list):
        return a
    if len(a) == 4 and all(is_number(x) for x in a):
        return tuple(float(x) for x in a)
    if len(a) == 2 and all(isinstance(x, int) and not isinstance(x, bool) for x in a):
        return tuple(a)
    return tuple(to_py_box(x) for x in a)


def to_py_entry(e):
    if e is None:
        return None
    if isinstance(e, list) and all(isinstance(x, list) for x in e):
        return [to_py_box(x) for x in e]
    return to_py_box(e)


def to_py(bboxes):
    if isinstance(bboxes, list):
        return [to_py_entry(e) for e in bboxes]
    return bboxes


def boxes_of(bboxes):
    """Every box of a well-formed JSON bboxes value."""
    for e in bboxes or []:
        if e is None:
            continue
        for box in (e if all(isinstance(x, list) for x in e) else [e]):
            yield box


def our_rejection(bboxes):
    """Why we reject what the reference accepts, or None."""
    for box in boxes_of(bboxes):
        if any(isinstance(x, bool) for x in box):
            return "not a JSON integer", "a JSON boolean is not an integer (Python would read true as 1)"
        if len(box) == 2:
            for idx in box:
                if not 0 <= idx <= 1023:
                    return "nonexistent token", f"patch index {idx} is outside 0..1023"
        else:
            x1, y1, x2, y2 = (float(v) for v in box)
            for v in (x1, y1, x2, y2):
                if not 0.0 <= v <= 1.0:
                    return "nonexistent token", f"box coordinate {v!r} is outside [0, 1]"
            corners = [math.floor(x1 * 32), math.floor(y1 * 32), math.ceil(x2 * 32 - 1), math.ceil(y2 * 32 - 1)]
            if not all(0 <= c <= 31 for c in corners):
                return "nonexistent token", f"box {tuple(box)} puts a corner off the 32x32 grid"
    return None


def main():
    os.makedirs(OUT, exist_ok=True)
    processor = reference.build_processor()

    from huggingface_hub.errors import StrictDataclassFieldValidationError
    from PIL import Image

    image = Image.new("RGB", (40, 30), (200, 100, 50))
    rows = []
    for prompt, bboxes in CASES:
        row = {"prompt": prompt, "bboxes": bboxes}
        py = to_py(bboxes)
        try:
            enc = processor(text=prompt, images=image, bboxes=py)
            text = processor.preprocess_examples(prompt, image, py)
        except (ValueError, StrictDataclassFieldValidationError) as e:
            # transformers 5 first validates the kwargs against a type (huggingface_hub strict
            # dataclasses), which rejects entries that are neither tuple, None nor list before
            # Kosmos2Processor's own checks run; its message is not one we copy.
            row["error"] = str(e)
            row["error_type"] = type(e).__name__
            rows.append(row)
            continue
        reason = our_rejection(bboxes) if isinstance(bboxes, list) and bboxes else None
        if reason:
            row["error"] = reason[1]
            row["reject_reason"] = reason[0]
            rows.append(row)
            continue
        pt = processor(text=prompt, images=image, bboxes=py, return_tensors="pt")
        for key in ("input_ids", "attention_mask", "image_embeds_position_mask"):
            assert pt[key][0].tolist() == list(enc[key]), (prompt, key)
        row["input_ids"] = list(enc["input_ids"])
        row["attention_mask"] = list(enc["attention_mask"])
        row["image_embeds_position_mask"] = list(enc["image_embeds_position_mask"])
        row["processed_text"] = text
        rows.append(row)

    reference.write_jsonl(os.path.join(OUT, "processor.jsonl"), rows)
    from make_postprocess_fixtures import VERSIONS_EXTRA

    reference.write_versions(os.path.join(OUT, "versions_processor.json"), VERSIONS_EXTRA)
    errors = sum("error" in r for r in rows)
    ours = sum("reject_reason" in r for r in rows)
    print(f"processor.jsonl: {len(rows)} lines ({len(rows) - errors} encodings, "
          f"{errors - ours} reference errors, {ours} our rejections)")


if __name__ == "__main__":
    main()
