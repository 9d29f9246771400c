/* kosmos devices: lists the OpenCL platforms and devices with the index `--device N` takes, and
 * marks the one used by default. Human-readable table, or a JSON array with --json. Without
 * OpenCL (not built in, or no driver installed) it says so and points to `--device ref`: that is
 * a normal outcome, exit 0. Not a benchmark or a health check: it opens no context. */
#include <getopt.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "cli.h"

#ifdef KOSMOS_HAVE_OPENCL
#include "kc_device.h"
#endif

static const char devices_help[] =
    "usage: kosmos devices [--json]\n"
    "\n"
    "Lists every OpenCL device with its index, in the order --device N uses: platform order,\n"
    "then device order. The default device (marked *) is the first GPU, else the first OpenCL\n"
    "device; with none, the plain-C reference path (--device ref) runs.\n"
    "\n"
    "--device accepts: cpu (the first OpenCL CPU device), gpu (the first GPU), an index, any\n"
    "other text (the first device whose platform or device name contains it, ignoring case),\n"
    "or ref (plain C, no OpenCL).\n"
    "\n"
    "  --json   print a JSON array of objects instead of the table\n"
    "\n"
    "On PoCL, POCL_MEMORY_LIMIT=<GiB> raises the memory the CPU device offers.\n";

static const char no_devices_text[] = "No OpenCL devices%s.\n"
                                      "--device ref (the plain-C reference path) is available.\n";

#ifdef KOSMOS_HAVE_OPENCL

/* "10.7 GiB", "512 MiB". */
static void format_bytes(unsigned long long bytes, char *out, size_t cap)
{
    const double gib = 1024.0 * 1024.0 * 1024.0;
    if (bytes >= (1ull << 30))
        snprintf(out, cap, "%.1f GiB", (double)bytes / gib);
    else
        snprintf(out, cap, "%llu MiB", bytes >> 20);
}

static json_t *device_json(const kc_device_info *d, bool is_default)
{
    return json_pack("{s:I, s:b, s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:I, s:I, s:I, s:I, s:I, s:s, "
                     "s:b}",
                     "index", (json_int_t)d->index, "default", is_default, "type",
                     kc_device_type_name(d->type), "name", d->name, "vendor", d->vendor, "platform",
                     d->platform_name, "platform_vendor", d->platform_vendor, "platform_version",
                     d->platform_version, "driver_version", d->driver_version, "global_mem_bytes",
                     (json_int_t)d->global_mem_bytes, "max_alloc_bytes",
                     (json_int_t)d->max_alloc_bytes, "local_mem_bytes",
                     (json_int_t)d->local_mem_bytes, "compute_units", (json_int_t)d->compute_units,
                     "max_work_group_size", (json_int_t)d->max_work_group_size, "opencl_c_version",
                     d->opencl_c_version, "fp16", d->fp16);
}

static int print_json(const kc_device_list *list, long def)
{
    json_t *array = json_array();
    for (size_t i = 0; array && i < kc_device_list_count(list); i++) {
        json_t *item = device_json(kc_device_list_get(list, i), (long)i == def);
        if (!item || json_array_append_new(array, item) != 0)
            json_decref(array), array = NULL;
    }
    char *text = array ? json_dumps(array, JSON_INDENT(2)) : NULL;
    json_decref(array);
    if (!text) {
        fputs("kosmos devices: out of memory\n", stderr);
        return CLI_EXIT_FAILED;
    }
    puts(text);
    free(text);
    return CLI_EXIT_OK;
}

static int print_table(const kc_device_list *list, long def)
{
    size_t count = kc_device_list_count(list);
    /* Column widths from the content, so long driver names do not break the layout. */
    int w_name = 6, w_platform = 8, w_driver = 6;
    for (size_t i = 0; i < count; i++) {
        const kc_device_info *d = kc_device_list_get(list, i);
        int n = (int)strlen(d->name), p = (int)strlen(d->platform_name),
            v = (int)strlen(d->driver_version);
        w_name = n > w_name ? n : w_name;
        w_platform = p > w_platform ? p : w_platform;
        w_driver = v > w_driver ? v : w_driver;
    }
    printf("   %-3s %-4s %-*s %-*s %-*s %10s %10s %4s %5s %4s  %s\n", "#", "type", w_name, "device",
           w_platform, "platform", w_driver, "driver", "memory", "max alloc", "CUs", "WG", "fp16",
           "OpenCL C");
    for (size_t i = 0; i < count; i++) {
        const kc_device_info *d = kc_device_list_get(list, i);
        char mem[32], alloc[32];
        format_bytes(d->global_mem_bytes, mem, sizeof mem);
        format_bytes(d->max_alloc_bytes, alloc, sizeof alloc);
        printf(" %c %-3zu %-4s %-*s %-*s %-*s %10s %10s %4u %5zu %4s  %s\n",
               (long)i == def ? '*' : ' ', d->index, kc_device_type_name(d->type), w_name, d->name,
               w_platform, d->platform_name, w_driver, d->driver_version, mem, alloc,
               d->compute_units, d->max_work_group_size, d->fp16 ? "yes" : "no",
               d->opencl_c_version);
    }
    printf("\n* default device (%ld). --device takes cpu, gpu, an index, a name, or ref (plain "
           "C).\n",
           def);
    return CLI_EXIT_OK;
}

#endif /* KOSMOS_HAVE_OPENCL */

int cmd_devices(int argc, char **argv)
{
    static const struct option options[] = {
        {"json", no_argument, NULL, 'j'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    bool json = false;
    int option;
    optind = 1;
    while ((option = getopt_long(argc, argv, "+jh", options, NULL)) != -1) {
        switch (option) {
        case 'j': json = true; break;
        case 'h': fputs(devices_help, stdout); return CLI_EXIT_OK;
        default: return cli_usage_error("devices: see 'kosmos devices --help'");
        }
    }
    if (optind < argc)
        return cli_usage_error("devices: unexpected argument '%s'", argv[optind]);

#ifdef KOSMOS_HAVE_OPENCL
    kc_device_list *list = NULL;
    if (kc_device_list_new(&list) != KS_OK) {
        fprintf(stderr, "kosmos devices: %s\n", ks_error_message());
        return CLI_EXIT_FAILED;
    }
    if (kc_device_list_note(list))
        fprintf(stderr, "kosmos devices: skipped %s\n", kc_device_list_note(list));
    long def = kc_device_list_default(list);
    int rc;
    if (json)
        rc = print_json(list, def);
    else if (kc_device_list_count(list) == 0)
        rc = (printf(no_devices_text, " (no OpenCL driver is installed)"), CLI_EXIT_OK);
    else
        rc = print_table(list, def);
    kc_device_list_destroy(&list);
    return rc;
#else
    if (json)
        puts("[]");
    else
        printf(no_devices_text, " (this build of kosmos has no OpenCL support)");
    return CLI_EXIT_OK;
#endif
}
