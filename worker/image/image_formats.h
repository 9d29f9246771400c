/* image_formats: the one list of image formats. For each format it says whether a worker
 * decodes it and with what (a libvips loader or a decoder of ours), the file extensions
 * `kosmos submit` walks folders for, and for a format we recognise only to refuse it, why.
 *
 * Everything that names formats reads this list: the decoder's admission and its messages
 * (image_decode.c), ki_formats() (vips_runtime.c), the folder walk of `kosmos submit`
 * (client/cli/submit_paths.c) and the --help of `kosmos submit` and `kosmos run`.
 * docs/submit.md and docs/protocol.md show it; tests/cli/test_cli_submit.py checks that they
 * and a real walk-and-annotate run agree with it.
 *
 * No libvips here, so the command line can link it in builds without image decoding. Whether
 * a libvips loader is present is a property of the build (heif), asked of vips_runtime.h.
 */
#ifndef KI_IMAGE_FORMATS_H
#define KI_IMAGE_FORMATS_H

#include <stdbool.h>
#include <stddef.h>

typedef enum ki_decoder {
    KI_DECODER_VIPS, /* libvips' own loader, `vips_loader` */
    KI_DECODER_BMP,  /* bmp_decode.h */
    KI_DECODER_PNM,  /* pnm_decode.h */
    KI_DECODER_NONE, /* recognised only to be refused with `refused` */
} ki_decoder;

typedef struct ki_format {
    const char *name;       /* "jpeg": in messages, ki_formats() and ki_image_format() */
    const char *title;      /* "JPEG": for help texts and messages */
    const char *extensions; /* "jpg jpeg": lower case, space-separated, the walk takes these;
                              * "" for a refused format (a folder walk skips it) */
    ki_decoder decoder;
    const char *vips_loader; /* KI_DECODER_VIPS: the loader's nickname; else NULL */
    const char *refused;     /* KI_DECODER_NONE: why not, for the message; else NULL */
} ki_format;

/* The list, in the order help texts show it; *n is set to its length. Static storage. */
const ki_format *ki_format_list(size_t *n);

/* The format called `name`, or NULL. */
const ki_format *ki_format_by_name(const char *name);

/* The accepted format whose extension ends `path` (case-insensitive), or NULL: what the folder
 * walk takes. A name that is only an extension (".png") is not taken. */
const ki_format *ki_format_by_path(const char *path);

/* The format whose libvips loader has nickname `nick`, or NULL. */
const ki_format *ki_format_by_vips_loader(const char *nick);

/* The format of `bytes` among those libvips does not decode for us (ours and the refused),
 * by their signatures, or NULL. With `guess` it instead tries the formats that have no
 * signature (TGA), by a plausible header: call it only once everything else failed. */
const ki_format *ki_format_sniff(const void *bytes, size_t len, bool guess);

/* Writes the accepted formats' extensions, each with its dot, space-separated, in list order
 * (".jpg .jpeg .png ...") into buf (cap bytes, always terminated). Returns the length the
 * whole text needs, as snprintf does. */
size_t ki_format_extensions(char *buf, size_t cap);

#endif
