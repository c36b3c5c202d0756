/* Checks for the C ABI test programs (run by CABITests.swift). Each failed check prints where
 * and the thread's last error; main returns the number of failures. */
#ifndef NETDMA_TEST_CHECK_H
#define NETDMA_TEST_CHECK_H
#include <netdma.h>
#include <stdio.h>
#include <string.h>

static int failures;

#define CHECK(cond, ...)                                                                   \
    do {                                                                                   \
        if (!(cond)) {                                                                     \
            fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);                \
            fprintf(stderr, __VA_ARGS__);                                                  \
            fprintf(stderr, " [last error %d: %s]\n", netdma_last_error_code(), netdma_last_error()); \
            failures++;                                                                    \
        }                                                                                  \
    } while (0)

/* expr must return `code`, and the thread's last error must be that code with a message
 * containing `words`. */
#define CHECK_CODE(expr, code, words)                                                      \
    do {                                                                                   \
        int got_ = (expr);                                                                 \
        CHECK(got_ == (code), "returned %d, expected %s (%d)", got_, #code, code);         \
        CHECK(netdma_last_error_code() == (code), "last error code %d", netdma_last_error_code()); \
        CHECK(strstr(netdma_last_error(), words) != NULL, "the message lacks \"%s\"", words); \
    } while (0)

/* expr must succeed (return >= 0). */
#define CHECK_OK(expr) CHECK((expr) >= 0, "failed")

/* Prints that case `id` ran (the Swift test checks every ID of README's table ran). */
#define CASE(id) printf("case %s\n", id)

/* Polls until n ops retired (or an error), at most ~10 s. */
static int drain(netdma_queue *q, int n, bool *failed) {
    int done = 0;
    for (long spins = 0; done < n && spins < 200000000L; spins++) {
        bool f = false;
        int c = netdma_completed(q, 64, NULL, &f);
        if (c < 0) return c;
        done += c;
        if (f) {
            *failed = true;
            return done;
        }
    }
    return done;
}
#endif
