/* ground: submit images to a kosmos-farm broker and print their grounded captions - the
 * example program of libkosmos, meant to be copied.
 *
 *   ground [--broker tcp://localhost:5555] [--prompt "<grounding> An image of"]
 *          [--client-id ID] [--timeout-ms 120000] [--max-new-tokens N]
 *          [--curve-secret client.key_secret --curve-server-public broker.key] IMAGE...
 *
 * It submits every image first (asynchronously: each submit returns once the broker has stored
 * the job), then waits for each result in turn, prints it and acks it. Build it against an
 * installed libkosmos with
 *   cc ground.c $(pkg-config --cflags --libs kosmos) -o ground
 * or, in CMake, find_package(kosmos) and target_link_libraries(ground PRIVATE kosmos::kosmos). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <kosmos/client.h>

static void usage(FILE *out)
{
    fprintf(out, "usage: ground [options] IMAGE...\n"
                 "  --broker ENDPOINT            broker client endpoint (tcp://localhost:5555)\n"
                 "  --prompt TEXT                prompt (\"<grounding> An image of\")\n"
                 "  --client-id ID               client identity with CURVE off (anonymous)\n"
                 "  --timeout-ms N               how long to wait for each result (120000)\n"
                 "  --max-new-tokens N           generation length (broker default: 128)\n"
                 "  --curve-secret FILE          this client's secret certificate (CURVE)\n"
                 "  --curve-server-public FILE   the broker's public certificate (CURVE)\n"
                 "  --version                    print libkosmos's version\n"
                 "Prints each image's caption, its grounded phrases with their boxes, and where it "
                 "ran.\n");
}

static void print_result(const char *image, const kosmos_result_t *r)
{
    printf("%s: job %s %s", image, kosmos_result_job_id(r),
           kosmos_result_status_name(kosmos_result_status(r)));
    if (kosmos_result_status(r) != KOSMOS_RESULT_OK)
        printf(" (%s%s)", kosmos_result_message(r),
               kosmos_result_retriable(r) ? ", retriable" : "");
    printf("\n  %ux%u pixels, worker %s on %s, attempt %u\n", kosmos_result_image_width(r),
           kosmos_result_image_height(r), kosmos_result_worker(r), kosmos_result_device(r),
           kosmos_result_attempt(r));
    for (size_t i = 0; i < kosmos_result_prompt_count(r); i++) {
        if (kosmos_result_prompt_status(r, i) != KOSMOS_RESULT_OK) {
            printf("  prompt %zu: %s: %s\n", i,
                   kosmos_result_status_name(kosmos_result_prompt_status(r, i)),
                   kosmos_result_prompt_message(r, i));
            continue;
        }
        printf("  text: %s\n", kosmos_result_text(r, i));
        if (kosmos_result_raw_text(r, i))
            printf("  raw:  %s\n", kosmos_result_raw_text(r, i));
        for (size_t j = 0; j < kosmos_result_entity_count(r, i); j++) {
            const kosmos_entity_t *e = kosmos_result_entity(r, i, j);
            for (size_t k = 0; k < e->box_count; k++) {
                const kosmos_box_t *b = &e->boxes[k];
                printf("  %-20s [%lld, %lld)  norm (%.4f %.4f %.4f %.4f)", e->phrase,
                       (long long)e->start_cp, (long long)e->end_cp, b->x1, b->y1, b->x2, b->y2);
                if (e->boxes_px)
                    printf("  px (%.1f %.1f %.1f %.1f)", e->boxes_px[k].x1, e->boxes_px[k].y1,
                           e->boxes_px[k].x2, e->boxes_px[k].y2);
                printf("\n");
            }
        }
        const kosmos_timings_t *t = kosmos_result_timings(r, i);
        if (t && t->new_tokens >= 0)
            printf("  %.0f ms decode for %lld tokens\n", t->decode_ms, (long long)t->new_tokens);
    }
}

int main(int argc, char **argv)
{
    const char *broker = "tcp://localhost:5555", *prompt = "<grounding> An image of";
    const char *client_id = NULL, *curve_secret = NULL, *curve_server = NULL;
    int timeout_ms = 120000, max_new_tokens = -1;
    int first_image = argc;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--version")) {
            printf("libkosmos %s\n", kosmos_version());
            return 0;
        } else if (!strncmp(a, "--", 2) && !v) {
            fprintf(stderr, "ground: %s needs a value\n", a);
            return 2;
        } else if (!strcmp(a, "--broker")) {
            broker = argv[++i];
        } else if (!strcmp(a, "--prompt")) {
            prompt = argv[++i];
        } else if (!strcmp(a, "--client-id")) {
            client_id = argv[++i];
        } else if (!strcmp(a, "--timeout-ms")) {
            timeout_ms = atoi(argv[++i]);
        } else if (!strcmp(a, "--max-new-tokens")) {
            max_new_tokens = atoi(argv[++i]);
        } else if (!strcmp(a, "--curve-secret")) {
            curve_secret = argv[++i];
        } else if (!strcmp(a, "--curve-server-public")) {
            curve_server = argv[++i];
        } else if (!strncmp(a, "--", 2)) {
            fprintf(stderr, "ground: unknown option %s\n", a);
            usage(stderr);
            return 2;
        } else {
            first_image = i;
            break;
        }
    }
    if (first_image >= argc) {
        usage(stderr);
        return 2;
    }

    kosmos_client_params_t params;
    kosmos_client_params_init(&params);
    params.broker = broker;
    params.client_id = client_id;
    char pub[KOSMOS_Z85_KEY_SIZE], sec[KOSMOS_Z85_KEY_SIZE], srv[KOSMOS_Z85_KEY_SIZE];
    if (curve_secret || curve_server) {
        if (!curve_secret || !curve_server ||
            kosmos_curve_load_cert(curve_secret, pub, sec) != KOSMOS_OK ||
            kosmos_curve_load_cert(curve_server, srv, NULL) != KOSMOS_OK) {
            fprintf(stderr, "ground: CURVE needs --curve-secret and --curve-server-public: %s\n",
                    kosmos_error_message());
            return 2;
        }
        params.curve_public_key = pub;
        params.curve_secret_key = sec;
        params.curve_server_key = srv;
    }
    kosmos_client_t *client = kosmos_client_new(&params);
    if (!client) {
        fprintf(stderr, "ground: %s\n", kosmos_error_message());
        return 1;
    }

    int n = argc - first_image, failures = 0;
    char(*ids)[KOSMOS_JOB_ID_SIZE] = calloc((size_t)n, sizeof *ids);
    kosmos_job_t *job = kosmos_job_new();
    if (!ids || !job) {
        fprintf(stderr, "ground: out of memory\n");
        failures = n;
        goto done;
    }
    kosmos_generation_t gen;
    kosmos_generation_init(&gen);
    gen.max_new_tokens = max_new_tokens;
    if (kosmos_job_add_prompt(job, prompt) != KOSMOS_OK ||
        kosmos_job_set_generation(job, &gen) != KOSMOS_OK) {
        fprintf(stderr, "ground: %s\n", kosmos_error_message());
        failures = n;
        goto done;
    }
    /* Submit everything first; the farm runs the jobs while we submit the next ones. */
    for (int i = 0; i < n; i++) {
        const char *image = argv[first_image + i];
        kosmos_submit_info_t info;
        if (kosmos_job_set_image_file(job, image) != KOSMOS_OK ||
            kosmos_client_submit(client, job, NULL, ids[i], &info) != KOSMOS_OK) {
            fprintf(stderr, "ground: %s: %s\n", image, kosmos_error_message());
            ids[i][0] = '\0';
            failures++;
        }
    }
    /* Then collect the results, in order. */
    for (int i = 0; i < n; i++) {
        if (!ids[i][0])
            continue;
        const char *image = argv[first_image + i];
        kosmos_result_t *r = NULL;
        if (kosmos_client_wait(client, ids[i], timeout_ms, &r) != KOSMOS_OK) {
            fprintf(stderr, "ground: %s (job %s): %s\n", image, ids[i], kosmos_error_message());
            failures++;
            continue;
        }
        print_result(image, r);
        if (kosmos_result_status(r) != KOSMOS_RESULT_OK)
            failures++;
        kosmos_result_destroy(&r);
        if (kosmos_client_ack(client, ids[i]) != KOSMOS_OK)
            fprintf(stderr, "ground: ack %s: %s\n", ids[i], kosmos_error_message());
    }
done:
    kosmos_job_destroy(&job);
    free(ids);
    kosmos_client_destroy(&client);
    return failures ? 1 : 0;
}
