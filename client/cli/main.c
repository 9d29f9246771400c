/* kosmos: the command line of kosmos-farm. This file only dispatches to the subcommands. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "cli.h"

typedef struct subcommand {
    const char *name;
    const char *summary;
    int (*run)(int argc, char **argv);
} subcommand;

static const subcommand subcommands[] = {
    {"tokenize", "text -> token ids, or ids -> text with --decode (JSON Lines)", cmd_tokenize},
    {"encode", "prompt + boxes -> model input ids and masks (JSON Lines)", cmd_encode},
    {"postprocess", "generated text -> cleaned text + grounded entities (JSON Lines)",
     cmd_postprocess},
#ifdef KOSMOS_HAVE_RUN
    {"run", "run Kosmos-2 on one image: text, grounded phrases and boxes (JSON)", cmd_run},
#endif
    {"devices", "list the OpenCL platforms and devices --device can choose", cmd_devices},
    {"bench", "speed figures on one device: vision, prefill, decode, end to end, memory (JSON)",
     cmd_bench},
    {"tune", "find the fastest GEMM tunables for an OpenCL device; record them for later starts",
     cmd_tune},
#ifdef KOSMOS_HAVE_CLIENT
    {"status", "a broker's jobs per state, workers, totals and throughput (table or --json)",
     cmd_status},
    {"submit", "annotate many images through a broker, or in-process (JSON Lines, COCO)",
     cmd_submit},
#endif
};

static void print_usage(FILE *out)
{
    fputs("kosmos - grounded vision-language inference with Kosmos-2\n"
          "\n"
          "usage: kosmos <command> [options]\n"
          "\n"
          "commands:\n",
          out);
    for (size_t i = 0; i < sizeof subcommands / sizeof subcommands[0]; i++)
        fprintf(out, "  %-12s %s\n", subcommands[i].name, subcommands[i].summary);
    fputs("\n"
          "Run 'kosmos <command> --help' for the options of a command.\n"
          "The JSON Lines commands read one JSON value per line on stdin and write exactly one\n"
          "JSON line per input line on stdout, in order; a failed line becomes {\"error\": ...}.\n"
          "Exit status: 0 all lines succeeded, 1 some line failed, 2 usage error.\n",
          out);
}

int cli_usage_error(const char *fmt, ...)
{
    va_list args;
    va_start(args, fmt);
    fputs("kosmos: ", stderr);
    vfprintf(stderr, fmt, args);
    fputc('\n', stderr);
    va_end(args);
    return CLI_EXIT_USAGE;
}

int main(int argc, char **argv)
{
    if (argc < 2)
        return print_usage(stderr), CLI_EXIT_USAGE;
    const char *name = argv[1];
    if (!strcmp(name, "--help") || !strcmp(name, "-h") || !strcmp(name, "help")) {
        if (!strcmp(name, "help") && argc > 2) {
            char *help_argv[] = {argv[2], "--help", NULL};
            for (size_t i = 0; i < sizeof subcommands / sizeof subcommands[0]; i++)
                if (!strcmp(subcommands[i].name, argv[2]))
                    return subcommands[i].run(2, help_argv);
            return cli_usage_error("unknown command '%s' (see 'kosmos --help')", argv[2]);
        }
        print_usage(stdout);
        return CLI_EXIT_OK;
    }
    if (!strcmp(name, "--version")) {
        printf("kosmos %s\n", KOSMOS_VERSION);
        return CLI_EXIT_OK;
    }
    for (size_t i = 0; i < sizeof subcommands / sizeof subcommands[0]; i++)
        if (!strcmp(subcommands[i].name, name))
            return subcommands[i].run(argc - 1, argv + 1);
    return cli_usage_error("unknown command '%s' (see 'kosmos --help')", name);
}
