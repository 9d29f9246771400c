/* The text subcommands: tokenize (and --decode), encode, postprocess. Each is a thin adapter
 * from JSON to the kosmos_text library and back; the JSON Lines loop is cli_jsonl. */
#include <getopt.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "cli.h"
#include "cli_jsonl.h"
#include "ks_buf.h"
#include "postprocess.h"
#include "processor.h"
#include "tokenizer.h"

/* A JSON array of the ids, or NULL when out of memory. */
static json_t *id_array(const kt_ids *ids)
{
    json_t *array = json_array();
    for (size_t i = 0; array && i < ids->len; i++)
        if (json_array_append_new(array, json_integer(ids->v[i])) != 0)
            json_decref(array), array = NULL;
    return array;
}

/* ---- tokenize ---------------------------------------------------------------------------- */

static const char tokenize_help[] =
    "usage: kosmos tokenize --model DIR [--decode] [--skip-special-tokens]\n"
    "                       [--clean-up-spaces | --no-clean-up-spaces]\n"
    "\n"
    "Reads JSON Lines on stdin. Each line is a JSON string; the output line is the JSON array\n"
    "of its token ids, without <s> or </s>, as the Hugging Face Kosmos-2 processor's tokenizer\n"
    "gives them (the 11 tag tokens and 1,024 <patch_index_NNNN> tokens included).\n"
    "\n"
    "  --model DIR            folder with sentencepiece.bpe.model (a Hugging Face checkpoint\n"
    "                         folder works) and optionally tokenizer_config.json\n"
    "  --decode               the other way: each line is a JSON array of ids, the output a\n"
    "                         JSON string, as tokenizer.decode(ids)\n"
    "  --skip-special-tokens  with --decode, drop <s> <pad> </s> <unk> <mask> (default: keep)\n"
    "  --clean-up-spaces      with --decode, apply clean_up_tokenization_spaces (\" .\" -> \".\")\n"
    "  --no-clean-up-spaces   with --decode, do not; the default comes from\n"
    "                         DIR/tokenizer_config.json, and is off without that file\n";

typedef struct tokenize_context {
    kt_tokenizer *tokenizer;
    kt_decode_options decode;
} tokenize_context;

static ks_status tokenize_line(const json_t *input, json_t **result, void *context)
{
    const tokenize_context *ctx = context;
    if (!json_is_string(input))
        return ks_fail(KS_ERR_INVALID, "expected a JSON string");
    kt_ids ids;
    kt_ids_init(&ids);
    ks_status st = kt_tokenizer_encode(ctx->tokenizer, json_string_value(input),
                                       json_string_length(input), &ids);
    if (st == KS_OK && !(*result = id_array(&ids)))
        st = ks_fail(KS_ERR_NOMEM, "out of memory building the id array");
    kt_ids_fini(&ids);
    return st;
}

static ks_status decode_line(const json_t *input, json_t **result, void *context)
{
    const tokenize_context *ctx = context;
    if (!json_is_array(input))
        return ks_fail(KS_ERR_INVALID, "expected a JSON array of token ids");
    size_t count = json_array_size(input);
    int32_t *ids = malloc((count ? count : 1) * sizeof *ids);
    if (!ids)
        return ks_fail(KS_ERR_NOMEM, "out of memory reading %zu ids", count);
    ks_status st = KS_OK;
    ks_buf text;
    ks_buf_init(&text);
    for (size_t i = 0; i < count && st == KS_OK; i++) {
        const json_t *item = json_array_get(input, i);
        json_int_t id = json_is_integer(item) ? json_integer_value(item) : -1;
        if (!json_is_integer(item))
            st = ks_fail(KS_ERR_INVALID, "element %zu is not an integer", i);
        else if (id < 0 || (size_t)id >= kt_tokenizer_vocab_size(ctx->tokenizer))
            st = ks_fail(KS_ERR_INVALID, "element %zu: id %lld is outside [0, %zu)", i,
                         (long long)id, kt_tokenizer_vocab_size(ctx->tokenizer));
        else
            ids[i] = (int32_t)id;
    }
    if (st == KS_OK)
        st = kt_tokenizer_decode(ctx->tokenizer, ids, count, &ctx->decode, &text);
    if (st == KS_OK) {
        *result = json_stringn(text.data ? text.data : "", text.len);
        if (!*result)
            st = ks_fail(KS_ERR_NOMEM, "out of memory building the decoded string");
    }
    ks_buf_fini(&text);
    free(ids);
    return st;
}

/* Loads the tokenizer of --model DIR for a subcommand, or explains why not. */
static kt_tokenizer *load_tokenizer(const char *command, const char *model_dir)
{
    kt_tokenizer *tokenizer = NULL;
    if (kt_tokenizer_new(model_dir, &tokenizer) != KS_OK)
        cli_usage_error("%s: cannot load the tokenizer from %s: %s", command, model_dir,
                        ks_error_message());
    return tokenizer;
}

int cmd_tokenize(int argc, char **argv)
{
    static const struct option options[] = {
        {"model", required_argument, NULL, 'm'},
        {"decode", no_argument, NULL, 'd'},
        {"skip-special-tokens", no_argument, NULL, 's'},
        {"clean-up-spaces", no_argument, NULL, 'c'},
        {"no-clean-up-spaces", no_argument, NULL, 'C'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *model_dir = NULL;
    bool decode = false;
    tokenize_context ctx = {.decode = {.skip_special_tokens = false, .clean_up_spaces = -1}};
    int option;
    while ((option = getopt_long(argc, argv, "+m:h", options, NULL)) != -1) {
        switch (option) {
        case 'm': model_dir = optarg; break;
        case 'd': decode = true; break;
        case 's': ctx.decode.skip_special_tokens = true; break;
        case 'c': ctx.decode.clean_up_spaces = 1; break;
        case 'C': ctx.decode.clean_up_spaces = 0; break;
        case 'h': fputs(tokenize_help, stdout); return CLI_EXIT_OK;
        default: return cli_usage_error("tokenize: see 'kosmos tokenize --help'");
        }
    }
    if (optind < argc)
        return cli_usage_error("tokenize: unexpected argument '%s'", argv[optind]);
    if (!model_dir)
        return cli_usage_error("tokenize: --model DIR is required");
    if (!decode && (ctx.decode.skip_special_tokens || ctx.decode.clean_up_spaces != -1))
        return cli_usage_error("tokenize: --skip-special-tokens and --[no-]clean-up-spaces "
                               "only apply with --decode");
    ctx.tokenizer = load_tokenizer("tokenize", model_dir);
    if (!ctx.tokenizer)
        return CLI_EXIT_USAGE;
    int code = cli_jsonl_run(stdin, stdout, decode ? decode_line : tokenize_line, &ctx);
    kt_tokenizer_destroy(&ctx.tokenizer);
    return code;
}

/* ---- encode ------------------------------------------------------------------------------ */

static const char encode_help[] =
    "usage: kosmos encode --model DIR\n"
    "\n"
    "Reads JSON Lines on stdin, each {\"prompt\": str, \"bboxes\": null | [...]}, and writes\n"
    "{\"input_ids\": [...], \"attention_mask\": [...], \"image_embeds_position_mask\": [...]}\n"
    "as Kosmos2Processor(text=prompt, images=<an image>, bboxes=bboxes) builds them:\n"
    "<s> <image> 64 image positions </image> then the prompt's tokens.\n"
    "\n"
    "bboxes has one entry per <phrase>...</phrase> of the prompt, in order:\n"
    "  null                  no box for this phrase\n"
    "  [x1, y1, x2, y2]      one box, normalized to [0, 1] (x2 > x1, y2 > y1)\n"
    "  [ul, lr]              one box as two patch indices of the 32x32 grid (0..1023)\n"
    "  [[...], [...], ...]   several boxes of the forms above\n"
    "Each box becomes <object><patch_index_UL><patch_index_LR></object> after its phrase.\n"
    "\n"
    "  --model DIR   folder with sentencepiece.bpe.model (a Hugging Face checkpoint folder)\n";

static json_t *u8_array(const uint8_t *values, size_t count)
{
    json_t *array = json_array();
    for (size_t i = 0; array && i < count; i++)
        if (json_array_append_new(array, json_integer(values[i])) != 0)
            json_decref(array), array = NULL;
    return array;
}

static ks_status encode_line(const json_t *input, json_t **result, void *context)
{
    const kt_tokenizer *tokenizer = context;
    if (!json_is_object(input))
        return ks_fail(KS_ERR_INVALID, "expected a JSON object {\"prompt\": ..., \"bboxes\": ...}");
    const char *key;
    const json_t *value;
    json_object_foreach((json_t *)input, key, value) {
        if (strcmp(key, "prompt") && strcmp(key, "bboxes"))
            return ks_fail(KS_ERR_INVALID,
                           "unknown key \"%s\" (expected \"prompt\" and \"bboxes\")", key);
    }
    const json_t *prompt = json_object_get(input, "prompt");
    if (!json_is_string(prompt))
        return ks_fail(KS_ERR_INVALID, "\"prompt\" must be a string");
    const json_t *boxes_json = json_object_get(input, "bboxes");

    kt_bboxes boxes;
    kt_bboxes_init(&boxes);
    kt_encoding encoding;
    kt_encoding_init(&encoding);
    ks_status st = KS_OK;
    bool have_boxes = boxes_json && !json_is_null(boxes_json);
    if (have_boxes)
        st = kt_bboxes_from_json(boxes_json, &boxes);
    if (st == KS_OK)
        st = kt_processor_encode(tokenizer, json_string_value(prompt), json_string_length(prompt),
                                 have_boxes ? &boxes : NULL, &encoding);
    if (st == KS_OK) {
        *result = json_pack("{s:o, s:o, s:o}", "input_ids", id_array(&encoding.input_ids),
                            "attention_mask", u8_array(encoding.attention_mask, encoding.len),
                            "image_embeds_position_mask",
                            u8_array(encoding.image_embeds_position_mask, encoding.len));
        if (!*result)
            st = ks_fail(KS_ERR_NOMEM, "out of memory building the encoding");
    }
    kt_encoding_fini(&encoding);
    kt_bboxes_fini(&boxes);
    return st;
}

int cmd_encode(int argc, char **argv)
{
    static const struct option options[] = {
        {"model", required_argument, NULL, 'm'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *model_dir = NULL;
    int option;
    while ((option = getopt_long(argc, argv, "+m:h", options, NULL)) != -1) {
        switch (option) {
        case 'm': model_dir = optarg; break;
        case 'h': fputs(encode_help, stdout); return CLI_EXIT_OK;
        default: return cli_usage_error("encode: see 'kosmos encode --help'");
        }
    }
    if (optind < argc)
        return cli_usage_error("encode: unexpected argument '%s'", argv[optind]);
    if (!model_dir)
        return cli_usage_error("encode: --model DIR is required");
    kt_tokenizer *tokenizer = load_tokenizer("encode", model_dir);
    if (!tokenizer)
        return CLI_EXIT_USAGE;
    int code = cli_jsonl_run(stdin, stdout, encode_line, tokenizer);
    kt_tokenizer_destroy(&tokenizer);
    return code;
}

/* ---- postprocess ------------------------------------------------------------------------- */

static const char postprocess_help[] =
    "usage: kosmos postprocess [--no-cleanup]\n"
    "\n"
    "Reads JSON Lines on stdin, each a JSON string of generated text (the decoded output, tags\n"
    "included), and writes what Kosmos2Processor.post_process_generation returns:\n"
    "  {\"text\": str, \"entities\": [[phrase, [start, end], [[x1, y1, x2, y2], ...]], ...]}\n"
    "start/end count Unicode code points of \"text\"; boxes are normalized to [0, 1].\n"
    "\n"
    "  --no-cleanup   output the JSON string post_process_generation returns with\n"
    "                 cleanup_and_extract=False: the text after the last </image>\n";

static ks_status postprocess_line(const json_t *input, json_t **result, void *context)
{
    bool cleanup = *(const bool *)context;
    if (!json_is_string(input))
        return ks_fail(KS_ERR_INVALID, "expected a JSON string of generated text");
    const char *text = json_string_value(input);
    size_t len = json_string_length(input);
    ks_status st;
    if (!cleanup) {
        ks_buf raw;
        ks_buf_init(&raw);
        st = kt_postprocess_raw(text, len, &raw);
        if (st == KS_OK && !(*result = json_stringn(raw.data ? raw.data : "", raw.len)))
            st = ks_fail(KS_ERR_NOMEM, "out of memory building the result");
        ks_buf_fini(&raw);
        return st;
    }
    kt_grounding grounding;
    kt_grounding_init(&grounding);
    st = kt_postprocess(text, len, &grounding);
    if (st == KS_OK && !(*result = kt_grounding_to_json(&grounding)))
        st = ks_fail(KS_ERR_NOMEM, "out of memory building the result");
    kt_grounding_fini(&grounding);
    return st;
}

int cmd_postprocess(int argc, char **argv)
{
    static const struct option options[] = {
        {"no-cleanup", no_argument, NULL, 'n'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    bool cleanup = true;
    int option;
    while ((option = getopt_long(argc, argv, "+h", options, NULL)) != -1) {
        switch (option) {
        case 'n': cleanup = false; break;
        case 'h': fputs(postprocess_help, stdout); return CLI_EXIT_OK;
        default: return cli_usage_error("postprocess: see 'kosmos postprocess --help'");
        }
    }
    if (optind < argc)
        return cli_usage_error("postprocess: unexpected argument '%s'", argv[optind]);
    return cli_jsonl_run(stdin, stdout, postprocess_line, &cleanup);
}
