/* kw_cli: the kosmos-worker command line (options, signals, exit codes) around kw_worker_run,
 * shared by the program (main.c) and the test worker (tests/support/kosmos_test_worker.c),
 * which adds its test seams. Not a general option parser. */
#ifndef KW_CLI_H
#define KW_CLI_H

#include "kw_worker.h"

/* Parses kosmos-worker's options (argv[0] is the program), installs the SIGTERM/SIGINT
 * handlers and runs the worker with `test` (borrowed; NULL = none, as in production). Returns
 * the process exit code: 0, or KW_EXIT_CONFIG / KW_EXIT_DEVICE. Once per process. */
int kw_cli_main(int argc, char **argv, const kw_test_seams *test);

#endif
