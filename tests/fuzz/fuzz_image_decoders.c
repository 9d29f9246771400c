/* libFuzzer target: our own image decoders (worker/image/bmp_decode.c, pnm_decode.c) and the
 * format sniffing of image_formats.c, on any bytes, the way image_decode.c drives them: the
 * header gives a size, the pixel limit is checked, then the pixels are decoded into a buffer of
 * exactly that size. Both decoders see every input (a mutated BMP reaches the PNM parser only
 * once it starts with 'P', but the cost is nothing). Checks beyond the sanitizers: a decode
 * that succeeds writes every output byte (it is run over two differently filled buffers, which
 * must come out equal), and one that fails leaves a message. No libvips here. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "bmp_decode.h"
#include "image_formats.h"
#include "ks_error.h"
#include "pnm_decode.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Far above any seed, low enough that huge claimed sizes do not slow the run down. */
#define MAX_PIXELS ((uint64_t)1 << 16)

typedef struct decoder {
    ks_status (*size)(const uint8_t *bytes, size_t len, uint64_t *width, uint64_t *height);
    ks_status (*decode)(const uint8_t *bytes, size_t len, uint8_t *rgb);
} decoder;

static void run(const decoder *d, const uint8_t *data, size_t size)
{
    uint64_t w = 0, h = 0;
    ks_error_clear();
    if (d->size(data, size, &w, &h) != KS_OK) {
        if (!ks_error_message()[0])
            abort();
        return;
    }
    if (w == 0 || h == 0)
        abort(); /* the decoders refuse empty images */
    if (w > MAX_PIXELS || h > MAX_PIXELS || w * h > MAX_PIXELS)
        return;
    size_t n = (size_t)(w * h * 3);
    uint8_t *a = malloc(n), *b = malloc(n);
    if (!a || !b)
        abort();
    memset(a, 0x00, n);
    memset(b, 0xFF, n);
    ks_status sa = d->decode(data, size, a), sb = d->decode(data, size, b);
    if (sa != sb || (sa == KS_OK && memcmp(a, b, n) != 0) ||
        (sa != KS_OK && !ks_error_message()[0]))
        abort();
    free(a);
    free(b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const decoder bmp = {ki_bmp_size, ki_bmp_decode}, pnm = {ki_pnm_size, ki_pnm_decode};
    const ki_format *f = ki_format_sniff(data, size, false);
    const ki_format *guess = ki_format_sniff(data, size, true);
    if ((f && !ki_format_by_name(f->name)) || (guess && strcmp(guess->name, "tga") != 0))
        abort();
    run(&bmp, data, size);
    run(&pnm, data, size);
    return 0;
}
