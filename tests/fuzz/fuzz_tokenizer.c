/* libFuzzer target: the tokenizer. Any bytes are encoded (malformed UTF-8 must be refused
 * cleanly, valid text must always encode), every id must be in range, and the ids must decode
 * under all four decode options. The same bytes, read as 16-bit ids, are decoded too. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "ks_utf8.h"
#include "tokenizer.h"

static kt_tokenizer *tokenizer;

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    if (kt_tokenizer_new(KOSMOS_TEST_DATA_DIR "/kosmos2", &tokenizer) != KS_OK) {
        fprintf(stderr, "fuzz_tokenizer: %s\n", ks_error_message());
        abort();
    }
    return 0;
}

static void decode_all_ways(const int32_t *ids, size_t n)
{
    for (int skip = 0; skip < 2; skip++) {
        for (int clean = 0; clean < 2; clean++) {
            kt_decode_options options = {.skip_special_tokens = skip, .clean_up_spaces = clean};
            ks_buf text;
            ks_buf_init(&text);
            if (kt_tokenizer_decode(tokenizer, ids, n, &options, &text) != KS_OK)
                abort(); /* every in-range id sequence decodes */
            if (!ks_utf8_valid(text.data ? text.data : "", text.len))
                abort();
            ks_buf_fini(&text);
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *text = (const char *)data;
    size_t vocab = kt_tokenizer_vocab_size(tokenizer);
    kt_ids ids;
    kt_ids_init(&ids);
    ks_status st = kt_tokenizer_encode(tokenizer, text, size, &ids);
    if ((st == KS_OK) != ks_utf8_valid(text, size))
        abort(); /* valid UTF-8 always encodes; invalid never does */
    for (size_t i = 0; i < ids.len; i++)
        if (ids.v[i] < 0 || (size_t)ids.v[i] >= vocab)
            abort();
    if (st == KS_OK)
        decode_all_ways(ids.v, ids.len);
    kt_ids_fini(&ids);

    size_t count = size / 2;
    int32_t *raw = malloc((count ? count : 1) * sizeof *raw);
    if (!raw)
        return 0;
    for (size_t i = 0; i < count; i++)
        raw[i] = (int32_t)(((uint32_t)data[2 * i] | (uint32_t)data[2 * i + 1] << 8) % vocab);
    decode_all_ways(raw, count);
    free(raw);
    return 0;
}
