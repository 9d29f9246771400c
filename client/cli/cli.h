/* The kosmos CLI's shared declarations: the subcommand table and exit codes. Each subcommand
 * is `int run(int argc, char **argv)` with argv[0] the subcommand's name. */
#ifndef KOSMOS_CLI_H
#define KOSMOS_CLI_H

enum {
    CLI_EXIT_OK = 0,     /* every input line succeeded */
    CLI_EXIT_FAILED = 1, /* at least one line failed */
    CLI_EXIT_USAGE = 2   /* bad arguments, or the model could not be loaded */
};

int cmd_tokenize(int argc, char **argv);
int cmd_encode(int argc, char **argv);
int cmd_postprocess(int argc, char **argv);
int cmd_run(int argc, char **argv);
int cmd_devices(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_tune(int argc, char **argv);
int cmd_status(int argc, char **argv);
int cmd_submit(int argc, char **argv);

/* Prints "kosmos: <message>" on stderr and returns CLI_EXIT_USAGE. */
int cli_usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
