/* kosmos run: one image through the whole pipeline on one device, printing one JSON object.
 * This is the local, single-shot path; the farm (broker + workers) runs the same engine. */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "backend.h"
#include "backend_open.h"
#include "cli.h"
#include "cli_args.h"
#include "cli_help.h"
#include "generate.h"
#include "ks_buf.h"
#include "kw_pipeline.h"
#include "model.h"
#include "postprocess.h"
#include "processor.h"
#include "run_image.h"
#include "safetensors.h"
#include "tokenizer.h"

static const char run_help[] =
    "usage: kosmos run --model DIR --image FILE [--prompt TEXT] [--bboxes JSON]\n"
    "                  [--max-new-tokens N] [--min-new-tokens N] [--num-beams K]\n"
    "                  [--temperature T [--top-p P] [--seed S]] [--no-repeat-ngram-size N]\n"
    "                  [--device SPEC] [--precision fp16|fp32|int8] [--kv-cache f32|f16]\n"
    "                  [--gemm-tune ROW[,KEY=VALUE...]] [--tune-db PATH | --no-tune-db]\n"
    "                  [--autorotate]\n"
    "                  [--pixels-from F.safetensors] [--dump F.safetensors] [--draw OUT.png]\n"
    "\n"
    "Runs Kosmos-2 on one image and prints one JSON object:\n"
    "  {\"text\", \"entities\", \"boxes_px\", \"raw\", \"generated_ids\", \"timings\"}\n"
    "entities are [phrase, [start, end], [[x1, y1, x2, y2], ...]] with boxes normalized to\n"
    "[0, 1]; boxes_px holds the same boxes in source-image pixels.\n"
    "\n"
    "  --model DIR             Hugging Face checkpoint folder of microsoft/kosmos-2-patch14-224\n"
    "                          (config.json, model.safetensors, sentencepiece.bpe.model, ...)\n"
    "  --image FILE            {image-formats}\n"
    "                          (HEIF/HEIC/AVIF only where libvips has its HEIF loader)\n"
    "  --prompt TEXT           default \"<grounding>An image of\"\n"
    "  --bboxes JSON           boxes per <phrase> of the prompt, as 'kosmos encode' takes them\n"
    "  --max-new-tokens N      default 128 (or the checkpoint's generation_config.json)\n"
    "  --min-new-tokens N      </s> is forbidden before N new tokens (default 0)\n"
    "  --num-beams K           beam search with K beams (default 1: greedy)\n"
    "  --temperature T         sample with temperature T instead of greedy decoding\n"
    "  --top-p P               nucleus sampling threshold (default 1.0), with --temperature\n"
    "  --seed S                sampling seed (default 0): the same seed gives the same text\n"
    "  --no-repeat-ngram-size N  overrides generation_config.json / config.json (0 = off)\n"
    "  --device SPEC           ref (plain C), cpu, gpu, an index or a name in 'kosmos devices'\n"
    "                          order (default: the first GPU, else the first OpenCL device,\n"
    "                          else ref)\n"
    "  --precision P           fp16 (default: weights stored as half, f32 arithmetic), fp32, or\n"
    "                          int8: the linear layers' weights as int8 with a scale per output\n"
    "                          channel (half their memory), the rest as half; ids may differ\n"
    "                          from fp16 (docs/operations.md)\n"
    "  --kv-cache T            f32 (default) or f16: keys and values cached as half, half the\n"
    "                          memory (OpenCL devices); the same ids on every golden test,\n"
    "                          logits up to ~1e-3 further from the reference\n"
    "  --gemm-tune T           OpenCL devices, for tuning: the matrix products' tunables from\n"
    "                          the row T names (cpu, nvidia or gpu) instead of the device's\n"
    "                          own, then KEY=VALUE overrides by name (rows_nt, rows_xk,\n"
    "                          rows_stage, rows_split, rows_cw, rows_vpw, w_panel, tile_m,\n"
    "                          tile_n, tile_k, wpt_m, wpt_n, rows_max_m, groups_goal,\n"
    "                          rows_order, ln_apart_m), e.g. cpu,rows_cw=8; docs/gemm.md.\n"
    "                          Ignored by --device ref\n"
    "  --tune-db PATH          OpenCL devices: the tuning database 'kosmos tune' writes; its\n"
    "                          entry for the device and driver replaces the built-in tunables\n"
    "                          (default: gemm-tune.json in the cache folder; --gemm-tune wins).\n"
    "                          Tuned tunables never change results; docs/gemm.md, 'Tuning'\n"
    "  --no-tune-db            read no tuning database: the built-in tunables\n"
    "  --autorotate            apply the EXIF orientation (the reference does not)\n"
    "  --pixels-from F         take pixel_values [1,3,224,224] f32 from a safetensors file\n"
    "                          instead of decoding the image (whose size is still read)\n"
    "  --dump F                write pixel_values, vision_post_layernorm, image_embeds,\n"
    "                          prefill_logits_last and generated_ids to a safetensors file\n"
    "  --draw OUT.png          write the image with every box and its phrase drawn on it\n";

typedef struct run_options {
    const char *model_dir, *image_path, *bboxes_json, *device, *pixels_from, *dump_path, *draw_path,
        *gemm_tune, *tune_db;
    const char *prompt;
    bool autorotate;
    ke_dtype precision;
    bool weights_int8; /* --precision int8 */
    bool kv_half;
    int max_new_tokens, min_new_tokens, num_beams, no_repeat_ngram_size; /* -1 = default */
    bool sample;
    double temperature, top_p;
    unsigned long long seed;
    bool top_p_set, seed_set;
} run_options;

/* Returns CLI_EXIT_OK, or the exit code of a usage error after printing it. */
static int parse_run_options(int argc, char **argv, run_options *o)
{
    enum {
        MAX_NEW = 256,
        MIN_NEW,
        BEAMS,
        TEMP,
        TOP_P,
        SEED,
        NGRAM,
        DEVICE,
        PRECISION,
        KV_CACHE,
        GEMM_TUNE,
        TUNE_DB,
        NO_TUNE_DB,
        ROTATE,
        PIXELS,
        DUMP,
        DRAW,
        BBOXES
    };
    static const struct option options[] = {
        {"model", required_argument, NULL, 'm'},
        {"image", required_argument, NULL, 'i'},
        {"prompt", required_argument, NULL, 'p'},
        {"bboxes", required_argument, NULL, BBOXES},
        {"max-new-tokens", required_argument, NULL, MAX_NEW},
        {"min-new-tokens", required_argument, NULL, MIN_NEW},
        {"num-beams", required_argument, NULL, BEAMS},
        {"temperature", required_argument, NULL, TEMP},
        {"top-p", required_argument, NULL, TOP_P},
        {"seed", required_argument, NULL, SEED},
        {"no-repeat-ngram-size", required_argument, NULL, NGRAM},
        {"device", required_argument, NULL, DEVICE},
        {"precision", required_argument, NULL, PRECISION},
        {"kv-cache", required_argument, NULL, KV_CACHE},
        {"gemm-tune", required_argument, NULL, GEMM_TUNE},
        {"tune-db", required_argument, NULL, TUNE_DB},
        {"no-tune-db", no_argument, NULL, NO_TUNE_DB},
        {"autorotate", no_argument, NULL, ROTATE},
        {"pixels-from", required_argument, NULL, PIXELS},
        {"dump", required_argument, NULL, DUMP},
        {"draw", required_argument, NULL, DRAW},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    *o = (run_options){.prompt = "<grounding>An image of",
                       .device = NULL,
                       .precision = KE_DTYPE_F16,
                       .max_new_tokens = -1,
                       .min_new_tokens = -1,
                       .num_beams = -1,
                       .no_repeat_ngram_size = -1,
                       .top_p = 1.0};
    int option;
    while ((option = getopt_long(argc, argv, "+m:i:p:h", options, NULL)) != -1) {
        switch (option) {
        case 'm': o->model_dir = optarg; break;
        case 'i': o->image_path = optarg; break;
        case 'p': o->prompt = optarg; break;
        case BBOXES: o->bboxes_json = optarg; break;
        case MAX_NEW:
            if (!cli_parse_int(optarg, 0, 1 << 20, &o->max_new_tokens))
                return cli_usage_error("run: --max-new-tokens wants an integer >= 0, not '%s'",
                                       optarg);
            break;
        case MIN_NEW:
            if (!cli_parse_int(optarg, 0, 1 << 20, &o->min_new_tokens))
                return cli_usage_error("run: --min-new-tokens wants an integer >= 0, not '%s'",
                                       optarg);
            break;
        case BEAMS:
            if (!cli_parse_int(optarg, 1, 64, &o->num_beams))
                return cli_usage_error("run: --num-beams wants an integer in 1..64, not '%s'",
                                       optarg);
            break;
        case NGRAM:
            if (!cli_parse_int(optarg, 0, 1 << 16, &o->no_repeat_ngram_size))
                return cli_usage_error(
                    "run: --no-repeat-ngram-size wants an integer >= 0, not '%s'", optarg);
            break;
        case TEMP:
            if (!cli_parse_double(optarg, &o->temperature) || o->temperature <= 0)
                return cli_usage_error("run: --temperature wants a number > 0, not '%s'", optarg);
            o->sample = true;
            break;
        case TOP_P:
            if (!cli_parse_double(optarg, &o->top_p) || o->top_p <= 0 || o->top_p > 1)
                return cli_usage_error("run: --top-p wants a number in (0, 1], not '%s'", optarg);
            o->top_p_set = true;
            break;
        case SEED: {
            char *end;
            errno = 0;
            o->seed = strtoull(optarg, &end, 10);
            if (errno || end == optarg || *end || optarg[0] == '-')
                return cli_usage_error("run: --seed wants a non-negative integer, not '%s'",
                                       optarg);
            o->seed_set = true;
            break;
        }
        case DEVICE: o->device = optarg; break;
        case PRECISION:
            if (!ke_precision_parse(optarg, &o->precision, &o->weights_int8))
                return cli_usage_error("run: --precision is fp16, fp32 or int8, not '%s'", optarg);
            break;
        case KV_CACHE:
            if (!ke_kv_cache_parse(optarg, &o->kv_half))
                return cli_usage_error("run: --kv-cache is f32 or f16, not '%s'", optarg);
            break;
        case GEMM_TUNE:
            if (ke_backend_gemm_tune_check(optarg) != KS_OK)
                return cli_usage_error("run: %s", ks_error_message());
            o->gemm_tune = optarg;
            break;
        case TUNE_DB: o->tune_db = optarg; break;
        case NO_TUNE_DB: o->tune_db = ""; break;
        case ROTATE: o->autorotate = true; break;
        case PIXELS: o->pixels_from = optarg; break;
        case DUMP: o->dump_path = optarg; break;
        case DRAW: o->draw_path = optarg; break;
        case 'h': cli_help_print(run_help); return -1;
        default: return cli_usage_error("run: see 'kosmos run --help'");
        }
    }
    if (optind < argc)
        return cli_usage_error("run: unexpected argument '%s'", argv[optind]);
    if (!o->model_dir)
        return cli_usage_error("run: --model DIR is required");
    if (!o->image_path)
        return cli_usage_error("run: --image FILE is required");
    if ((o->top_p_set || o->seed_set) && !o->sample)
        return cli_usage_error("run: --top-p and --seed only apply with --temperature (sampling)");
    if (o->sample && o->num_beams > 1)
        return cli_usage_error("run: sampling (--temperature) and --num-beams > 1 do not combine");
    if (o->min_new_tokens > 0 && o->max_new_tokens >= 0 && o->min_new_tokens > o->max_new_tokens)
        return cli_usage_error("run: --min-new-tokens is larger than --max-new-tokens");
    return CLI_EXIT_OK;
}

static json_t *boxes_px_json(const kt_grounding *g, int width, int height)
{
    json_t *all = json_array();
    for (size_t i = 0; all && i < g->entity_count; i++) {
        json_t *boxes = json_array();
        for (size_t b = 0; boxes && b < g->entities[i].box_count; b++) {
            const double *box = g->entities[i].boxes[b];
            json_array_append_new(boxes, json_pack("[f,f,f,f]", box[0] * width, box[1] * height,
                                                   box[2] * width, box[3] * height));
        }
        json_array_append_new(all, boxes);
    }
    return all;
}

static json_t *ids_json(const int32_t *ids, size_t n)
{
    json_t *array = json_array();
    for (size_t i = 0; array && i < n; i++)
        json_array_append_new(array, json_integer(ids[i]));
    return array;
}

typedef struct run_state {
    kw_model loaded; /* tokenizer + weights */
    ke_model *model; /* = loaded.model */
    ke_backend *backend;
    run_image image;
    kt_bboxes bboxes;
    kt_encoding encoding;
    float *image_embeds, *post_layernorm;
    ke_gen_result result;
    kw_text out; /* decoded text, raw caption, grounding */
} run_state;

static void run_state_fini(run_state *s)
{
    kw_text_fini(&s->out);
    ke_gen_result_fini(&s->result);
    free(s->post_layernorm);
    free(s->image_embeds);
    kt_encoding_fini(&s->encoding);
    kt_bboxes_fini(&s->bboxes);
    run_image_fini(&s->image);
    ke_backend_destroy(&s->backend);
    kw_model_fini(&s->loaded);
}

static ks_status write_dump(const char *path, const run_state *s)
{
    const ke_config *c = &s->model->config;
    const int64_t side = c->vision.image_size / c->vision.patch_size;
    size_t n_ids = s->result.len;
    int64_t *ids = malloc((n_ids ? n_ids : 1) * sizeof *ids);
    ke_st_writer *writer = NULL;
    ks_status st = KS_OK;
    if (!ids || (st = ke_st_writer_new(&writer)) != KS_OK) {
        st = ks_fail(KS_ERR_NOMEM, "out of memory writing %s", path);
        goto done;
    }
    for (size_t i = 0; i < n_ids; i++)
        ids[i] = s->result.ids[i];
    const int64_t pixels[] = {1, c->vision.channels, c->vision.image_size, c->vision.image_size};
    const int64_t post_ln[] = {1, side * side + 1, c->vision.hidden_size};
    const int64_t embeds[] = {1, c->latent_query_num, c->text.embed_dim};
    const int64_t logits[] = {c->text.vocab_size};
    const int64_t id_count[] = {(int64_t)n_ids};
    if ((st = ke_st_writer_add(writer, "pixel_values", KE_ST_F32, 4, pixels, s->image.pixels)) ||
        (st = ke_st_writer_add(writer, "vision_post_layernorm", KE_ST_F32, 3, post_ln,
                               s->post_layernorm)) ||
        (st = ke_st_writer_add(writer, "image_embeds", KE_ST_F32, 3, embeds, s->image_embeds)) ||
        (st = ke_st_writer_add(writer, "prefill_logits_last", KE_ST_F32, 1, logits,
                               s->result.prefill_logits_last)) ||
        (st = ke_st_writer_add(writer, "generated_ids", KE_ST_I64, 1, id_count, ids)) ||
        (st = ke_st_writer_save(writer, path)))
        ks_error_prefix("--dump %s", path);
done:
    ke_st_writer_destroy(&writer);
    free(ids);
    return st;
}

static ks_status run_pipeline(const run_options *o, run_state *s, json_t **out)
{
    double t0 = kw_now_ms();
    ks_status st = kw_model_load(o->model_dir, o->precision, &s->loaded);
    if (st)
        return st;
    s->model = s->loaded.model;
    const ke_config *config = &s->model->config;
    double t_loaded = kw_now_ms();

    st = run_image_load(&s->image, o->image_path, o->pixels_from, o->autorotate,
                        o->draw_path != NULL, config);
    if (st)
        return st;
    if (o->bboxes_json) {
        json_error_t error;
        json_t *value = json_loads(o->bboxes_json, JSON_DECODE_ANY, &error);
        if (!value)
            return ks_fail(KS_ERR_INVALID, "--bboxes is not valid JSON: %s", error.text);
        st = kt_bboxes_from_json(value, &s->bboxes);
        json_decref(value);
        if (st)
            return st;
    }
    st = kt_processor_encode(s->loaded.tokenizer, o->prompt, strlen(o->prompt),
                             o->bboxes_json ? &s->bboxes : NULL, &s->encoding);
    if (st)
        return st;
    double t_preprocessed = kw_now_ms();

    kw_gen_overrides overrides = {.has_max_new_tokens = o->max_new_tokens >= 0,
                                  .max_new_tokens = o->max_new_tokens,
                                  .has_min_new_tokens = o->min_new_tokens >= 0,
                                  .min_new_tokens = o->min_new_tokens,
                                  .has_num_beams = o->num_beams >= 1,
                                  .num_beams = o->num_beams,
                                  .has_no_repeat_ngram_size = o->no_repeat_ngram_size >= 0,
                                  .no_repeat_ngram_size = o->no_repeat_ngram_size,
                                  .do_sample = o->sample,
                                  .has_temperature = true,
                                  .temperature = o->temperature,
                                  .has_top_p = true,
                                  .top_p = o->top_p,
                                  .has_seed = true,
                                  .seed = o->seed};
    ke_gen_params params;
    kw_gen_params(config, &overrides, &params);
    int capacity = (int)s->encoding.len + params.max_new_tokens + 1;
    ke_backend_options backend_options = {.slots = params.num_beams,
                                          .slot_capacity = capacity,
                                          .kv_half = o->kv_half,
                                          .gemm_tune = o->gemm_tune,
                                          .tune_db = o->tune_db,
                                          .weights_int8 = o->weights_int8};
    if ((st = ke_backend_open(s->model, o->device, &backend_options, &s->backend)) != KS_OK)
        return st;
    double t_backend = kw_now_ms(); /* device opened, programs built or loaded, weights uploaded */

    size_t embeds = (size_t)config->latent_query_num * (size_t)config->text.embed_dim;
    int side = config->vision.image_size / config->vision.patch_size;
    size_t post_ln = (size_t)(side * side + 1) * (size_t)config->vision.hidden_size;
    s->image_embeds = malloc(embeds * sizeof(float));
    s->post_layernorm = o->dump_path ? malloc(post_ln * sizeof(float)) : NULL;
    if (!s->image_embeds || (o->dump_path && !s->post_layernorm))
        return ks_fail(KS_ERR_NOMEM, "out of memory for the image features");
    ke_vision_taps taps = {.post_layernorm = s->post_layernorm};
    st = s->backend->ops->encode_images(s->backend, s->image.pixels, 1, s->image_embeds, &taps);
    if (st)
        return st;
    double t_vision = kw_now_ms();

    ke_gen_request request = {.input_ids = s->encoding.input_ids.v,
                              .image_embeds_position_mask = s->encoding.image_embeds_position_mask,
                              .len = s->encoding.len,
                              .image = 0,
                              .params = params,
                              .want_prefill_logits = o->dump_path != NULL};
    ke_gen_stats stats = {0};
    st = ke_generate(s->backend, s->image_embeds, 1, &request, 1, &s->result, &stats);
    if (st)
        return st;

    if ((st = kw_text_from_ids(s->loaded.tokenizer, s->result.ids, s->result.len, &s->out)))
        return st;

    if (o->dump_path && (st = write_dump(o->dump_path, s)))
        return st;
    if (o->draw_path && (st = run_image_draw(&s->image, &s->out.grounding, o->draw_path)))
        return st;

    json_t *result = kt_grounding_to_json(&s->out.grounding);
    if (!result)
        return ks_fail(KS_ERR_NOMEM, "out of memory building the result");
    json_object_set_new(result, "boxes_px",
                        boxes_px_json(&s->out.grounding, s->image.width, s->image.height));
    json_object_set_new(result, "raw",
                        json_stringn(s->out.raw.data ? s->out.raw.data : "", s->out.raw.len));
    json_object_set_new(result, "generated_ids", ids_json(s->result.ids, s->result.len));
    /* device: the backend's device; programs_built / programs_cached: OpenCL programs compiled
     * at start vs loaded from the binary cache (a second start on the same device builds 0);
     * tunables: where the GEMM's came from (null on the reference backend) */
    ke_backend_stats bstats;
    ke_backend_stats_get(s->backend, &bstats);
    json_object_set_new(result, "timings",
                        json_pack("{s:f, s:f, s:f, s:f, s:f, s:f, s:i, s:s, s:i, s:i, s:f}",
                                  "load_ms", t_loaded - t0, "preprocess_ms",
                                  t_preprocessed - t_loaded, "backend_ms",
                                  t_backend - t_preprocessed, "vision_ms", t_vision - t_backend,
                                  "prefill_ms", stats.prefill_ms, "decode_ms", stats.decode_ms,
                                  "new_tokens", (int)s->result.new_tokens, "device",
                                  bstats.device ? bstats.device : "?", "programs_built",
                                  (int)bstats.programs_built, "programs_cached",
                                  (int)bstats.programs_cached, "program_build_ms",
                                  bstats.program_build_ms));
    json_object_set_new(json_object_get(result, "timings"), "tunables",
                        bstats.tunables ? json_string(bstats.tunables) : json_null());
    *out = result;
    return KS_OK;
}

int cmd_run(int argc, char **argv)
{
    run_options options;
    int code = parse_run_options(argc, argv, &options);
    if (code != CLI_EXIT_OK)
        return code < 0 ? CLI_EXIT_OK : code;

    run_state state;
    memset(&state, 0, sizeof state);
    kt_bboxes_init(&state.bboxes);
    kt_encoding_init(&state.encoding);
    kw_text_init(&state.out);
    run_image_init(&state.image);

    json_t *result = NULL;
    ks_error_clear();
    ks_status st = run_pipeline(&options, &state, &result);
    if (st == KS_OK) {
        char *text = json_dumps(result, JSON_COMPACT);
        if (text) {
            puts(text);
            free(text);
        } else {
            st = ks_fail(KS_ERR_NOMEM, "out of memory printing the result");
        }
        json_decref(result);
    }
    if (st != KS_OK)
        fprintf(stderr, "kosmos run: %s\n", ks_error_message()[0] ? ks_error_message() : "failed");
    run_state_fini(&state);
    return st == KS_OK ? CLI_EXIT_OK : CLI_EXIT_FAILED;
}
