/* pixels: Pillow-bicubic resize to 224x224, rescale and normalize (see pixels.h). */
#include "pixels.h"

#include <time.h>

#include "pil_resize.h"

const float ki_image_mean[3] = {0.48145466f, 0.4578275f, 0.40821073f};
const float ki_image_std[3] = {0.26862954f, 0.26130258f, 0.27577711f};

void ki_normalize(const uint8_t *rgb224, float *values)
{
    const size_t plane = (size_t)KI_IMAGE_SIZE * KI_IMAGE_SIZE;
    for (size_t i = 0; i < plane; i++) {
        for (int c = 0; c < 3; c++) {
            /* rescale_factor is the double nearest 1/255; the product is rounded to float32,
             * then a float32 subtraction and a float32 division (FLT_EVAL_METHOD 0 on x86-64
             * and aarch64: float expressions are evaluated in float). */
            float x = (float)((double)rgb224[i * 3 + (size_t)c] * 0.00392156862745098);
            values[(size_t)c * plane + i] = (x - ki_image_mean[c]) / ki_image_std[c];
        }
    }
}

ks_status ki_pixels_from_image(const ki_image *img, ki_pixels *out)
{
    ks_status st = ki_pil_resize_bicubic(ki_image_rgb(img), ki_image_width(img),
                                         ki_image_height(img), 3, out->rgb, KI_IMAGE_SIZE,
                                         KI_IMAGE_SIZE);
    if (st != KS_OK) {
        return st;
    }
    out->src_width = ki_image_width(img);
    out->src_height = ki_image_height(img);
    ki_normalize(out->rgb, out->values);
    return KS_OK;
}

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

ks_status ki_pixels_from_buffer(const void *bytes, size_t len, const ki_decode_params *params,
                                ki_pixels *out, double *decode_ms)
{
    ki_image_reader *reader = NULL;
    ki_resizer *resizer = NULL;
    double decoding = 0, t0 = now_ms();
    ks_status st = ki_image_reader_new(bytes, len, params, &reader);
    if (st == KS_OK) {
        out->src_width = ki_image_reader_width(reader);
        out->src_height = ki_image_reader_height(reader);
        decoding = now_ms() - t0;
        st = ki_resizer_new(out->src_width, out->src_height, 3, out->rgb, KI_IMAGE_SIZE,
                            KI_IMAGE_SIZE, &resizer);
    }
    for (int y = 0; st == KS_OK && y < out->src_height; y++) {
        const uint8_t *row;
        double t = now_ms();
        st = ki_image_reader_row(reader, &row);
        decoding += now_ms() - t;
        if (st == KS_OK) {
            st = ki_resizer_push(resizer, y, row);
        }
    }
    ki_resizer_destroy(&resizer);
    ki_image_reader_destroy(&reader);
    if (st == KS_OK) {
        ki_normalize(out->rgb, out->values);
    }
    if (decode_ms) {
        *decode_ms = decoding;
    }
    return st;
}
