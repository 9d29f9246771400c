/* cli_help: prints a subcommand's --help text with the image formats filled in from the one
 * list (worker/image/image_formats.h), so that help cannot disagree with what `kosmos submit`
 * walks and what a worker decodes. */
#ifndef KOSMOS_CLI_HELP_H
#define KOSMOS_CLI_HELP_H

/* Prints `text` to stdout with "{image-extensions}" replaced by the accepted extensions
 * (".jpg .jpeg ...") and "{image-formats}" by the accepted formats' titles ("JPEG, PNG, ..."),
 * wrapped at 88 columns with continuation lines indented to where the placeholder stood. */
void cli_help_print(const char *text);

#endif
