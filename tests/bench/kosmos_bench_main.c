/* kosmos-bench: `kosmos bench` as a binary of its own that links only the engine (and OpenCL
 * where the build has it) and kosmos_common - no libvips, no ZeroMQ, no protobuf - so that it
 * can be carried with its few shared libraries to a machine without the development packages
 * (the GPU machine). Same options and output as `kosmos bench --help` shows. */
#include "cli.h"

int cmd_bench(int argc, char **argv);

int main(int argc, char **argv) { return cmd_bench(argc, argv); }
