#!/usr/bin/env python3
"""Golden data for the C tokenizer (worker/text/tokenizer.c), from the reference tokenizer:
Kosmos2Processor's tokenizer as tests/golden/reference.py builds it.

Writes, under tests/golden/text/:
  tokenizer.jsonl         {"text", "ids", "decode": {"plain", "clean", "skip", "skip_clean"}}
                          ids = encode(text, add_special_tokens=False); the decodes are
                          decode(ids, skip_special_tokens=S, clean_up_tokenization_spaces=C) for
                          (S, C) = (F, F), (F, T), (T, F), (T, T).
  tokenizer_decode.jsonl  {"ids", "decode": {...same four...}} for random id sequences.
  versions.json           the reference's versions (key "tokenizer" describes these files).

Deterministic: a fixed seed and no dependence on the environment beyond the reference itself.
    cd tests/golden && /work/venv/bin/python make_tokenizer_fixtures.py
"""
import os
import random
import sys

import reference

SEED = 20261126
OUT = os.path.join(reference.HERE, "text")

TAGS = ["</doc>", "<image>", "</image>", "</chunk>", "</line>", "<phrase>", "</phrase>",
        "<object>", "</object>", "</delimiter_of_multi_objects/>", "<grounding>"]
SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
DECODES = {"plain": (False, False), "clean": (False, True), "skip": (True, False),
           "skip_clean": (True, True)}

# Unicode White_Space plus the Python-only isspace characters (U+001C..U+001F), which the
# reference does *not* treat as white space.
SPACES = ["\t", "\n", "\x0b", "\x0c", "\r", " ", "\x85", "\xa0", "\u1680", "\u2000", "\u2005",
          "\u200a", "\u2028", "\u2029", "\u202f", "\u205f", "\u3000", "\x1c", "\x1d", "\x1e",
          "\x1f", "\r\n", "  ", " \t ", "\n\n"]

WORDS = ["the", "a", "An", "image", "of", "two", "puppies", "sitting", "in", "field", "grass",
         "snowman", "warming", "himself", "by", "fire", "Describe", "this", "detail", "dog",
         "cat", "isn't", "don't", "I'm", "it's", "we've", "they're", "hello", "world", "Zürich",
         "naïve", "café", "résumé", "coöperate", "straße", "Ωmega", "x", "I", "A", "123",
         "3.14", "2026-11-26", "e-mail", "foo_bar", "C++", "#hashtag", "@user", "$100", "50%",
         "http://example.com/a?b=c", "UPPER", "MiXeD", "a1b2c3", "unbelievable",
         "antidisestablishmentarianism"]

SCRIPTS = [
    "你好，世界", "一只狗坐在草地上。", "東京タワー", "ひらがなとカタカナ", "ｶﾀｶﾅ ﾊﾝｶｸ",
    "한국어 문장입니다", "한글", "مرحبا بالعالم", "العربية", "שלום עולם", "Привет, мир",
    "Съешь же ещё этих мягких французских булок", "नमस्ते दुनिया", "क्षत्रिय", "हिन्दी",
    "สวัสดีครับ", "ภาษาไทย", "Γειά σου Κόσμε", "ΑΒΓΔ αβγδ", "ქართული", "Հայերեն",
    "বাংলা ভাষা", "தமிழ்", "తెలుగు", "ಕನ್ನಡ", "മലയാളം", "ગુજરાતી", "ਪੰਜਾਬੀ", "සිංහල",
    "ພາສາລາວ", "ភាសាខ្មែរ", "မြန်မာ", "አማርኛ", "ᏣᎳᎩ", "ᠮᠣᠩᠭᠣᠯ", "བོད་ཡིག", "Tiếng Việt",
    "Türkçe ğüşöçı", "Polski źćżąę", "Čeština ěščřžýáíé", "Ελληνικά", "ÆØÅ æøå",
]

EMOJI = [
    "😀", "👍", "👍🏽", "👍🏿", "👨‍👩‍👧‍👦", "👩‍💻", "🏳️‍🌈", "🏴‍☠️", "❤️", "❤", "☺️", "✌🏻",
    "🇺🇸", "🇯🇵", "🇩🇪🇫🇷", "🇺", "#️⃣", "1️⃣", "*️⃣", "©️", "®", "™️", "🧑🏾‍🚀", "👁️‍🗨️",
    "🐶", "🔥", "🎉🎉🎉", "🫠", "🏴󠁧󠁢󠁳󠁣󠁴󠁿", "😀\ufe0e", "a\ufe0f", "\ufe0f", "\u200d", "😀\u200d",
]

COMBINING = [
    "e\u0301", "a\u0300", "o\u0308", "n\u0303", "c\u0327", "e\u0301\u0301", "a\u0301\u0302",
    "o\u0308\u0304", "u\u031b\u0323", "x\u0301", "q\u0307", "\u0301", "\u0301abc", " \u0301",
    "a\u0301\u0302\u0303\u0304\u0305\u0306\u0307", "Z\u0351\u036b\u0343\u036a\u0302\u036b",
    "\uff21\u0301", "\u00a0\u0301x", "\ufb01\u0301", "\u00bd\u0301", "A\u030a", "\u212b",
    "\u0041\u0327\u0301", "ạ\u0302", "\u1e9b\u0323", "i\u0307", "\u0958", "\u0915\u093c",
    "\u3099", "か\u3099", "\uff76\uff9e", "\u1100\u1161\u11a8", "\u0627\u0653", "\u05d0\u05b7",
    "a\u20dd", "1\u20e3", "a\u0903", "é\u0903", "\u0600" + "1", "\u0600a", "\u0e01\u0e33",
]

COMPAT = [
    "\ufb01", "\ufb02", "\ufb00", "\ufb03", "ﬁnance", "ofﬁce", "Ｆｕｌｌ　ｗｉｄｔｈ", "ＡＢＣ１２３",
    "（括弧）", "！？", "½", "¼ cup", "™", "…", "a…b", "①②③", "ⅫⅣ", "㎏", "㍿", "ｱｲｳ",
    "x²+y³", "H₂O", "ℌℑℜ", "𝐀𝐁𝐂", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "ℓ", "µ", "Å", "ǅ", "ĳ", "ŉ", "ſ", "ﷺ",
    "ﷻ", "ﻼ", "⁄", "′″", "‘quoted’", "“double”", "«guillemets»", "–—", "−", "·", "•",
    "\u00ad", "soft\u00adhyphen", "\u2126", "\u212a", "ｷｬﾌﾟﾃﾝ", "㌀", "〜", "～",
]

CONTROLS = ["\x00", "\x01", "\x07", "\x08", "\x0e", "\x1b", "\x7f", "\x80", "\x9f", "\u200b",
            "\u200c", "\u200d", "\u200e", "\u200f", "\u2060", "\ufeff", "\u202a", "\u202e",
            "\u2066", "\u2069", "\ufff9", "\ufffc", "\ufffd", "\U000e0001", "\U000e0041"]

UNKNOWN = ["☃", "⛄", "\ue000", "\uf8ff", "\U000f0000", "\U0010fffd", "\U0001d11e", "𓀀",
           "\U00016a40", "ꙮ", "\u2e3b", "\U0001f9ff", "\U00010348", "⸘", "\U0001e900",
           "\U0010ffff", "\ufdd0", "\uffff", "\U0001fffe"]

PUNCT = [" .", " ,", " !", " ?", " ' ", " n't", " 'm", " 's", " 've", " 're", "'", "''",
         " ...", "?!", " ;", " :", "(", ")", "[x]", "{y}", "\"", "-", "--", "/", "\\", "&",
         "<", ">", "<>", "</", "/>", "<<", ">>", "< phrase>", "<phrase", "phrase>"]

META = "\u2581"


def patch(k):
    return "<patch_index_%04d>" % k


def hand_written():
    rows = [
        "", " ", "  ", "\t", "\n", "\r\n", " \t\n\r ", "\u3000", "\xa0", "\x1c", "\u2028",
        "<grounding>An image of", "<grounding> An image of",
        "<grounding> Describe this image in detail:", "Describe this image in detail:",
        "</phrase>.", "<phrase> Two puppies </phrase>",
        "<grounding> Two puppies sit in a field of grass.",
        "<grounding> An image of<phrase> a snowman</phrase><object><patch_index_0044>"
        "<patch_index_0863></object> warming himself by<phrase> a fire</phrase><object>"
        "<patch_index_0005><patch_index_0911></object>",
        "<grounding><phrase> It</phrase><object><patch_index_0000><patch_index_1023></object> is",
        "<grounding> Question: Where is<phrase> the fire</phrase><object><patch_index_0005>"
        "<patch_index_0911></object> next to? Answer:",
        "<image>" + " <image>" * 64 + " </image> An image of",
        "<s><grounding> An image of.</s>", "<s>", "</s>", "<pad>", "<unk>", "<mask>",
        "<s></s><pad><unk><mask>", " <s> </s> <pad> <unk> <mask> ", "a<s>b", "a <s> b",
        "a\t<mask>\tb", "<s><s><s>", "<mask>mask", "<un<unk>k>", "<<s>>", "<s >", "< s>",
        "<S>", "<UNK>", "<Mask>", "<phrase><phrase>", "<phrase>  <phrase>", "a <phrase>",
        "a\t\t<phrase>", "a\n<phrase>\nb", "a\u3000<phrase>", "a\xa0<phrase>", "a\x85<phrase>",
        "a\x1c<phrase>", "a\x1f <phrase>", "a \x1f<phrase>", "a\u200b<phrase>",
        "a\u2028<phrase>", "\t <phrase> \t", "<phrase>\t", "<phrase>a", "<phrase> a",
        "<phrase>  a", "a</phrase>b", "<patch_index_1023>", "<patch_index_1024>",
        "<patch_index_10000>", "<patch_index_123>", "<patch_index_0001>x", "<patch_index_-001>",
        "<patch_index_00001>", "<patch_index_0001><patch_index_0002>",
        " <patch_index_0001> <patch_index_0002> ", "<patch_index_0001 >", "<patch_index_>",
        "</delimiter_of_multi_objects/>", "</delimiter_of_multi_objects>", "</doc></doc>",
        "＜s＞", "＜unk＞", "＜mask＞", "＜phrase＞", "a ＜unk＞☃b", "＜unk＞＜unk＞",
        META, META * 2, META + "x", META * 2 + "x", "x" + META, "x" + META + "y",
        "x " + META + " y", META + " " + META, "<phrase>" + META, META + "<phrase>",
        "isn't it's I'm we've you're", "Hello , world !", "a . b ? c ! d , e",
        "he said ' hi ' there", "He's here , isn't he ?", "x  .  y", "don 't", "can' t",
        " n't 's 've 're 'm", ".", "..", "...", " .", "?", "!", ",", "'",
        "a" * 3000, "ab" * 1500, "x" * 3001, "\u2603" * 3000, "é" * 2000, "\u4e00" * 3000,
        ("the" * 1000), ("\U0001f600" * 800), "a" + "\u0301" * 3000, "😀" + "\u200d😀" * 500,
        "\U0001f1fa" * 301, " ".join(["\u2603"] * 200), "\u2603\u26c4 \u2603\u26c4",
        "\u2603a\u2603", "a\u2603\u2603\u2603b c\u2603d", "\x00", "a\x00b", "\x00\x00 \x00",
        # Smaller cousins of the unit test's megabyte inputs, so their results are checked too.
        "\u0301" * 2000, "<" * 1000, "<patch_index_000" * 100, " " * 1000 + "<phrase>",
        "\u3000" * 500 + "<phrase>x", "<phrase> " * 200, "\U0001f44d\U0001f3fd" * 300,
        "qz" * 1000, META * 500,
    ]
    return rows


def categories(rng):
    rows = []
    for group in (SCRIPTS, EMOJI, COMBINING, COMPAT, CONTROLS, UNKNOWN, PUNCT):
        for s in group:
            rows.append(s)
            rows.append("x " + s + " y")
            rows.append("x" + s + "y")
    for w in WORDS:
        rows.append(w)
    for sp in SPACES:
        rows.append("a" + sp + "b")
        rows.append(sp + "a" + sp)
        rows.append(sp * 3)
        rows.append("a" + sp + "<phrase>" + sp + "b")
        rows.append("<s>" + sp + "<phrase>")
        rows.append("x" + sp + "<s>" + sp + "y")
    for tag in TAGS:
        rows.append(tag)
        rows.append("word" + tag + "word")
        rows.append("word " + tag + " word")
        rows.append("  " + tag + "  ")
        rows.append(tag + "." + tag)
        rows.append(tag + tag)
    for sp in SPECIALS:
        rows.append("x" + sp + "y")
        rows.append(" x " + sp + " y ")
    for k in list(range(0, 1024, 7)) + [1, 2, 3, 1021, 1022, 1023]:
        rows.append("<object>%s%s</object>" % (patch(k), patch(1023 - k)))
    for _ in range(40):
        ks = [rng.randrange(1024) for _ in range(rng.randrange(1, 12))]
        seps = ["", " ", "  ", "\t", "\n"]
        rows.append("".join(rng.choice(seps) + patch(k) for k in ks) + rng.choice(seps))
    return rows


def code_point_sweeps():
    """Runs of consecutive code points, to exercise the charsmap and grapheme clusters."""
    ranges = [(0x20, 0x3000), (0x3000, 0x3400), (0xA000, 0xA100), (0xA640, 0xA900),
              (0xAC00, 0xAC40), (0xD7B0, 0xD800), (0xF900, 0xFB00), (0xFB00, 0x10000),
              (0x10000, 0x10100), (0x1D400, 0x1D800), (0x1F100, 0x1F300), (0x1F900, 0x1FB00),
              (0xE0000, 0xE0080)]
    rows = []
    for lo, hi in ranges:
        for start in range(lo, hi, 48):
            rows.append("".join(chr(c) for c in range(start, min(start + 48, hi))))
    return rows


def pool():
    out = []
    for group in (WORDS, SCRIPTS, EMOJI, COMBINING, COMPAT, CONTROLS, UNKNOWN, PUNCT, TAGS,
                  SPECIALS, [META, META + META]):
        out.extend(group)
    return out


def random_mixes(rng, count):
    items = pool()
    rows = []
    for _ in range(count):
        parts = []
        for _ in range(rng.randrange(1, 14)):
            r = rng.random()
            if r < 0.6:
                parts.append(rng.choice(items))
            elif r < 0.7:
                parts.append(patch(rng.randrange(1024)))
            elif r < 0.85:
                parts.append(rng.choice(SPACES))
            else:
                parts.append(random_chars(rng, rng.randrange(1, 6)))
            if rng.random() < 0.5:
                parts.append(" ")
        rows.append("".join(parts))
    return rows


def random_chars(rng, n):
    """Random code points, weighted toward the planes that have characters."""
    out = []
    while len(out) < n:
        r = rng.random()
        if r < 0.3:
            c = rng.randrange(0x20, 0x250)
        elif r < 0.5:
            c = rng.randrange(0x250, 0x3000)
        elif r < 0.8:
            c = rng.randrange(0x3000, 0x10000)
        else:
            c = rng.randrange(0x10000, 0x110000)
        if 0xD800 <= c <= 0xDFFF:
            continue
        out.append(chr(c))
    return "".join(out)


def decode_row(tok, ids):
    return {name: tok.decode(ids, skip_special_tokens=s, clean_up_tokenization_spaces=c)
            for name, (s, c) in DECODES.items()}


def random_id_sequences(rng, tok, count):
    mask = tok.convert_tokens_to_ids("<mask>")
    tags = [tok.convert_tokens_to_ids(t) for t in TAGS]
    patches = [tok.convert_tokens_to_ids(patch(k)) for k in range(1024)]
    # Pieces that matter to the decoder: "▁" alone, punctuation the clean-up rewrites.
    interesting = [tok.convert_tokens_to_ids(p) for p in
                   ["\u2581", ".", ",", "?", "!", "'", "\u2581'", "s", "\u2581.", "\u2581,",
                    "n", "'t", "\u2581n", "m", "ve", "re", "\u2581the", "\u2581a"]]
    interesting = [i for i in interesting if i != tok.unk_token_id]
    seqs = [[], [0], [2], [3], [mask], [tags[0]], [patches[0]], [0, 2], [tags[10], 5]]
    while len(seqs) < count:
        seq = []
        for _ in range(rng.randrange(0, 25)):
            r = rng.random()
            if r < 0.15:
                seq.append(rng.choice([0, 1, 2, 3, mask]))
            elif r < 0.3:
                seq.append(rng.choice(tags))
            elif r < 0.4:
                seq.append(rng.choice(patches))
            elif r < 0.6:
                seq.append(rng.choice(interesting))
            else:
                seq.append(rng.randrange(4, mask))
        if rng.random() < 0.2:
            seq.insert(0, rng.choice([0, 1, 2, 3, mask] + tags))
        seqs.append(seq)
    return [{"ids": s, "decode": decode_row(tok, s)} for s in seqs]


def main():
    rng = random.Random(SEED)
    tok = reference.build_processor().tokenizer
    texts = hand_written() + categories(rng) + code_point_sweeps() + random_mixes(rng, 700)
    seen, rows = set(), []
    for text in texts:
        if text in seen:
            continue
        seen.add(text)
        ids = tok.encode(text, add_special_tokens=False)
        rows.append({"text": text, "ids": ids, "decode": decode_row(tok, ids)})
    os.makedirs(OUT, exist_ok=True)
    reference.write_jsonl(os.path.join(OUT, "tokenizer.jsonl"), rows)
    decode_rows = random_id_sequences(rng, tok, 240)
    reference.write_jsonl(os.path.join(OUT, "tokenizer_decode.jsonl"), decode_rows)

    versions_path = os.path.join(OUT, "versions.json")
    extra = {}
    if os.path.exists(versions_path):
        import json

        with open(versions_path, encoding="utf-8") as f:
            extra = {k: v for k, v in json.load(f).items() if k != "versions"}
    extra["tokenizer"] = {
        "script": "tests/golden/make_tokenizer_fixtures.py",
        "seed": SEED,
        "reference": "reference.build_processor().tokenizer, encode(add_special_tokens=False)",
        "tokenizer.jsonl": len(rows),
        "tokenizer_decode.jsonl": len(decode_rows),
    }
    reference.write_versions(versions_path, extra)
    print("tokenizer.jsonl: %d rows, tokenizer_decode.jsonl: %d rows" % (len(rows),
                                                                         len(decode_rows)),
          file=sys.stderr)


if __name__ == "__main__":
    main()
