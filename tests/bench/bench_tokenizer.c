/* bench_tokenizer: tokenizer encode throughput in MB/s (a benchmark, never a test).
 *
 *   bench_tokenizer [--model DIR] [--input FILE | --dump-corpus FILE] [--seconds S]
 *
 * Encodes every line of FILE (default: 4 MB of text made from the model's own dictionary,
 * seeded, so runs compare) repeatedly for at least S seconds and prints MB/s and tokens/s.
 * tests/bench/tokenizer_vs_hf.py runs this and Hugging Face's tokenizer on the same text and
 * prints the ratio. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ks_buf.h"
#include "ks_file.h"
#include "tokenizer.h"

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Sentences of random dictionary pieces, 8..40 words a line: text shaped like prompts. */
static ks_status make_corpus(const kt_tokenizer *t, size_t bytes, ks_buf *out)
{
    unsigned long long state = 0x9E3779B97F4A7C15ull;
    size_t vocab = (size_t)kt_tokenizer_mask_id(t);
    while (out->len < bytes) {
        state = state * 6364136223846793005ull + 1442695040888963407ull;
        int words = 8 + (int)((state >> 33) % 33);
        for (int w = 0; w < words; w++) {
            state = state * 6364136223846793005ull + 1442695040888963407ull;
            /* Favour frequent pieces (low ids), as real text does. */
            double u = (double)(state >> 11) / 9007199254740992.0;
            size_t id = 4 + (size_t)((double)(vocab - 4) * u * u * u);
            const char *piece = kt_tokenizer_token_text(t, (int32_t)id);
            if (!strncmp(piece, "\xE2\x96\x81", 3))
                piece += 3;
            ks_status st = ks_buf_printf(out, "%s%s", w ? " " : "", piece);
            if (st)
                return st;
        }
        ks_status st = ks_buf_append_str(out, ".\n");
        if (st)
            return st;
    }
    return KS_OK;
}

int main(int argc, char **argv)
{
    const char *model_dir = KOSMOS_TEST_DATA_DIR "/kosmos2";
    const char *input = NULL, *dump = NULL;
    double seconds = 3.0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--model") && i + 1 < argc)
            model_dir = argv[++i];
        else if (!strcmp(argv[i], "--input") && i + 1 < argc)
            input = argv[++i];
        else if (!strcmp(argv[i], "--dump-corpus") && i + 1 < argc)
            dump = argv[++i];
        else if (!strcmp(argv[i], "--seconds") && i + 1 < argc)
            seconds = atof(argv[++i]);
        else {
            fprintf(stderr,
                    "usage: bench_tokenizer [--model DIR] [--input FILE | --dump-corpus FILE] "
                    "[--seconds S]\n");
            return 2;
        }
    }
    kt_tokenizer *t = NULL;
    if (kt_tokenizer_new(model_dir, &t) != KS_OK) {
        fprintf(stderr, "bench_tokenizer: %s\n", ks_error_message());
        return 1;
    }
    ks_buf corpus;
    ks_buf_init(&corpus);
    ks_status st;
    if (input) {
        char *data;
        size_t len;
        st = ks_file_read(input, (size_t)1 << 30, &data, &len);
        if (st == KS_OK) {
            st = ks_buf_append(&corpus, data, len);
            free(data);
        }
    } else {
        st = make_corpus(t, (size_t)4 << 20, &corpus);
    }
    if (st != KS_OK) {
        fprintf(stderr, "bench_tokenizer: %s\n", ks_error_message());
        return 1;
    }

    if (dump) {
        FILE *f = fopen(dump, "wb");
        if (!f || fwrite(corpus.data, 1, corpus.len, f) != corpus.len || fclose(f) != 0) {
            fprintf(stderr, "bench_tokenizer: cannot write %s\n", dump);
            return 1;
        }
        return 0;
    }

    kt_ids ids;
    kt_ids_init(&ids);
    size_t rounds = 0, tokens = 0;
    double start = now_seconds(), elapsed = 0;
    do {
        const char *line = corpus.data, *end = corpus.data + corpus.len;
        while (line < end) {
            const char *newline = memchr(line, '\n', (size_t)(end - line));
            size_t len = newline ? (size_t)(newline - line) : (size_t)(end - line);
            ids.len = 0;
            if (kt_tokenizer_encode(t, line, len, &ids) != KS_OK) {
                fprintf(stderr, "bench_tokenizer: %s\n", ks_error_message());
                return 1;
            }
            tokens += ids.len;
            line += len + 1;
        }
        rounds++;
        elapsed = now_seconds() - start;
    } while (elapsed < seconds);

    double megabytes = (double)corpus.len * (double)rounds / 1e6;
    printf("{\"bench\": \"tokenizer_encode\", \"bytes\": %zu, \"rounds\": %zu, \"seconds\": %.3f, "
           "\"mb_per_s\": %.2f, \"tokens_per_s\": %.0f}\n",
           corpus.len, rounds, elapsed, megabytes / elapsed, (double)tokens / elapsed);
    kt_ids_fini(&ids);
    ks_buf_fini(&corpus);
    kt_tokenizer_destroy(&t);
    return 0;
}
