"""Golden fixtures for the post-processing (worker/text/postprocess.c), from transformers'
Kosmos2Processor.post_process_generation.

Writes
  text/postprocess.jsonl         {"generated", "text", "entities", "raw"} per line, where
                                 (text, entities) = post_process_generation(generated) and
                                 raw = post_process_generation(generated, cleanup_and_extract=False);
                                 entities = [[phrase, [start, end], [[x1, y1, x2, y2], ...]], ...]
  text/postprocess_errors.jsonl  {"generated", "error", "raw"}: inputs the reference raises on
                                 (Python's int() digit limit, int -> float overflow)
  text/versions_processor.json   the library versions (shared with make_processor_fixtures.py)

Deterministic: fixed cases plus random mixes from a seeded generator. Run from tests/golden:
  /work/venv/bin/python make_postprocess_fixtures.py
"""
import os
import random

import reference

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "text")

SNOWMAN = ("<grounding> An image of<phrase> a snowman</phrase><object><patch_index_0044>"
           "<patch_index_0863></object> warming himself by<phrase> a fire</phrase><object>"
           "<patch_index_0005><patch_index_0911></object>.")

DETAILED = (
    "<grounding> Describe this image in detail: The image features a snowman sitting by<phrase> a "
    "campfire</phrase><object><patch_index_0005><patch_index_1007></object> in the snow. He is "
    "wearing<phrase> a hat</phrase><object><patch_index_0048><patch_index_0250></object>,<phrase> "
    "scarf</phrase><object><patch_index_0240><patch_index_0604></object>, and<phrase> gloves"
    "</phrase><object><patch_index_0400><patch_index_0493></object>, with<phrase> a pot</phrase>"
    "<object><patch_index_0610><patch_index_0872></object> nearby and<phrase> a cup</phrase>"
    "<object><patch_index_0796><patch_index_1023></object> placed nearby. The snowman appears to "
    "be enjoying the warmth of the fire, and it appears to have a warm and cozy atmosphere.")

DOC_EXAMPLES = [
    SNOWMAN,
    DETAILED,
    "<grounding><phrase> Two puppies</phrase><object><patch_index_0079><patch_index_1016>"
    "</delimiter_of_multi_objects/><patch_index_0135><patch_index_1008></object> sit in a field "
    "of<phrase> grass</phrase><object><patch_index_0480><patch_index_1023></object>.",
    "<grounding> The dog is at<object><patch_index_0003><patch_index_0004>"
    "</delimiter_of_multi_objects/><patch_index_0005><patch_index_0006></object> in the picture",
    "<grounding> a<phrase> cat</phrase> sleeping<object><patch_index_0000><patch_index_0000>"
    "</object>",
    "<grounding> Question: Where is<phrase> the fire</phrase><object><patch_index_0005>"
    "<patch_index_0911></object> next to? Answer: Near<phrase> the snowman</phrase><object>"
    "<patch_index_0044><patch_index_0863></object>.",
]

# Captions turned into full model outputs by encoding them with the processor (image block
# included) and decoding the ids as generate() output is decoded: skip_special_tokens=True.
DECODE_CAPTIONS = [
    "<grounding> An image of<phrase> a snowman</phrase><object><patch_index_0044>"
    "<patch_index_0863></object> warming himself by<phrase> a fire</phrase><object>"
    "<patch_index_0005><patch_index_0911></object>.",
    "<grounding><phrase> Two puppies</phrase><object><patch_index_0079><patch_index_1016>"
    "</delimiter_of_multi_objects/><patch_index_0135><patch_index_1008></object> sit in a field "
    "of<phrase> grass</phrase><object><patch_index_0480><patch_index_1023></object>.",
    "<grounding> Describe this image in detail: A man in<phrase> a red shirt</phrase><object>"
    "<patch_index_0101><patch_index_0555></object> is holding<phrase> a ball</phrase><object>"
    "<patch_index_0300><patch_index_0400></object>.",
    "<grounding> Question: What is<phrase> the dog</phrase><object><patch_index_0032>"
    "<patch_index_0990></object> doing? Answer: Running on<phrase> the beach</phrase><object>"
    "<patch_index_0640><patch_index_1023></object>.",
    "<grounding><phrase> It</phrase><object><patch_index_0044><patch_index_0863></object> is a "
    "snowman.",
    "An image of a snowman warming himself by a fire.",
    "<grounding> An image of<object><patch_index_0001><patch_index_0002></object> two things",
    "<grounding> 一只猫<phrase> 在沙发上</phrase><object><patch_index_0100><patch_index_0200>"
    "</object>。",
    "<grounding> Café au lait<phrase> près de la fenêtre</phrase><object><patch_index_0010>"
    "<patch_index_0020></object>!",
    "<grounding> An image of<phrase> a snowman</phrase>",
]

HAND = [
    # empty and trivial
    "", " ", "\n", "</image>", "</image></image>", "<image></image>", "no image block at all",
    "plain text, no tags", "   padded   ", "</image>   text after   ",
    # several </image>
    "<image>junk</image>first</image> second<phrase> x</phrase><object><patch_index_0001>"
    "<patch_index_0002></object>",
    "a</image>b</image>c</image>",
    "<phrase> p</phrase><object><patch_index_0001><patch_index_0002></object></image> after",
    "</image</image>>x",
    "</imag></image>y",
    "x</image",
    # several boxes per phrase
    "<phrase> three cats</phrase><object><patch_index_0000><patch_index_0033>"
    "</delimiter_of_multi_objects/><patch_index_0100><patch_index_0200>"
    "</delimiter_of_multi_objects/><patch_index_0500><patch_index_1023></object> here",
    "<phrase>a</phrase><object><patch_index_0010><patch_index_0010>"
    "</delimiter_of_multi_objects/><patch_index_0010><patch_index_0042></object>",
    # bare objects with delimiters
    "<object><patch_index_0000><patch_index_1023></object>",
    "start <object><patch_index_0001><patch_index_0002></delimiter_of_multi_objects/>"
    "<patch_index_0003><patch_index_0004></delimiter_of_multi_objects/><patch_index_0005>"
    "<patch_index_0006></object> end",
    "<object><patch_index_0032><patch_index_0064></object><object><patch_index_0031>"
    "<patch_index_0062></object>",
    # phrases not adjacent to objects
    "<phrase> lonely</phrase> text <object><patch_index_0001><patch_index_0002></object>",
    "<phrase> a</phrase><phrase> b</phrase><object><patch_index_0001><patch_index_0002></object>",
    "<phrase> a</phrase> <object><patch_index_0001><patch_index_0002></object>",
    "<phrase> a</phrase>\n<object><patch_index_0001><patch_index_0002></object>",
    # unclosed / malformed
    "<phrase> unclosed phrase<object><patch_index_0001><patch_index_0002></object>",
    "<phrase> a</phrase><object><patch_index_0001><patch_index_0002>",
    "<phrase> a</phrase><object><patch_index_0001></object>",
    "<phrase> a</phrase><object></object>",
    "<phrase></phrase><object><patch_index_0001><patch_index_0002></object>",
    "<phrase> a</phrase><object><patch_index_0001><patch_index_0002>"
    "</delimiter_of_multi_objects/></object>",
    "<phrase> a</phrase><object><patch_index_0001><patch_index_0002><patch_index_0003></object>",
    "<phrase> a</phrase><object><patch_index_><patch_index_0002></object>",
    "<phrase> a</phrase><object><patch_index_12a><patch_index_0002></object>",
    "<phrase> a</phrase><object><patch_index_-1><patch_index_0002></object>",
    "<phrase> a</phrase><object><patch_index_+1><patch_index_0002></object>",
    "<phrase> a</phrase><object><patch_index_1 ><patch_index_0002></object>",
    "<phrase> a</phrase><object><patch_index_1_0><patch_index_0002></object>",
    "<phrase> a</phrase></object>",
    "<phrase> a <b</phrase><object><patch_index_0001><patch_index_0002></object>",
    "<phrase> a > b</phrase><object><patch_index_0001><patch_index_0002></object>",
    "<phrase><phrase> a</phrase><object><patch_index_0001><patch_index_0002></object>",
    "<<phrase> a</phrase><object><patch_index_0001><patch_index_0002></object>",
    "<phrase> a</phrase><object><object><patch_index_0001><patch_index_0002></object>",
    "<PHRASE> a</PHRASE><OBJECT><patch_index_0001><patch_index_0002></OBJECT>",
    "< phrase> a</phrase><object><patch_index_0001><patch_index_0002></object>",
    "a < b and c > d",
    "a <b c<object><patch_index_0001><patch_index_0002></object>",
    "x <y\nz <object><patch_index_0001><patch_index_0002></object>",
    "<unclosed <object><patch_index_0007><patch_index_0009></object> tail >",
    "<>empty tag<>",
    "<<>>",
    "<a<b>c>",
    "lone < and lone >",
    "<\n>",
    "<a\nb>c",
    "<phrase> a\nb</phrase><object><patch_index_0001><patch_index_0002></object>",
    "<phrase>\n</phrase><object><patch_index_0001><patch_index_0002></object>",
    "<phrase> a</phrase><object><patch_index_00\n01><patch_index_0002></object>",
    "<grounding\n> text",
    # spaces inside the structures
    "<phrase> a</phrase> <object> <patch_index_0001> <patch_index_0002> </object>",
    "<phrase> a </phrase><object><patch_index_0001><patch_index_0002></object>",
    "<phrase>   a   </phrase><object><patch_index_0001><patch_index_0002></object> b",
    "<phrase>   </phrase><object><patch_index_0001><patch_index_0002></object>",
    "  <phrase>   </phrase><object><patch_index_0001><patch_index_0002></object>  ",
    "<phrase>\u3000</phrase><object><patch_index_0001><patch_index_0002></object>",
    "<object><patch_index_0001> <patch_index_0002></object>",
    # non-ASCII
    "<grounding> 一张图片<phrase> 雪人</phrase><object><patch_index_0044><patch_index_0863></object>"
    "在火边<phrase> 取暖</phrase><object><patch_index_0005><patch_index_0911></object>。",
    "<phrase> 😀 emoji</phrase><object><patch_index_0001><patch_index_0002></object> 🎉🎉",
    "<phrase> e\u0301te\u0301</phrase><object><patch_index_0001><patch_index_0002></object> "
    "cafe\u0301",
    "\U0001F600<phrase>\U0001F436</phrase><object><patch_index_0064><patch_index_0127></object>"
    "\U0001F600",
    "Ünïcödé<object><patch_index_0010><patch_index_0300></object> ñ",
    "<phrase> עברית</phrase><object><patch_index_0001><patch_index_0002></object> العربية",
    # Unicode whitespace at the edges and inside phrases
    "\u3000<phrase>\u3000cat\u3000</phrase><object><patch_index_0001><patch_index_0002></object>"
    "\u3000",
    "\u00a0 lead<phrase>\u00a0dog\u00a0</phrase><object><patch_index_0001><patch_index_0002>"
    "</object>\u00a0",
    "\u2028<phrase>\u2028a\u2028b\u2028</phrase><object><patch_index_0001><patch_index_0002>"
    "</object>\u2029",
    "\x1c\x1d<phrase>\x1e x \x1f</phrase><object><patch_index_0001><patch_index_0002></object>"
    "\x1c",
    "\x85<phrase>\x85y\x85</phrase><object><patch_index_0001><patch_index_0002></object>\x85",
    "\u200b<phrase>\u200bz\u200b</phrase><object><patch_index_0001><patch_index_0002></object>"
    "\u200b",
    "\ufeff<phrase> bom</phrase><object><patch_index_0001><patch_index_0002></object>",
    "\t\n\r\x0b\x0c<phrase>\tw\n</phrase><object><patch_index_0001><patch_index_0002></object>"
    "\t\n",
    "\u2000\u2001\u2002\u200a\u202f\u205f\u1680 text \u1680",
    "<grounding>\u3000<phrase>a</phrase><object><patch_index_0001><patch_index_0002></object>",
    "<phrase>a</phrase><object><patch_index_0001><patch_index_0002></object>\u3000\u3000",
    "  <object><patch_index_0001><patch_index_0002></object>  x",
    "<object><patch_index_0001><patch_index_0002></object>",
    "   <object><patch_index_0001><patch_index_0002></object>",
    "a\x00b<phrase> n\x00l</phrase><object><patch_index_0001><patch_index_0002></object>",
    # big and unusual patch indices
    "<phrase> big</phrase><object><patch_index_99999><patch_index_0002></object>",
    "<object><patch_index_99999><patch_index_123456789></object>",
    "<object><patch_index_000000000044><patch_index_0000863></object>",
    "<object><patch_index_0><patch_index_0></object>",
    "<object><patch_index_00000><patch_index_1024></object>",
    "<object><patch_index_1023><patch_index_0></object>",
    "<object><patch_index_0031><patch_index_0992></object>",
    "<object><patch_index_18446744073709551617><patch_index_9223372036854775808></object>",
    "<phrase> huge</phrase><object><patch_index_" + "9" * 300 + "><patch_index_1></object>",
    "<object><patch_index_" + "1" + "0" * 309 + "><patch_index_5></object>",
    "<object><patch_index_" + "0" * 4290 + "44><patch_index_5></object>",
    # row index just under the double range: 32 * (2**1024 - 2**970) - 1 rounds down to DBL_MAX
    "<object><patch_index_" + str(32 * (2 ** 1024 - 2 ** 970) - 1) + "><patch_index_7></object>",
    # Unicode decimal digits (Python's \d and int())
    "<phrase> arabic</phrase><object><patch_index_٠٠٤٤><patch_index_٠٨٦٣></object>",
    "<phrase> mixed</phrase><object><patch_index_0٤4><patch_index_８６３></object>",
    "<object><patch_index_\U0001D7CE\U0001D7D9><patch_index_०९></object>",
    "<object><patch_index_\u0e51\u0e52><patch_index_\U0001FBF9></object>",
    "<object><patch_index_²><patch_index_0002></object>",
    "<object><patch_index_Ⅻ><patch_index_0002></object>",
    # newline inside tags between the entity structures
    "<phrase> a</phrase><object>\n<patch_index_0001><patch_index_0002></object>",
    "line one\n<phrase> two</phrase><object><patch_index_0001><patch_index_0002></object>\nthree",
    # other tags
    "</doc></chunk></line><grounding> tags only",
    "<grounding> text with <unknown_tag> and <b>bold</b>",
    # entity right at the start/end of the caption
    "<phrase>start</phrase><object><patch_index_0001><patch_index_0002></object>",
    "end<phrase>end</phrase><object><patch_index_0001><patch_index_0002></object>",
    # a full decoded-looking output written out by hand
    "<image>. the, to and of as in I that' for is was- on’ it with The as at bet he have from by "
    "are \" you his “ this said not has an ( but had we her they will my or were their): up about "
    "out who one all been she can more would It</image><grounding> An image of<phrase> a snowman"
    "</phrase><object><patch_index_0044><patch_index_0863></object> warming himself by<phrase> a "
    "fire</phrase><object><patch_index_0005><patch_index_0911></object>.",
]

ERRORS = [
    "<object><patch_index_" + "1" * 4301 + "><patch_index_5></object>",
    "<object><patch_index_" + "0" * 4300 + "1><patch_index_5></object>",
    "<phrase> a</phrase><object><patch_index_1><patch_index_" + "٣" * 4301 + "></object>",
    "<object><patch_index_" + "9" * 400 + "><patch_index_5></object>",
    "<phrase> a</phrase><object><patch_index_5><patch_index_" + "9" * 320 + "></object>",
    # row index halfway between DBL_MAX and 2**1024: rounds to even = 2**1024 -> overflow
    "<object><patch_index_" + str(32 * (2 ** 1024 - 2 ** 970)) + "><patch_index_7></object>",
    # the limit applies to a later match; the earlier, valid one does not save it
    "<object><patch_index_1><patch_index_2></object> then <object><patch_index_" + "7" * 4400
    + "><patch_index_2></object>",
]

RANDOM_VOCAB = [
    "<phrase>", "</phrase>", "<object>", "</object>", "</delimiter_of_multi_objects/>",
    "<grounding>", "<image>", "</image>", "</doc>", "</chunk>", "</line>",
    "<patch_index_0000>", "<patch_index_1023>", "<patch_index_0044>", "<patch_index_0863>",
    "<patch_index_5>", "<patch_index_٠٤>", "<patch_index_>", "<patch_index_12x>",
    " a", " dog", " the cat", "猫", "😀", "e\u0301", " ", "  ", "\u3000", "\u00a0", "\n", "\t",
    "<", ">", "\x1c", "x<y", ".", ",", " in", "É", "\u2028",
]


VERSIONS_EXTRA = {
    "fixtures": {
        "processor.jsonl": "tests/golden/make_processor_fixtures.py",
        "postprocess.jsonl": "tests/golden/make_postprocess_fixtures.py (random seed 20240517)",
        "postprocess_errors.jsonl": "tests/golden/make_postprocess_fixtures.py",
    },
}


def random_patch(rng):
    kind = rng.random()
    if kind < 0.7:
        return f"<patch_index_{rng.randrange(1024):04d}>"
    if kind < 0.8:
        return f"<patch_index_{rng.randrange(100000)}>"
    if kind < 0.9:
        return "<patch_index_" + "".join(rng.choice("0123456789٠١٢٣") for _ in range(rng.randint(1, 6))) + ">"
    return rng.choice(["<patch_index_>", "<patch_index_1 >", "<patch_index_a>"])


def random_object(rng):
    pairs = [random_patch(rng) + random_patch(rng) for _ in range(rng.randint(1, 3))]
    body = "</delimiter_of_multi_objects/>".join(pairs)
    if rng.random() < 0.1:
        body = body.replace(">", "> ", 1)
    return "<object>" + body + ("</object>" if rng.random() < 0.9 else "")


def random_case(rng):
    parts = []
    if rng.random() < 0.5:
        parts.append("<image>. the, to and of</image>")
    if rng.random() < 0.7:
        parts.append("<grounding>")
    for _ in range(rng.randint(1, 12)):
        r = rng.random()
        if r < 0.3:
            phrase = "".join(rng.choice([" a", " big", " 猫", "\u3000", " ", "x", "\n", "😀", "é"])
                             for _ in range(rng.randint(1, 4)))
            parts.append("<phrase>" + phrase + "</phrase>" + (random_object(rng) if rng.random() < 0.8 else ""))
        elif r < 0.45:
            parts.append(random_object(rng))
        else:
            parts.append(rng.choice(RANDOM_VOCAB))
    return "".join(parts)


def entity_json(entities):
    return [[name, [start, end], [list(box) for box in boxes]] for name, (start, end), boxes in entities]


def main():
    os.makedirs(OUT, exist_ok=True)
    processor = reference.build_processor()

    from PIL import Image

    image = Image.new("RGB", (32, 24), (120, 80, 40))
    decoded = []
    for caption in DECODE_CAPTIONS:
        ids = processor(text=caption, images=image)["input_ids"]
        decoded.append(processor.tokenizer.decode(ids, skip_special_tokens=True))
    # The HF integration test's output ids for the snowman image (reference doc section 12).
    snowman_ids = ([0, 64003] + list(range(4, 68)) + [64004, 64012, 712, 1648, 9, 64007, 10, 43867,
                   64008, 64009, 64057, 64876, 64010, 5950, 597, 32, 64007, 10, 646, 64008, 64009,
                   64018, 64924, 64010, 4, 2])
    decoded.append(processor.tokenizer.decode(snowman_ids, skip_special_tokens=True))
    decoded.append(processor.batch_decode([snowman_ids], skip_special_tokens=True)[0])

    rng = random.Random(20240517)
    randoms = [random_case(rng) for _ in range(160)]

    cases = []
    seen = set()
    for text in DOC_EXAMPLES + ["<image>junk</image>" + t for t in DOC_EXAMPLES] + decoded + HAND + randoms:
        if text not in seen:
            seen.add(text)
            cases.append(text)

    rows, errors = [], []
    for text in cases:
        raw = processor.post_process_generation(text, cleanup_and_extract=False)
        try:
            clean, entities = processor.post_process_generation(text)
        except (ValueError, OverflowError) as e:
            errors.append({"generated": text, "error": f"{type(e).__name__}: {e}", "raw": raw})
            continue
        rows.append({"generated": text, "text": clean, "entities": entity_json(entities), "raw": raw})
    for text in ERRORS:
        raw = processor.post_process_generation(text, cleanup_and_extract=False)
        try:
            processor.post_process_generation(text)
        except (ValueError, OverflowError) as e:
            errors.append({"generated": text, "error": f"{type(e).__name__}: {e}", "raw": raw})
        else:
            raise SystemExit(f"expected the reference to raise on {text[:60]!r}")

    reference.write_jsonl(os.path.join(OUT, "postprocess.jsonl"), rows)
    reference.write_jsonl(os.path.join(OUT, "postprocess_errors.jsonl"), errors)
    # One versions file for the processor and post-processing fixtures; both scripts write the
    # same content, so the order they run in does not matter.
    reference.write_versions(os.path.join(OUT, "versions_processor.json"), VERSIONS_EXTRA)
    print(f"postprocess.jsonl: {len(rows)} lines, postprocess_errors.jsonl: {len(errors)} lines")


if __name__ == "__main__":
    main()
