/* test_image: worker/image (kosmos_image) against the reference.
 *
 * Fixtures: tests/golden/pixels/<file>.safetensors from tests/golden/make_pixel_fixtures.py
 * (transformers 5.17.0's pixel_values and PIL's 224x224 bicubic resize) for every demo image in
 * tests/data/kosmos2/images and every test image in tests/data/images (make_mode_images.py).
 * Checks: the Pillow resize bit for bit (decoding included); pixel_values within one 8-bit step
 * of transformers (its torch resize differs from Pillow by at most one step); the mode
 * conversions; bad input (truncated, empty, not an image, a huge header); the pixel limit;
 * the memory a large image costs (measured as this process's peak resident size); decoding
 * from several threads; and drawing boxes. Bad images are made at run time from the
 * good ones. Safetensors are read with the test-only test_safetensors_min.h.
 *
 * The formats of our own decoders and the YUV formats: every file of tests/data/images/bmp,
 * pnm and heif (and small.avif) against tests/golden/decoded/<file>.safetensors from
 * tests/golden/make_format_images.py, Pillow's decoded RGB: BMP and PNM bit for bit, HEIF and
 * AVIF within the steps docs/submit.md states; the format list (image_formats.h) against the
 * files: every accepted format decodes from a test file whose extension names it; the refused
 * formats; every length and header byte of the BMP and PNM files. */
#include <dirent.h>
#include <math.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <vips/vips.h>

#include "draw.h"
#include "image_decode.h"
#include "image_formats.h"
#include "ks_file.h"
#include "pil_resize.h"
#include "pixels.h"
#include "test_safetensors_min.h"
#include "test_skip.h"

#define DEMO_DIR KOSMOS_TEST_DATA_DIR "/kosmos2/images"
#define MODE_DIR KOSMOS_TEST_DATA_DIR "/images"
#define FIXTURE_DIR KOSMOS_GOLDEN_DIR "/pixels"
#define DECODED_DIR KOSMOS_GOLDEN_DIR "/decoded"
#define NPIX (3 * KI_IMAGE_SIZE * KI_IMAGE_SIZE)
#define MAX_FILE ((size_t)64 << 20)

static char *read_all(const char *path, size_t *len)
{
    char *data = NULL;
    if (ks_file_read(path, MAX_FILE, &data, len) != KS_OK) {
        fail_msg("%s", ks_error_message());
    }
    return data;
}

/* Sorted names of the regular files in dir with an image suffix. */
static size_t list_images(const char *dir, char names[][64], size_t max)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    size_t n = 0;
    assert_non_null(d);
    while ((e = readdir(d)) && n < max) {
        const char *dot = strrchr(e->d_name, '.');
        if (e->d_name[0] == '.' || !dot || strcmp(dot, ".py") == 0 || strlen(e->d_name) >= 64) {
            continue;
        }
        strcpy(names[n++], e->d_name);
    }
    closedir(d);
    qsort(names, n, sizeof names[0], (int (*)(const void *, const void *))strcmp);
    return n;
}

/* One image against its fixture: PIL resize bit-exact, pixel_values within one step. With
 * `exact` false (AVIF: libheif and Pillow's libavif convert YUV to RGB differently) only the
 * decode and the size are checked; the differences are printed. */
static void check_image(const char *dir, const char *name, bool demo, bool exact)
{
    char path[512], fix[512];
    size_t len = 0;
    st_min st;
    ki_pixels *px = calloc(1, sizeof *px);
    float *ref = malloc(NPIX * sizeof(float));
    assert_non_null(px);
    assert_non_null(ref);
    snprintf(path, sizeof path, "%s/%s", dir, name);
    snprintf(fix, sizeof fix, "%s/%s.safetensors", FIXTURE_DIR, name);
    if (st_min_open(&st, fix) != 0) {
        fail_msg("%s (run tests/golden/make_pixel_fixtures.py)", ks_error_message());
    }
    char *bytes = read_all(path, &len);
    ks_status rc = ki_pixels_from_buffer(bytes, len, NULL, px, NULL);
    if (rc != KS_OK) {
        fail_msg("%s: %s", name, ks_error_message());
    }
    assert_int_equal(px->src_width, atoi(st_min_meta(&st, "source_width")));
    assert_int_equal(px->src_height, atoi(st_min_meta(&st, "source_height")));

    const uint8_t *pil = st_min_tensor(&st, "pil_resize", "U8", NPIX);
    assert_non_null(pil);
    size_t resize_diff = 0;
    int resize_max = 0;
    for (size_t i = 0; i < NPIX; i++) {
        int d = abs((int)px->rgb[i] - (int)pil[i]);
        resize_diff += d != 0;
        resize_max = d > resize_max ? d : resize_max;
    }
    if (demo) {
        const void *pv = st_min_tensor(&st, "pixel_values", "F32", NPIX);
        assert_non_null(pv);
        memcpy(ref, pv, NPIX * sizeof(float)); /* little-endian host, unaligned source */
    } else {
        const uint8_t *steps = st_min_tensor(&st, "pixel_values_u8", "U8", NPIX);
        uint8_t *hwc = malloc(NPIX);
        assert_non_null(steps);
        assert_non_null(hwc);
        for (size_t c = 0; c < 3; c++) { /* CHW steps -> HWC, then the §3.1 recipe */
            for (size_t i = 0; i < NPIX / 3; i++) {
                hwc[i * 3 + c] = steps[c * (NPIX / 3) + i];
            }
        }
        ki_normalize(hwc, ref);
        free(hwc);
    }
    size_t within1 = 0, within2 = 0, same = 0;
    double maxd = 0;
    for (size_t i = 0; i < NPIX; i++) {
        double d = fabs((double)px->values[i] - (double)ref[i]);
        same += d < 1e-6;
        within1 += d <= 0.016;
        within2 += d <= 0.032;
        maxd = d > maxd ? d : maxd;
    }
    printf("  %-18s %-4s %4dx%-4d pixel_values: max|d| %.6f, %.4f%% within 0.016, %zu "
           "within 0.032, %.3f%% equal; PIL resize: %zu/%d differ (max %d)\n",
           name, st_min_meta(&st, "pil_mode"), px->src_width, px->src_height, maxd,
           100.0 * (double)within1 / NPIX, within2, 100.0 * (double)same / NPIX, resize_diff, NPIX,
           resize_max);
    if (exact) {
        assert_true((double)within1 >= 0.999 * NPIX);
        assert_int_equal(within2, NPIX);
        assert_int_equal(resize_diff, 0);
    }
    free(bytes);
    free(ref);
    free(px);
    st_min_close(&st);
}

static void test_demo_images(void **state)
{
    char names[32][64];
    size_t n = list_images(DEMO_DIR, names, 32);
    assert_true(n >= 7);
    printf("  formats here: %s\n", ki_formats());
    for (size_t i = 0; i < n; i++) {
        check_image(DEMO_DIR, names[i], true, true);
    }
}

static void test_mode_images(void **state)
{
    char names[32][64];
    size_t n = list_images(MODE_DIR, names, 32);
    assert_true(n >= 15);
    for (size_t i = 0; i < n; i++) {
        bool avif = strstr(names[i], ".avif") != NULL;
        if (avif && !ki_format_available("heif")) {
            if (kt_require_all()) {
                fail_msg("%s: libvips has no HEIF loader here (KOSMOS_TEST_REQUIRE_ALL=1)",
                         names[i]);
            }
            printf("  %s skipped: libvips has no HEIF/AVIF loader here\n", names[i]);
            continue;
        }
        check_image(MODE_DIR, names[i], false, !avif);
    }
}

/* The reference never rotates; the option does. */
static void test_exif_orientation(void **state)
{
    size_t len;
    char *bytes = read_all(MODE_DIR "/exif_rot6.jpg", &len);
    ki_decode_params p;
    ki_image *img = NULL;
    ki_decode_params_default(&p);
    assert_false(p.autorotate);
    assert_int_equal(ki_image_decode(bytes, len, &p, &img), KS_OK);
    assert_int_equal(ki_image_width(img), 333);
    assert_int_equal(ki_image_height(img), 167);
    ki_image_destroy(&img);
    p.autorotate = true;
    assert_int_equal(ki_image_decode(bytes, len, &p, &img), KS_OK);
    assert_int_equal(ki_image_width(img), 167);
    assert_int_equal(ki_image_height(img), 333);
    ki_image_destroy(&img);
    assert_null(img);
    free(bytes);
}

static void expect_failure(const char *what, const void *bytes, size_t len, ks_status want)
{
    ki_image *img = (ki_image *)&img; /* must come back NULL */
    ks_status rc = ki_image_decode(bytes, len, NULL, &img);
    printf("  %-28s -> %s: %s\n", what, ks_status_name(rc), ks_error_message());
    assert_int_equal(rc, want);
    assert_null(img);
    assert_true(strlen(ks_error_message()) > 0);
}

static uint32_t crc32_png(const uint8_t *p, size_t n)
{
    uint32_t c = 0xFFFFFFFFu;
    for (size_t i = 0; i < n; i++) {
        c ^= p[i];
        for (int k = 0; k < 8; k++) {
            c = (c >> 1) ^ (0xEDB88320u & (0u - (c & 1u)));
        }
    }
    return c ^ 0xFFFFFFFFu;
}

static void put_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24), p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8), p[3] = (uint8_t)v;
}

static void expect_success(const char *what, const void *bytes, size_t len)
{
    ki_image *img = NULL;
    ks_status rc = ki_image_decode(bytes, len, NULL, &img);
    printf("  %-28s -> %s %s\n", what, ks_status_name(rc), rc == KS_OK ? "" : ks_error_message());
    assert_int_equal(rc, KS_OK);
    ki_image_destroy(&img);
}

/* Each case as PIL 13 (Image.open + load) has it: PIL raises on all of these but the PNG
 * without IEND, whose pixel data is complete (PIL and libpng both accept it). */
static void test_bad_images(void **state)
{
    size_t jlen, plen;
    char *jpeg = read_all(DEMO_DIR "/two_dogs.jpg", &jlen);
    char *png = read_all(DEMO_DIR "/snowman.png", &plen);
    static const char text[] = "This is a text file, not an image.\n";

    expect_failure("zero bytes", "", 0, KS_ERR_FORMAT);
    expect_failure("text file", text, sizeof text - 1, KS_ERR_FORMAT);
    expect_failure("truncated JPEG (half)", jpeg, jlen / 2, KS_ERR_FORMAT);
    expect_failure("truncated JPEG (no EOI)", jpeg, jlen - 2, KS_ERR_FORMAT);
    expect_failure("truncated JPEG (header)", jpeg, 600, KS_ERR_FORMAT);
    expect_failure("JPEG SOI only", jpeg, 4, KS_ERR_FORMAT);
    expect_failure("truncated PNG (half)", png, plen / 2, KS_ERR_FORMAT);
    expect_success("PNG without IEND (PIL: ok)", png, plen - 12);
    expect_failure("truncated PNG (signature)", png, 8, KS_ERR_FORMAT);
    expect_failure("truncated PNG (IHDR)", png, 20, KS_ERR_FORMAT);

    /* A valid PNG signature + IHDR claiming 100,000 x 100,000 RGB, then a tiny IDAT + IEND:
     * rejected on the header, before libvips would allocate 30 GB. */
    uint8_t big[8 + 25 + 12 + 12 + 12] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    uint8_t *p = big + 8;
    put_be32(p, 13);
    memcpy(p + 4, "IHDR", 4);
    put_be32(p + 8, 100000);
    put_be32(p + 12, 100000);
    p[16] = 8, p[17] = 2, p[18] = 0, p[19] = 0, p[20] = 0;
    put_be32(p + 21, crc32_png(p + 4, 17));
    p += 25;
    put_be32(p, 0);
    memcpy(p + 4, "IDAT", 4);
    put_be32(p + 8, crc32_png(p + 4, 4));
    p += 12;
    put_be32(p, 0);
    memcpy(p + 4, "IEND", 4);
    put_be32(p + 8, crc32_png(p + 4, 4));
    int w = 0, h = 0;
    assert_int_equal(ki_image_probe(big, sizeof big - 12, &w, &h, NULL), KS_OK);
    assert_int_equal(w, 100000);
    assert_int_equal(h, 100000);
    expect_failure("PNG header 100000x100000", big, sizeof big - 12, KS_ERR_LIMIT);

    /* Flipped bytes in the middle of the entropy-coded data must not crash (PIL, like libjpeg,
     * decodes corrupt data with warnings; libvips may accept or reject it). */
    char *bad = malloc(jlen);
    assert_non_null(bad);
    memcpy(bad, jpeg, jlen);
    for (size_t i = jlen / 3; i < jlen / 3 + 64; i++) {
        bad[i] = (char)~bad[i];
    }
    ki_image *img = NULL;
    ks_status rc = ki_image_decode(bad, jlen, NULL, &img);
    printf("  %-28s -> %s %s\n", "corrupt JPEG data", ks_status_name(rc),
           rc == KS_OK ? "" : ks_error_message());
    ki_image_destroy(&img);
    free(bad);
    free(jpeg);
    free(png);

    /* Every test image cut at 16 lengths and with one byte flipped at 16 places: any status,
     * but no crash (the ASan build runs this too) and no image on failure. */
    char names[32][64];
    size_t n = list_images(MODE_DIR, names, 32), tried = 0, failed = 0;
    for (size_t f = 0; f < n; f++) {
        char path[512];
        size_t len;
        snprintf(path, sizeof path, "%s/%s", MODE_DIR, names[f]);
        char *data = read_all(path, &len);
        for (int k = 0; k < 32; k++) {
            size_t at = len * (size_t)(k % 16) / 16;
            char keep = data[at];
            if (k >= 16) {
                data[at] = (char)(data[at] ^ 0x5a);
            }
            ks_status r = ki_image_decode(data, k < 16 ? at : len, NULL, &img);
            assert_true(r == KS_OK ? img != NULL : img == NULL);
            failed += r != KS_OK;
            tried++;
            ki_image_destroy(&img);
            data[at] = keep;
        }
        free(data);
    }
    printf("  %zu cut or flipped test images: %zu rejected, none crashed\n", tried, failed);
}

static void test_pixel_limit(void **state)
{
    size_t len;
    char *bytes = read_all(DEMO_DIR "/two_dogs.jpg", &len); /* 1200 x 602 = 722,400 */
    ki_decode_params p;
    ki_image *img = NULL;
    ki_decode_params_default(&p);
    assert_int_equal(p.max_pixels, 100000000ULL);
    p.max_pixels = 722399;
    assert_int_equal(ki_image_decode(bytes, len, &p, &img), KS_ERR_LIMIT);
    printf("  limit 722399 -> %s\n", ks_error_message());
    assert_null(img);
    p.max_pixels = 722400;
    assert_int_equal(ki_image_decode(bytes, len, &p, &img), KS_OK);
    ki_image_destroy(&img);
    free(bytes);
}

/* The most a YUV file's RGB may differ from its reference, in 8-bit steps (docs/submit.md,
 * "Formats"): YUV-to-RGB rounding gives one step; for 4:2:0 AVIF, libheif (ours, through
 * libvips) repeats each chroma sample where libavif (Pillow's) interpolates, up to 16 steps
 * at colour edges. HEIC is compared with pillow-heif, Pillow's HEIF plugin. */
static int yuv_steps(const char *name) { return strcmp(name, "small.avif") == 0 ? 16 : 1; }

static bool is_yuv(const char *name)
{
    return strstr(name, ".avif") || strstr(name, ".heic") || strstr(name, ".heif");
}

/* One file against Pillow's decoded RGB; also checks that the file's extension names the
 * format it decodes as (the walk and the decoder use the same list) and that probing agrees. */
static void check_decoded(const char *dir, const char *name)
{
    char path[512], fix[512];
    size_t len = 0;
    st_min st;
    ki_image *img = NULL;
    snprintf(path, sizeof path, "%s/%s", dir, name);
    snprintf(fix, sizeof fix, "%s/%s.safetensors", DECODED_DIR, name);
    if (st_min_open(&st, fix) != 0) {
        fail_msg("%s (run tests/golden/make_format_images.py)", ks_error_message());
    }
    char *bytes = read_all(path, &len);
    if (ki_image_decode(bytes, len, NULL, &img) != KS_OK) {
        fail_msg("%s: %s", name, ks_error_message());
    }
    int w = ki_image_width(img), h = ki_image_height(img), pw = 0, ph = 0;
    const char *probed = NULL;
    assert_int_equal(w, atoi(st_min_meta(&st, "width")));
    assert_int_equal(h, atoi(st_min_meta(&st, "height")));
    assert_int_equal(ki_image_probe(bytes, len, &pw, &ph, &probed), KS_OK);
    assert_int_equal(pw, w);
    assert_int_equal(ph, h);
    const ki_format *by_ext = ki_format_by_path(name);
    assert_non_null(by_ext);
    assert_string_equal(by_ext->name, ki_image_format(img));
    assert_string_equal(probed, ki_image_format(img));

    size_t n = (size_t)w * (size_t)h * 3, differ = 0;
    const uint8_t *want = st_min_tensor(&st, "rgb", "U8", n), *got = ki_image_rgb(img);
    assert_non_null(want);
    int maxd = 0;
    double sum = 0;
    for (size_t i = 0; i < n; i++) {
        int d = abs((int)got[i] - (int)want[i]);
        differ += d != 0;
        maxd = d > maxd ? d : maxd;
        sum += d;
    }
    printf("  %-22s %-4s %-5s %3dx%-3d vs %-11s %s", name, ki_image_format(img),
           st_min_meta(&st, "pil_mode"), w, h, st_min_meta(&st, "reference"),
           differ ? "" : "identical\n");
    if (differ) {
        printf("%zu of %zu samples differ, max %d, mean %.3f steps\n", differ, n, maxd,
               sum / (double)n);
    }
    assert_true(maxd <= (is_yuv(name) ? yuv_steps(name) : 0));
    ki_image_destroy(&img);
    free(bytes);
    st_min_close(&st);
}

static size_t check_folder(const char *dir)
{
    char names[64][64];
    size_t n = list_images(dir, names, 64);
    for (size_t i = 0; i < n; i++) {
        check_decoded(dir, names[i]);
    }
    return n;
}

/* Every BMP variant and every PNM against Pillow, bit for bit. */
static void test_own_decoders(void **state)
{
    assert_true(check_folder(MODE_DIR "/bmp") >= 19);
    assert_true(check_folder(MODE_DIR "/pnm") >= 11);
}

static void test_heif_avif(void **state)
{
    if (!ki_format_available("heif")) {
        KT_CANNOT_RUN("libvips has no HEIF loader here");
    }
    assert_true(check_folder(MODE_DIR "/heif") >= 2);
    check_decoded(MODE_DIR, "small.avif");
}

/* The one list against the test files: each accepted format's extensions lead back to it,
 * each accepted format decodes from some test file named with one of its extensions, and
 * ki_formats() names exactly the accepted formats. */
static void test_format_list(void **state)
{
    static const char *const dirs[] = {DEMO_DIR, MODE_DIR, MODE_DIR "/bmp", MODE_DIR "/pnm",
                                       MODE_DIR "/heif"};
    size_t n;
    const ki_format *list = ki_format_list(&n);
    bool decoded[32] = {false};
    char expect[256] = "";
    assert_true(n <= 32);
    for (size_t d = 0; d < sizeof dirs / sizeof dirs[0]; d++) {
        char names[64][64];
        size_t k = list_images(dirs[d], names, 64);
        for (size_t i = 0; i < k; i++) {
            char path[512];
            size_t len;
            int w, h;
            const char *fmt = NULL;
            const ki_format *f = ki_format_by_path(names[i]);
            assert_non_null(f);
            if (!ki_format_available(f->name)) {
                continue; /* heif without libheif: test_heif_avif fails or skips */
            }
            snprintf(path, sizeof path, "%s/%s", dirs[d], names[i]);
            char *bytes = read_all(path, &len);
            assert_int_equal(ki_image_probe(bytes, len, &w, &h, &fmt), KS_OK);
            assert_string_equal(f->name, fmt);
            decoded[f - list] = true;
            free(bytes);
        }
    }
    for (size_t i = 0; i < n; i++) {
        const ki_format *f = &list[i];
        if (f->decoder == KI_DECODER_NONE) {
            assert_string_equal(f->extensions, "");
            assert_non_null(f->refused);
            continue;
        }
        bool here = ki_format_available(f->name);
        printf("  %-5s %-16s %s\n", f->name, f->extensions,
               !here        ? "not in this build"
               : decoded[i] ? "decoded"
                            : "MISSING");
        assert_true(decoded[i] || !here);
        assert_true(f->extensions[0] != '\0');
        for (const char *p = f->extensions; *p;) {
            char file[32], upper[32];
            size_t w = strcspn(p, " ");
            snprintf(file, sizeof file, "dir/x.%.*s", (int)w, p);
            snprintf(upper, sizeof upper, "X.%.*s", (int)w, p);
            for (char *c = upper; *c; c++) {
                *c = (char)(*c >= 'a' && *c <= 'z' ? *c - 32 : *c);
            }
            assert_ptr_equal(ki_format_by_path(file), f);
            assert_ptr_equal(ki_format_by_path(upper), f);
            p += w;
            p += *p == ' ';
        }
        if (here) {
            snprintf(expect + strlen(expect), sizeof expect - strlen(expect), "%s%s",
                     expect[0] ? " " : "", f->name);
        }
    }
    assert_string_equal(ki_formats(), expect);
    assert_null(ki_format_by_path("x.txt"));
    assert_null(ki_format_by_path(".png"));
    assert_null(ki_format_by_path("png"));
    assert_null(ki_format_by_path("a.png/b"));
    assert_null(ki_format_by_path("x.ico"));
    assert_null(ki_format_by_path("x.tga"));
    char ext[256];
    size_t need = ki_format_extensions(ext, sizeof ext);
    assert_int_equal(need, strlen(ext));
    printf("  walked: %s\n", ext);
    assert_int_equal(ki_format_extensions(ext, 5), need);
    assert_string_equal(ext, ".jpg");
}

static void expect_message(const char *what, const void *bytes, size_t len, ks_status want,
                           const char *needle)
{
    ki_image *img = (ki_image *)&img;
    ks_status rc = ki_image_decode(bytes, len, NULL, &img);
    printf("  %-28s -> %s: %s\n", what, ks_status_name(rc), ks_error_message());
    assert_int_equal(rc, want);
    assert_null(img);
    assert_non_null(strstr(ks_error_message(), needle));
}

/* Formats we recognise only to refuse, and variants the decoders refuse, each by name. */
static void test_refused(void **state)
{
    static const uint8_t ico[] = {0, 0,  1, 0, 1, 0, 16, 16, 0, 0, 1,
                                  0, 32, 0, 0, 0, 0, 0,  22, 0, 0, 0};
    static const uint8_t cur[] = {0, 0,  2, 0, 1, 0, 16, 16, 0, 0, 1,
                                  0, 32, 0, 0, 0, 0, 0,  22, 0, 0, 0};
    /* An uncompressed 24-bit 2x1 TGA: no signature, a plausible header. */
    static const uint8_t tga[] = {0, 0, 2, 0, 0,  0, 0, 0, 0, 0, 0, 0,
                                  2, 0, 1, 0, 24, 0, 1, 2, 3, 4, 5, 6};
    static const char pfm[] = "Pf\n2 1\n-1.0\n\0\0\0\0\0\0\0\0";
    static const char pam[] = "P7\nWIDTH 1\nHEIGHT 1\nDEPTH 3\nMAXVAL 255\nENDHDR\nabc";
    static const char pil_p[] = "PyP\n1 1\n255\nx";
    expect_message("ICO", ico, sizeof ico, KS_ERR_FORMAT, "ICO");
    expect_message("CUR", cur, sizeof cur, KS_ERR_FORMAT, "ICO");
    expect_message("TGA", tga, sizeof tga, KS_ERR_FORMAT, "TGA");
    expect_message("PFM", pfm, sizeof pfm - 1, KS_ERR_UNSUPPORTED, "PFM");
    expect_message("PAM (P7)", pam, sizeof pam - 1, KS_ERR_FORMAT, "format");
    expect_message("PIL's PyP", pil_p, sizeof pil_p - 1, KS_ERR_FORMAT, "pnm");

    size_t len;
    char *b = read_all(MODE_DIR "/bmp/rgb24.bmp", &len);
    b[30] = 4; /* compression: JPEG inside */
    expect_message("BMP with a JPEG inside", b, len, KS_ERR_FORMAT, "JPEG");
    b[30] = 3; /* bit fields: not the masks 24 bits may have (the file's pixels as masks) */
    expect_message("BMP 24-bit odd bit fields", b, len, KS_ERR_FORMAT, "bit fields");
    b[30] = 1; /* RLE8 with 24 bits */
    expect_message("BMP RLE with 24 bits", b, len, KS_ERR_FORMAT, "RLE");
    b[30] = 0;
    b[28] = 2; /* 2 bits per pixel */
    expect_message("BMP 2 bits per pixel", b, len, KS_ERR_FORMAT, "depth");
    b[28] = 24;
    b[14] = 41; /* an unknown header size */
    expect_message("BMP header of 41 bytes", b, len, KS_ERR_FORMAT, "header");
    free(b);
}

/* Headers claiming huge images fail on the limit before any allocation; probing reads them. */
static void test_own_limits(void **state)
{
    uint8_t bmp[54] = {'B', 'M'};
    const uint32_t fields[][2] = {{10, 54}, {14, 40}, {18, 100000}, {22, 100000}};
    for (size_t i = 0; i < 4; i++) {
        for (int k = 0; k < 4; k++) {
            bmp[fields[i][0] + (size_t)k] = (uint8_t)(fields[i][1] >> (8 * k));
        }
    }
    bmp[26] = 1;
    bmp[28] = 24;
    int w = 0, h = 0;
    assert_int_equal(ki_image_probe(bmp, sizeof bmp, &w, &h, NULL), KS_OK);
    assert_int_equal(w, 100000);
    assert_int_equal(h, 100000);
    expect_failure("BMP header 100000x100000", bmp, sizeof bmp, KS_ERR_LIMIT);
    bmp[25] = 0xFF; /* height field 0xFFFF86A0: top byte 0xFF, so top-down, 2^32 - field rows */
    bmp[24] = 0xFF;
    assert_int_equal(ki_image_probe(bmp, sizeof bmp, &w, &h, NULL), KS_OK);
    printf("  top-down BMP height field ffff86a0 -> %d rows\n", h);
    assert_int_equal(h, 0x7960);
    bmp[25] = 0xFE; /* 0xFEFF86A0: bottom-up (Pillow looks at the top byte only), > INT_MAX */
    assert_int_equal(ki_image_probe(bmp, sizeof bmp, &w, &h, NULL), KS_ERR_LIMIT);
    static const char ppm[] = "P6\n100000 100000\n255\n";
    expect_failure("PPM header 100000x100000", ppm, sizeof ppm - 1, KS_ERR_LIMIT);
    static const char pgm[] = "P5 9999999999 1 255 ";
    expect_failure("PGM header 9999999999x1", pgm, sizeof pgm - 1, KS_ERR_LIMIT);

    size_t len;
    char *bytes = read_all(MODE_DIR "/bmp/rle8.bmp", &len); /* 97 x 65 */
    ki_decode_params p;
    ki_image *img = NULL;
    ki_decode_params_default(&p);
    p.max_pixels = 97 * 65 - 1;
    assert_int_equal(ki_image_decode(bytes, len, &p, &img), KS_ERR_LIMIT);
    assert_null(img);
    p.max_pixels = 97 * 65;
    assert_int_equal(ki_image_decode(bytes, len, &p, &img), KS_OK);
    ki_image_destroy(&img);
    free(bytes);
}

/* Each BMP and PNM test file cut at every length, and each of its first 160 bytes set to 5
 * values: any status, no crash (the ASan build runs this too), no image on failure. */
static void test_own_decoders_bad(void **state)
{
    static const char *const dirs[] = {MODE_DIR "/bmp", MODE_DIR "/pnm"};
    static const uint8_t values[] = {0x00, 0x01, 0x7F, 0xFF, '#'};
    size_t tried = 0, failed = 0;
    for (size_t d = 0; d < 2; d++) {
        char names[64][64];
        size_t n = list_images(dirs[d], names, 64);
        for (size_t f = 0; f < n; f++) {
            char path[512];
            size_t len;
            ki_image *img = NULL;
            ki_decode_params p;
            ki_decode_params_default(&p);
            p.max_pixels = 1 << 20; /* a flipped size byte must not allocate gigabytes */
            snprintf(path, sizeof path, "%s/%s", dirs[d], names[f]);
            char *data = read_all(path, &len);
            for (size_t cut = 0; cut < len; cut++) {
                ks_status r = ki_image_decode(data, cut, &p, &img);
                assert_true(r == KS_OK ? img != NULL : img == NULL);
                failed += r != KS_OK;
                tried++;
                ki_image_destroy(&img);
            }
            for (size_t at = 0; at < len && at < 160; at++) {
                char keep = data[at];
                for (size_t v = 0; v < sizeof values; v++) {
                    data[at] = (char)values[v];
                    ks_status r = ki_image_decode(data, len, &p, &img);
                    assert_true(r == KS_OK ? img != NULL : img == NULL);
                    failed += r != KS_OK;
                    tried++;
                    ki_image_destroy(&img);
                }
                data[at] = keep;
            }
            free(data);
        }
    }
    printf("  %zu cut or changed BMP and PNM files: %zu rejected, none crashed\n", tried, failed);
}

/* A w x h 16-bit RGBA PNG (8 bytes per decoded pixel: the most a source takes), made here. */
static void *make_png16(int w, int h, size_t *len)
{
    VipsImage *black = NULL, *wide = NULL, *rgb16 = NULL;
    void *png = NULL;
    assert_int_equal(vips_black(&black, w, h, "bands", 4, NULL), 0);
    assert_int_equal(vips_cast(black, &wide, VIPS_FORMAT_USHORT, NULL), 0);
    /* RGB16: pngsave writes 16-bit samples only for a 16-bit interpretation */
    assert_int_equal(vips_copy(wide, &rgb16, "interpretation", VIPS_INTERPRETATION_RGB16, NULL), 0);
    assert_int_equal(vips_pngsave_buffer(rgb16, &png, len, "compression", 1, NULL), 0);
    assert_true(*len > 26 && ((const uint8_t *)png)[24] == 16 && ((const uint8_t *)png)[25] == 6);
    g_object_unref(black);
    g_object_unref(wide);
    g_object_unref(rgb16);
    return png;
}

/* kB of VmRSS or VmHWM in /proc/self/status. */
static long status_kb(const char *key)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long kb = -1;
    size_t n = strlen(key);
    while (f && fgets(line, sizeof line, f)) {
        if (strncmp(line, key, n) == 0 && line[n] == ':') {
            kb = strtol(line + n + 1, NULL, 10);
        }
    }
    if (f) {
        fclose(f);
    }
    return kb;
}

/* Decoding and resizing a large image keeps at most a strip of it: the peak resident size it
 * adds is well under the 8 bytes per pixel its decoded samples would take, let alone the 11
 * the decode took when it held the decoded image and an 8-bit copy (issue 17). A memory
 * bound, not a time: this process's VmHWM, reset first (/proc/self/clear_refs). */
static void test_large_image_memory(void **state)
{
    const int w = 6000, h = 6000;
    size_t len = 0;
    void *png = make_png16(w, h, &len);
    ki_pixels *px = calloc(1, sizeof *px);
    assert_non_null(px);
    FILE *f = fopen("/proc/self/clear_refs", "w");
    assert_non_null(f);
    assert_true(fputs("5", f) >= 0);
    assert_int_equal(fclose(f), 0); /* VmHWM := VmRSS */
    long base = status_kb("VmRSS");
    assert_int_equal(ki_pixels_from_buffer(png, len, NULL, px, NULL), KS_OK);
    long peak = status_kb("VmHWM");
    double per_pixel = (double)(peak - base) * 1024.0 / ((double)w * h);
    printf("  %dx%d 16-bit RGBA PNG: +%ld kB peak, %.2f bytes per source pixel\n", w, h,
           peak - base, per_pixel);
    assert_int_equal(px->src_width, w);
    assert_true(per_pixel < 4.0);
    /* A side over 65,535 pixels is refused on the header, whatever the pixel count. */
    g_free(png);
    png = make_png16(70000, 1, &len);
    assert_int_equal(ki_pixels_from_buffer(png, len, NULL, px, NULL), KS_ERR_LIMIT);
    printf("  70000x1 -> %s\n", ks_error_message());
    g_free(png);
    free(px);
}

static void test_resize_edges(void **state)
{
    uint8_t one[3] = {10, 200, 255}, out[6 * 5 * 3], same[2 * 2 * 3];
    uint8_t src[2 * 2 * 3] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12};
    assert_int_equal(ki_pil_resize_bicubic(one, 1, 1, 3, out, 6, 5), KS_OK);
    for (int i = 0; i < 6 * 5; i++) { /* a constant image stays constant */
        assert_memory_equal(out + i * 3, one, 3);
    }
    assert_int_equal(ki_pil_resize_bicubic(src, 2, 2, 3, same, 2, 2), KS_OK);
    assert_memory_equal(src, same, sizeof src);
    assert_int_equal(ki_pil_resize_bicubic(src, 0, 2, 3, same, 2, 2), KS_ERR_INVALID);
    assert_int_equal(ki_pil_resize_bicubic(src, 2, 2, 5, same, 2, 2), KS_ERR_INVALID);
    /* A 1-pixel-wide strip, downscaled in one axis only. */
    uint8_t strip[1 * 500], thin[1 * 7];
    for (int i = 0; i < 500; i++) {
        strip[i] = (uint8_t)(i * 7);
    }
    assert_int_equal(ki_pil_resize_bicubic(strip, 1, 500, 1, thin, 1, 7), KS_OK);
}

/* Several threads decoding at once give what one thread gives. */
typedef struct job {
    const char *bytes;
    size_t len;
    ki_pixels *px;
    ks_status rc;
} job;

static void *decode_job(void *arg)
{
    job *j = arg;
    j->rc = ki_pixels_from_buffer(j->bytes, j->len, NULL, j->px, NULL);
    ki_thread_shutdown();
    return NULL;
}

static void test_threads(void **state)
{
    size_t len;
    char *bytes = read_all(DEMO_DIR "/corgi.jpg", &len);
    ki_pixels *one = calloc(1, sizeof *one);
    job jobs[3];
    pthread_t th[3];
    assert_non_null(one);
    assert_int_equal(ki_pixels_from_buffer(bytes, len, NULL, one, NULL), KS_OK);
    for (int i = 0; i < 3; i++) {
        jobs[i] = (job){bytes, len, calloc(1, sizeof(ki_pixels)), KS_ERR_INVALID};
        assert_non_null(jobs[i].px);
        assert_int_equal(pthread_create(&th[i], NULL, decode_job, &jobs[i]), 0);
    }
    for (int i = 0; i < 3; i++) {
        assert_int_equal(pthread_join(th[i], NULL), 0);
        assert_int_equal(jobs[i].rc, KS_OK);
        assert_memory_equal(jobs[i].px->values, one->values, sizeof one->values);
        free(jobs[i].px);
    }
    free(one);
    free(bytes);
}

static void test_draw(void **state)
{
    size_t len;
    char *bytes = read_all(DEMO_DIR "/two_dogs.jpg", &len);
    ki_image *img = NULL, *back = NULL;
    assert_int_equal(ki_image_decode(bytes, len, NULL, &img), KS_OK);
    const ki_box boxes[] = {
        {"a dog", 0, 0.10, 0.20, 0.45, 0.90},
        {"another dog", 1, 0.50, 0.15, 0.95, 0.95},
        {"<b>markup</b> & ünïcödé — 狗", 2, 0.30, 0.05, 0.70, 0.40},
        {"outside", 3, -0.5, -0.5, 1.5, 1.5},
        {"far outside", 4, 2.0, 2.0, 3.0, 3.0},
        {"zero size", 5, 0.5, 0.5, 0.5, 0.5},
        {"reversed", 6, 0.9, 0.9, 0.6, 0.6},
        {"nan", 7, NAN, 0.1, 0.2, INFINITY},
        {"", 8, 0.0, 0.0, 1.0, 1.0},
        {NULL, -3, 0.99, 0.99, 1.0, 1.0},
        {"right edge label that is long enough to be clipped", 9, 0.98, 0.5, 1.0, 0.6},
    };
    const size_t n = sizeof boxes / sizeof boxes[0];
    void *png = NULL;
    size_t png_len = 0;
    assert_int_equal(ki_draw_boxes_png(img, boxes, n, NULL, &png, &png_len), KS_OK);
    assert_true(png_len > 1000);
    assert_int_equal(ki_image_decode(png, png_len, NULL, &back), KS_OK);
    assert_int_equal(ki_image_width(back), 1200);
    assert_int_equal(ki_image_height(back), 602);
    /* The first box's left edge, x = floor(0.10*1200) = 120, y = 0.5*602, has colour 0. */
    const uint8_t *px = ki_image_rgb(back) + ((size_t)301 * 1200 + 120) * 3;
    assert_int_equal(px[0], 31);
    assert_int_equal(px[1], 119);
    assert_int_equal(px[2], 180);
    ki_image_destroy(&back);
    free(png);
    assert_int_equal(ki_draw_boxes_file(img, boxes, n, NULL, "test_image_draw.png"), KS_OK);
    printf("  wrote test_image_draw.png (%zu bytes as PNG)\n", png_len);
    assert_int_equal(ki_draw_boxes_file(img, NULL, 0, NULL, "/nonexistent/dir/x.png"), KS_ERR_IO);
    /* A 1x1 image with boxes and labels. */
    static const uint8_t dot[3] = {0, 0, 0};
    ki_image *tiny = NULL;
    assert_int_equal(ki_image_from_rgb(dot, 1, 1, &tiny), KS_OK);
    assert_int_equal(ki_draw_boxes_png(tiny, boxes, n, NULL, &png, &png_len), KS_OK);
    free(png);
    ki_image_destroy(&tiny);
    ki_image_destroy(&img);
    free(bytes);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_resize_edges),
        cmocka_unit_test(test_demo_images),
        cmocka_unit_test(test_mode_images),
        cmocka_unit_test(test_own_decoders),
        cmocka_unit_test(test_heif_avif),
        cmocka_unit_test(test_format_list),
        cmocka_unit_test(test_refused),
        cmocka_unit_test(test_own_limits),
        cmocka_unit_test(test_own_decoders_bad),
        cmocka_unit_test(test_exif_orientation),
        cmocka_unit_test(test_bad_images),
        cmocka_unit_test(test_pixel_limit),
        cmocka_unit_test(test_large_image_memory),
        cmocka_unit_test(test_threads),
        cmocka_unit_test(test_draw),
    };
    if (ki_init() != KS_OK) {
        fprintf(stderr, "libvips: %s\n", ks_error_message());
        return 1;
    }
    return cmocka_run_group_tests(tests, NULL, NULL);
}
