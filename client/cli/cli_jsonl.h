/* cli_jsonl: the JSON Lines loop shared by the text subcommands. Reads stdin line by line,
 * hands each parsed value to a handler and prints exactly one compact JSON line per input
 * line, in order, flushed: the handler's result, or {"error": "..."} when the line failed. */
#ifndef KOSMOS_CLI_JSONL_H
#define KOSMOS_CLI_JSONL_H

#include <stdio.h>

#include <jansson.h>

#include "ks_error.h"

/* Largest accepted input line; longer lines fail on their own and the loop goes on. */
#define CLI_JSONL_MAX_LINE (64u << 20)

/* Computes the output for one input value (borrowed). On success sets *result to a new
 * reference the loop prints and releases; on failure returns a status with ks_fail's message. */
typedef ks_status (*cli_jsonl_handler)(const json_t *input, json_t **result, void *context);

/* Runs the loop until end of input. Returns CLI_EXIT_OK or CLI_EXIT_FAILED (see cli.h). */
int cli_jsonl_run(FILE *in, FILE *out, cli_jsonl_handler handler, void *context);

#endif
