/* kosmos-worker: one worker process per compute device (docs/protocol.md §8). The program is
 * kw_cli_main with no test seams; tests/support/kosmos-test-worker is the same with them. */
#include "kw_cli.h"

int main(int argc, char **argv) { return kw_cli_main(argc, argv, NULL); }
