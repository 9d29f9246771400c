/* bench_cl_attention: speed of kernels/flash_attention.cl against the kernels it replaces, on
 * Kosmos-2's attention shapes, in one process (a benchmark, never a test; correctness is
 * test_cl_flash's job).
 *
 *   bench_cl_attention [--device SPEC] [--batch LIST] [--seconds S] [--tiles LIST]
 *                      [--gpu-order]
 *
 *   --batch 1,8        images / prompts per launch (default)
 *   --seconds 1        minimum time per measurement (at least one run after a warm-up)
 *   --tiles 0x0,16x64  flash blocks x tiles to try (BLOCK_Q x BLOCK_K; 0x0 = the device's)
 *   --gpu-order        on a CPU: paged_attention and the flash order that follows it, as a GPU
 *                      runs them, instead of paged_attention_serial's
 *
 *   vision     ViT-L/14: 257 rows per image, 16 heads of 64, Q/K/V fused (stride 3072):
 *              attention.cl vs flash_attention
 *   resampler  64 latent queries over 257 + 64 rows per image, 32 heads of 64, 5.17's causal
 *              rows: attention.cl vs flash_attention
 *   prefill    prompts of 71 tokens over the paged f32 KV cache, 32 heads of 64:
 *              paged_attention (the device's variant) vs flash_attention_paged
 *
 * For each it prints milliseconds per launch (wall), CPU-milliseconds of the process per launch
 * (PoCL's threads are ours: steadier than wall time on a shared machine) and old / new for
 * both. The buffers hold random values; only the shapes matter. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backend_cl_ops.h"
#include "kc_context.h"
#include "kc_device.h"
#include "model.h"

#define PAGE 16 /* KV-cache rows per page, as backend_cl.c */
#define MAX_TILES 8

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static double cpu_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void die(const char *what)
{
    fprintf(stderr, "bench_cl_attention: %s: %s\n", what, ks_error_message());
    exit(1);
}

static cl_mem buffer(kc_context *ctx, size_t bytes, const void *host)
{
    cl_mem m = NULL;
    if (kc_context_buffer(ctx, CL_MEM_READ_WRITE, bytes, host, &m) != KS_OK)
        die("buffer");
    return m;
}

static cl_mem random_buffer(kc_context *ctx, size_t n, uint64_t *rng)
{
    float *x = malloc(n * sizeof *x);
    if (!x)
        die("out of memory");
    for (size_t i = 0; i < n; i++) {
        *rng ^= *rng << 13;
        *rng ^= *rng >> 7;
        *rng ^= *rng << 17;
        x[i] = (float)((double)(*rng >> 11) * 0x1p-52 - 0.5);
    }
    cl_mem m = buffer(ctx, n * sizeof *x, x);
    free(x);
    return m;
}

/* One launch of the case: old kernel (flash false) or flash. */
typedef struct bench_case {
    ke_cl_ops *ops;
    bool paged;
    ke_cl_attention_args att;
    ke_cl_paged_attention_args pat;
    const cl_int *rows; /* host rows for ke_cl_flash_blocks */
    size_t n_rows;
    cl_mem blocks;
    size_t n_blocks;
} bench_case;

static void launch(kc_context *ctx, bench_case *c, bool flash)
{
    ks_status st = flash
                       ? (c->paged
                              ? ke_cl_flash_attention_paged(c->ops, &c->pat, c->blocks, c->n_blocks)
                              : ke_cl_flash_attention(c->ops, &c->att, c->blocks, c->n_blocks))
                       : (c->paged ? ke_cl_paged_attention(c->ops, NULL, &c->pat)
                                   : ke_cl_attention(c->ops, &c->att));
    if (st != KS_OK || kc_context_finish(ctx) != KS_OK)
        die(flash ? "flash launch" : "launch");
}

/* Milliseconds per launch, wall and CPU, over at least `seconds` after one warm-up. */
static void measure(kc_context *ctx, bench_case *c, bool flash, double seconds, double *wall_ms,
                    double *cpu_ms)
{
    launch(ctx, c, flash);
    int n = 0;
    double t0 = now(), c0 = cpu_now();
    do {
        launch(ctx, c, flash);
        n++;
    } while (now() - t0 < seconds);
    *wall_ms = (now() - t0) * 1e3 / n;
    *cpu_ms = (cpu_now() - c0) * 1e3 / n;
}

static void cut_blocks(kc_context *ctx, bench_case *c)
{
    cl_int *blocks = malloc(c->n_rows * 4 * sizeof(cl_int));
    if (!blocks)
        die("out of memory");
    c->n_blocks = ke_cl_flash_blocks(c->rows, c->n_rows, ke_cl_flash_block_q(c->ops), blocks);
    if (kc_context_write(ctx, c->blocks, true, 0, c->n_blocks * 4 * sizeof(cl_int), blocks, NULL) !=
        KS_OK)
        die("writing blocks");
    free(blocks);
}

static void run_case(kc_context *ctx, const char *name, int batch, bench_case *c,
                     const int (*tiles)[2], int n_tiles, double seconds)
{
    double old_wall, old_cpu;
    measure(ctx, c, false, seconds, &old_wall, &old_cpu);
    for (int t = 0; t < n_tiles; t++) {
        ke_cl_flash_force_tiles(c->ops, tiles[t][0], tiles[t][1]);
        cut_blocks(ctx, c);
        double wall, cpu;
        measure(ctx, c, true, seconds, &wall, &cpu);
        char tile[32];
        if (tiles[t][0] > 0)
            snprintf(tile, sizeof tile, "%dx%d", tiles[t][0], tiles[t][1]);
        else
            snprintf(tile, sizeof tile, "device");
        printf("%-10s %5d %-8s %10.3f %10.3f %10.3f %10.3f %7.2f %7.2f\n", name, batch, tile,
               old_wall, wall, old_cpu, cpu, old_wall / wall, old_cpu / cpu);
        fflush(stdout);
    }
    ke_cl_flash_force_tiles(c->ops, 0, 0);
}

static bool parse_list(const char *text, int *out, int max, int *n)
{
    *n = 0;
    for (const char *p = text; *p && *n < max;) {
        char *end;
        long v = strtol(p, &end, 10);
        if (end == p || v < 1 || v > 4096)
            return false;
        out[(*n)++] = (int)v;
        p = *end == ',' ? end + 1 : end;
        if (*end && *end != ',')
            return false;
    }
    return *n > 0;
}

int main(int argc, char **argv)
{
    const char *spec = "";
    int batches[8] = {1, 8}, n_batches = 2, tiles[MAX_TILES][2] = {{0, 0}}, n_tiles = 1;
    double seconds = 1.0;
    bool gpu_order = false;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--gpu-order")) {
            gpu_order = true;
            continue;
        }
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(argv[i], "--device") && v) {
            spec = v;
        } else if (!strcmp(argv[i], "--batch") && v) {
            if (!parse_list(v, batches, 8, &n_batches))
                return fprintf(stderr, "--batch wants sizes like 1,8\n"), 2;
        } else if (!strcmp(argv[i], "--seconds") && v) {
            seconds = atof(v);
        } else if (!strcmp(argv[i], "--tiles") && v) {
            n_tiles = 0;
            for (const char *p = v; *p && n_tiles < MAX_TILES;) {
                int q, k, used;
                if (sscanf(p, "%dx%d%n", &q, &k, &used) != 2 || q < 0 || k < 0)
                    return fprintf(stderr, "--tiles wants BQxBK,... like 16x64\n"), 2;
                tiles[n_tiles][0] = q;
                tiles[n_tiles++][1] = k;
                p += used;
                p += *p == ',';
            }
        } else {
            fprintf(stderr, "usage: bench_cl_attention [--device SPEC] [--batch 1,8] "
                            "[--seconds S] [--tiles 0x0,16x64] [--gpu-order]\n");
            return 2;
        }
        i++;
    }
    kc_device_list *list = NULL;
    size_t index = 0;
    if (kc_device_list_new(&list) != KS_OK || kc_device_list_select(list, spec, &index) != KS_OK)
        die("device");
    const kc_device_info *dev = kc_device_list_get(list, index);
    kc_context *ctx = NULL;
    if (kc_context_new(dev, NULL, &ctx) != KS_OK)
        die("context");
    ke_cl_ops *ops = NULL;
    if (ke_cl_ops_new(ctx, KE_DTYPE_F16, &ops) != KS_OK)
        die("ops");
    if (gpu_order)
        ke_cl_ops_force_serial_attention(ops, false);
    printf("device '%s'; old kernels: attention.cl, %s\n", dev->name,
           ke_cl_ops_paged_attention_kernel(ops));
    printf("%-10s %5s %-8s %10s %10s %10s %10s %7s %7s\n", "case", "batch", "tiles", "old ms",
           "flash ms", "old cpu", "flash cpu", "wall x", "cpu x");
    uint64_t rng = 0x9e3779b97f4a7c15ull;
    const int hd = 64, vheads = 16, theads = 32, seq = 257, lq = 64, prompt = 71;
    const size_t vw = (size_t)vheads * hd, tw = (size_t)theads * hd, kvr = (size_t)seq + lq;
    for (int bi = 0; bi < n_batches; bi++) {
        size_t n = (size_t)batches[bi];
        /* vision: fused QKV rows, every row of an image sees its 257 keys */
        size_t rows = n * seq;
        cl_int *vr = malloc(rows * 4 * sizeof(cl_int));
        for (size_t r = 0; r < rows; r++)
            memcpy(vr + 4 * r, (cl_int[4]){(cl_int)r, (cl_int)(r / seq * seq), seq, 0},
                   sizeof(cl_int[4]));
        cl_mem qkv = random_buffer(ctx, rows * 3 * vw, &rng),
               out = buffer(ctx, rows * vw * 4, NULL);
        cl_mem mrows = buffer(ctx, rows * 4 * sizeof(cl_int), vr);
        cl_mem mblocks = buffer(ctx, rows * 4 * sizeof(cl_int), NULL);
        bench_case c = {.ops = ops,
                        .rows = vr,
                        .n_rows = rows,
                        .blocks = mblocks,
                        .att = {.q = qkv,
                                .q_stride = 3 * vw,
                                .k = qkv,
                                .v = qkv,
                                .k_off = vw,
                                .v_off = 2 * vw,
                                .kv_stride = 3 * vw,
                                .rows = mrows,
                                .n_rows = rows,
                                .heads = vheads,
                                .head_dim = hd,
                                .scale = 0.125f,
                                .out = out,
                                .out_stride = vw}};
        run_case(ctx, "vision", (int)n, &c, (const int(*)[2])tiles, n_tiles, seconds);
        kc_context_buffer_free(ctx, &qkv);
        kc_context_buffer_free(ctx, &out);
        kc_context_buffer_free(ctx, &mrows);
        kc_context_buffer_free(ctx, &mblocks);
        free(vr);

        /* resampler: the latent queries over each image's 321 K/V rows, causal (5.17) */
        rows = n * lq;
        cl_int *rr = malloc(rows * 4 * sizeof(cl_int));
        for (size_t i = 0; i < n; i++)
            for (int r = 0; r < lq; r++)
                memcpy(rr + 4 * (i * lq + (size_t)r), (cl_int[4]){r, (cl_int)(i * kvr), r + 1, 0},
                       sizeof(cl_int[4]));
        cl_mem q = random_buffer(ctx, (size_t)lq * tw, &rng);
        cl_mem kv = random_buffer(ctx, n * kvr * 2 * tw, &rng);
        out = buffer(ctx, rows * tw * 4, NULL);
        mrows = buffer(ctx, rows * 4 * sizeof(cl_int), rr);
        mblocks = buffer(ctx, rows * 4 * sizeof(cl_int), NULL);
        c = (bench_case){.ops = ops,
                         .rows = rr,
                         .n_rows = rows,
                         .blocks = mblocks,
                         .att = {.q = q,
                                 .q_stride = tw,
                                 .k = kv,
                                 .v = kv,
                                 .v_off = tw,
                                 .kv_stride = 2 * tw,
                                 .rows = mrows,
                                 .n_rows = rows,
                                 .heads = theads,
                                 .head_dim = hd,
                                 .scale = 0.125f,
                                 .out = out,
                                 .out_stride = tw}};
        run_case(ctx, "resampler", (int)n, &c, (const int(*)[2])tiles, n_tiles, seconds);
        cl_mem *rb[] = {&q, &kv, &out, &mrows, &mblocks};
        for (size_t i = 0; i < 5; i++)
            kc_context_buffer_free(ctx, rb[i]);
        free(rr);

        /* prefill: prompts of 71 tokens, each slot's pages in order */
        size_t T = n * prompt;
        int max_pages = (prompt + PAGE - 1) / PAGE;
        cl_int *pages = malloc(n * (size_t)max_pages * sizeof(cl_int));
        cl_int4 *tok = malloc(T * sizeof *tok);
        cl_int *pr = malloc(T * 4 * sizeof(cl_int));
        for (size_t i = 0; i < n * (size_t)max_pages; i++)
            pages[i] = (cl_int)i;
        for (size_t s = 0, t = 0; s < n; s++)
            for (int i = 0; i < prompt; i++, t++) {
                cl_int row = pages[s * (size_t)max_pages + (size_t)(i / PAGE)] * PAGE + i % PAGE;
                tok[t] = (cl_int4){{row, (cl_int)s, i + 1, 0}};
                memcpy(pr + 4 * t, (cl_int[4]){(cl_int)t, (cl_int)s, i + 1, 0}, sizeof(cl_int[4]));
            }
        size_t pool = n * (size_t)max_pages * PAGE * tw;
        q = random_buffer(ctx, T * tw, &rng);
        cl_mem kp = random_buffer(ctx, pool, &rng), vp = random_buffer(ctx, pool, &rng);
        cl_mem mt = buffer(ctx, T * sizeof *tok, tok);
        cl_mem mp = buffer(ctx, n * (size_t)max_pages * sizeof(cl_int), pages);
        out = buffer(ctx, T * tw * 4, NULL);
        cl_mem ms = buffer(ctx, T * (size_t)theads * sizeof(cl_float2), NULL);
        mblocks = buffer(ctx, T * 4 * sizeof(cl_int), NULL);
        c = (bench_case){.ops = ops,
                         .paged = true,
                         .rows = pr,
                         .n_rows = T,
                         .blocks = mblocks,
                         .pat = {.q = q,
                                 .kpool = kp,
                                 .vpool = vp,
                                 .tokrow = mt,
                                 .pages = mp,
                                 .max_pages = max_pages,
                                 .page_tokens = PAGE,
                                 .out = out,
                                 .out_stats = ms,
                                 .n_tokens = T,
                                 .heads = theads,
                                 .head_dim = hd,
                                 .scale = 0.125f}};
        run_case(ctx, "prefill", (int)n, &c, (const int(*)[2])tiles, n_tiles, seconds);
        cl_mem *pb[] = {&q, &kp, &vp, &mt, &mp, &out, &ms, &mblocks};
        for (size_t i = 0; i < 8; i++)
            kc_context_buffer_free(ctx, pb[i]);
        free(pages), free(tok), free(pr);
    }
    ke_cl_ops_destroy(&ops);
    kc_context_destroy(&ctx);
    kc_device_list_destroy(&list);
    return 0;
}
