/* run_image: see run_image.h. */
#include "run_image.h"

#include <stdlib.h>
#include <string.h>

#include "draw.h"
#include "image_decode.h"
#include "ks_file.h"
#include "kw_pipeline.h"
#include "pixels.h"
#include "safetensors.h"

/* Far above any real photo; the decoder's own pixel limit guards what the header claims. */
#define RUN_IMAGE_MAX_FILE_BYTES ((size_t)1 << 30)

void run_image_init(run_image *img) { memset(img, 0, sizeof *img); }

void run_image_fini(run_image *img)
{
    free(img->pixels);
    ki_image_destroy(&img->decoded);
    run_image_init(img);
}

ks_status run_image_load(run_image *img, const char *path, const char *pixels_from, bool autorotate,
                         bool keep_decoded, const ke_config *config)
{
    const ke_vision_config *v = &config->vision;
    if (!pixels_from && (v->image_size != KI_IMAGE_SIZE || v->channels != 3))
        return ks_fail(KS_ERR_UNSUPPORTED,
                       "config.json asks for %dx%d images with %d channels; the image pipeline "
                       "makes %dx%d RGB (use --pixels-from for other shapes)",
                       v->image_size, v->image_size, v->channels, KI_IMAGE_SIZE, KI_IMAGE_SIZE);
    char *bytes = NULL;
    size_t len = 0;
    ks_status st = ks_file_read(path, RUN_IMAGE_MAX_FILE_BYTES, &bytes, &len);
    if (st)
        return st;
    ki_decode_params params;
    ki_decode_params_default(&params);
    params.autorotate = autorotate;

    if (pixels_from) {
        const int64_t shape[4] = {1, v->channels, v->image_size, v->image_size};
        st = ke_st_read_f32(pixels_from, "pixel_values", 4, shape, &img->pixels);
        if (st == KS_OK && !keep_decoded)
            st = ki_image_probe(bytes, len, &img->width, &img->height, NULL);
        if (st == KS_OK && keep_decoded)
            st = ki_image_decode(bytes, len, &params, &img->decoded);
    } else {
        /* The same decode + preprocess as kosmos-worker (kw_pipeline). */
        kw_image_params image_params = {.autorotate = autorotate, .keep_decoded = true};
        kw_image decoded;
        st = kw_image_decode(&decoded, bytes, len, &image_params, config);
        if (st == KS_OK) {
            img->pixels = decoded.pixels;
            img->decoded = decoded.decoded;
        }
    }
    if (st == KS_OK && img->decoded) {
        img->width = ki_image_width(img->decoded);
        img->height = ki_image_height(img->decoded);
    }
    if (st == KS_OK && !keep_decoded)
        ki_image_destroy(&img->decoded);
    if (st)
        ks_error_prefix("%s", st == KS_ERR_IO ? "reading the image" : path);
    free(bytes);
    return st;
}

ks_status run_image_draw(const run_image *img, const kt_grounding *grounding, const char *out_path)
{
    size_t count = 0;
    for (size_t i = 0; i < grounding->entity_count; i++)
        count += grounding->entities[i].box_count;
    ki_box *boxes = calloc(count ? count : 1, sizeof *boxes);
    if (!boxes)
        return ks_fail(KS_ERR_NOMEM, "out of memory drawing %zu boxes", count);
    size_t at = 0;
    for (size_t i = 0; i < grounding->entity_count; i++) {
        const kt_entity *e = &grounding->entities[i];
        for (size_t b = 0; b < e->box_count; b++, at++)
            boxes[at] = (ki_box){.label = e->phrase,
                                 .entity = (int)i,
                                 .x1 = e->boxes[b][0],
                                 .y1 = e->boxes[b][1],
                                 .x2 = e->boxes[b][2],
                                 .y2 = e->boxes[b][3]};
    }
    ks_status st = ki_draw_boxes_file(img->decoded, boxes, count, NULL, out_path);
    free(boxes);
    return st;
}
