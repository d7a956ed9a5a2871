/* criterion.h: a small stand-in for the part of Criterion 2.4's API that
 * libmha's CPU suites (test_cpu_kernels.c, test_ops.c, test_torch.c and
 * common.c) use. It exists because Criterion's runner does not start under
 * qemu-user on the CI host (Debian 12, qemu 7.2: even a trivial Criterion
 * test aborts with "Could not spawn test instance: Protocol error"), and the
 * AArch64 cross build must run those suites under qemu-aarch64 to test the
 * NEON kernels. Only that build and the ThreadSanitizer build (whose
 * shadow memory Criterion's runner collides with) use it
 * (tests/CMakeLists.txt puts tests/qemu on the include path when
 * CMAKE_CROSSCOMPILING or MHA_TSAN); native builds use the real Criterion.
 *
 * What it does: Test(suite, name, options...) registers the test from a
 * constructor; main() runs the tests one after another in this process, in
 * the order they are defined. A failed cr_assert_* ends the test (longjmp
 * back to the runner); a failed cr_expect_* records the failure and goes
 * on; cr_skip_test ends it as skipped. Each failure prints file:line and
 * the message, formatted with printf as Criterion does (the message and its
 * arguments are optional; a message must be a string literal). The last line
 * is "N passed, N failed, N skipped"; the exit status is 0 only when no test
 * failed.
 *
 * Options: --filter GLOB (fnmatch on "suite/name"), --list, --verbose;
 * --jobs N and -jN are accepted and ignored. Test options .init, .fini,
 * .disabled and .description work; .timeout is ignored.
 *
 * What it does not do: no fork per test, so a crash ends the run (the
 * crashing test is named first) and state leaks from one test to the next;
 * assertions must run on the test's own thread; no parameterized tests,
 * theories, fixtures per suite or output redirection.
 *
 * Every translation unit that includes this header gets weak definitions of
 * the runner's state, its helpers and main(); the linker keeps one of each,
 * so a test can include it from helper files (common.c) too. */
#ifndef MHA_QEMU_CRITERION_H
#define MHA_QEMU_CRITERION_H

#include <fnmatch.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CRQ_WEAK_ __attribute__((weak))
#define CRQ_PRINTF_(f, a) __attribute__((format(printf, f, a)))

/* The options a test may give: Test(s, n, .init = setup, .disabled = 1). */
struct criterion_test_extra_data {
    int crq_unused_; /* lets Test() initialise the struct with no option */
    void (*init)(void);
    void (*fini)(void);
    int disabled;
    const char *description;
    double timeout;
};

struct crq_test_ {
    const char *suite, *name, *file;
    int line;
    void (*fn)(void);
    struct criterion_test_extra_data opts;
    struct crq_test_ *next;
};

struct crq_state_ {
    struct crq_test_ *first, *last; /* the registered tests, in order */
    const struct crq_test_ *current;
    jmp_buf jump;           /* where a failed assertion or a skip goes */
    int failed, skipped;    /* of the current test */
    int n_passed, n_failed, n_skipped;
    int verbose;
};

CRQ_WEAK_ struct crq_state_ crq_state_;

CRQ_WEAK_ void crq_register_(struct crq_test_ *t)
{
    if (crq_state_.last)
        crq_state_.last->next = t;
    else
        crq_state_.first = t;
    crq_state_.last = t;
}

/* Prints "file:line: suite/name: message"; fmt starts with a space that the
 * check macros add so an absent message is a valid format (see CRQ_CHECK_). */
CRQ_WEAK_ void crq_vreport_(const char *file, int line, const char *expr,
                            const char *fmt, va_list ap)
{
    char msg[1024];
    vsnprintf(msg, sizeof msg, fmt, ap);
    const char *m = msg[0] == ' ' ? msg + 1 : msg;
    const struct crq_test_ *t = crq_state_.current;
    fprintf(stderr, "%s:%d: %s%s%s: %s\n", file, line, t ? t->suite : "",
            t ? "/" : "", t ? t->name : "",
            *m ? m : expr);
}

CRQ_WEAK_ CRQ_PRINTF_(4, 5) void crq_expect_fail_(const char *file, int line,
                                                  const char *expr,
                                                  const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    crq_vreport_(file, line, expr, fmt, ap);
    va_end(ap);
    crq_state_.failed = 1;
}

CRQ_WEAK_ CRQ_PRINTF_(4, 5) _Noreturn void crq_assert_fail_(const char *file,
                                                            int line,
                                                            const char *expr,
                                                            const char *fmt,
                                                            ...)
{
    va_list ap;
    va_start(ap, fmt);
    crq_vreport_(file, line, expr, fmt, ap);
    va_end(ap);
    crq_state_.failed = 1;
    longjmp(crq_state_.jump, 1);
}

CRQ_WEAK_ CRQ_PRINTF_(1, 2) _Noreturn void crq_skip_(const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    const struct crq_test_ *t = crq_state_.current;
    fprintf(stderr, "[SKIP] %s/%s: %s\n", t ? t->suite : "?",
            t ? t->name : "?", msg[0] == ' ' ? msg + 1 : msg);
    crq_state_.skipped = 1;
    longjmp(crq_state_.jump, 1);
}

CRQ_WEAK_ CRQ_PRINTF_(2, 3) void crq_log_(const char *level, const char *fmt,
                                          ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "[%s] ", level);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

/* ---- test definition ---------------------------------------------------- */

#define Test(suite, name, ...)                                                \
    static void crq_fn_##suite##_##name(void);                                \
    static struct crq_test_ crq_t_##suite##_##name = {                        \
        #suite, #name, __FILE__, __LINE__, crq_fn_##suite##_##name,           \
        {.crq_unused_ = 0, __VA_ARGS__}, NULL};                               \
    __attribute__((constructor)) static void crq_reg_##suite##_##name(void)  \
    {                                                                         \
        crq_register_(&crq_t_##suite##_##name);                               \
    }                                                                         \
    static void crq_fn_##suite##_##name(void)

/* ---- assertions ----------------------------------------------------------- */

/* how: crq_assert_fail_ (ends the test) or crq_expect_fail_ (goes on). The
 * message, when given, is a string literal and its arguments; " " in front
 * keeps the format non-empty when there is none. */
#define CRQ_CHECK_(how, cond, expr, ...)                                      \
    do {                                                                      \
        if (!(cond))                                                          \
            how(__FILE__, __LINE__, expr, " " __VA_ARGS__);                   \
    } while (0)
#define CRQ_HEAD_(x, ...) x
#define CRQ_TAIL_(x, ...) __VA_ARGS__
#define CRQ_STR_(x) #x
#define CRQ_XSTR_(x) CRQ_STR_(x)
/* (a, b, message...) */
#define CRQ_CMP_(how, op, a, ...)                                             \
    CRQ_CHECK_(how, (a) op (CRQ_HEAD_(__VA_ARGS__, ~)),                       \
               "expected (" #a ") " #op " ("                                  \
               CRQ_XSTR_(CRQ_HEAD_(__VA_ARGS__, ~)) ")",                      \
               CRQ_TAIL_(__VA_ARGS__))
#define CRQ_STRCMP_(how, op, a, ...)                                          \
    CRQ_CHECK_(how, strcmp((a), (CRQ_HEAD_(__VA_ARGS__, ~))) op 0,            \
               "expected string (" #a ") " #op " ("                           \
               CRQ_XSTR_(CRQ_HEAD_(__VA_ARGS__, ~)) ")",                      \
               CRQ_TAIL_(__VA_ARGS__))
/* (a, b, size, message...) */
#define CRQ_ARR_(how, op, a, b, ...)                                          \
    CRQ_CHECK_(how, memcmp((a), (b), CRQ_HEAD_(__VA_ARGS__, ~)) op 0,         \
               "expected the first " CRQ_XSTR_(CRQ_HEAD_(__VA_ARGS__, ~))     \
               " bytes of (" #a ") " #op " (" #b ")",                         \
               CRQ_TAIL_(__VA_ARGS__))
#define CRQ_FEQ_(how, a, b, ...)                                              \
    CRQ_CHECK_(how,                                                           \
               (a) - (b) <= (CRQ_HEAD_(__VA_ARGS__, ~)) &&                    \
                   (b) - (a) <= (CRQ_HEAD_(__VA_ARGS__, ~)),                  \
               "expected (" #a ") == (" #b ") within "                        \
               CRQ_XSTR_(CRQ_HEAD_(__VA_ARGS__, ~)),                          \
               CRQ_TAIL_(__VA_ARGS__))
#define CRQ_FNE_(how, a, b, ...)                                              \
    CRQ_CHECK_(how,                                                           \
               (a) - (b) > (CRQ_HEAD_(__VA_ARGS__, ~)) ||                     \
                   (b) - (a) > (CRQ_HEAD_(__VA_ARGS__, ~)),                   \
               "expected (" #a ") != (" #b ") beyond "                        \
               CRQ_XSTR_(CRQ_HEAD_(__VA_ARGS__, ~)),                          \
               CRQ_TAIL_(__VA_ARGS__))

#define cr_assert(c, ...) \
    CRQ_CHECK_(crq_assert_fail_, c, "expected " #c, __VA_ARGS__)
#define cr_expect(c, ...) \
    CRQ_CHECK_(crq_expect_fail_, c, "expected " #c, __VA_ARGS__)
#define cr_assert_not(c, ...) \
    CRQ_CHECK_(crq_assert_fail_, !(c), "expected !(" #c ")", __VA_ARGS__)
#define cr_expect_not(c, ...) \
    CRQ_CHECK_(crq_expect_fail_, !(c), "expected !(" #c ")", __VA_ARGS__)
#define cr_assert_fail(...) \
    crq_assert_fail_(__FILE__, __LINE__, "cr_assert_fail()", " " __VA_ARGS__)
#define cr_expect_fail(...) \
    crq_expect_fail_(__FILE__, __LINE__, "cr_expect_fail()", " " __VA_ARGS__)

#define cr_assert_null(p, ...)                                          \
    CRQ_CHECK_(crq_assert_fail_, (p) == NULL, "expected (" #p ") == NULL", \
               __VA_ARGS__)
#define cr_expect_null(p, ...)                                          \
    CRQ_CHECK_(crq_expect_fail_, (p) == NULL, "expected (" #p ") == NULL", \
               __VA_ARGS__)
#define cr_assert_not_null(p, ...)                                      \
    CRQ_CHECK_(crq_assert_fail_, (p) != NULL, "expected (" #p ") != NULL", \
               __VA_ARGS__)
#define cr_expect_not_null(p, ...)                                      \
    CRQ_CHECK_(crq_expect_fail_, (p) != NULL, "expected (" #p ") != NULL", \
               __VA_ARGS__)

#define cr_assert_eq(a, ...) CRQ_CMP_(crq_assert_fail_, ==, a, __VA_ARGS__)
#define cr_assert_neq(a, ...) CRQ_CMP_(crq_assert_fail_, !=, a, __VA_ARGS__)
#define cr_assert_lt(a, ...) CRQ_CMP_(crq_assert_fail_, <, a, __VA_ARGS__)
#define cr_assert_leq(a, ...) CRQ_CMP_(crq_assert_fail_, <=, a, __VA_ARGS__)
#define cr_assert_gt(a, ...) CRQ_CMP_(crq_assert_fail_, >, a, __VA_ARGS__)
#define cr_assert_geq(a, ...) CRQ_CMP_(crq_assert_fail_, >=, a, __VA_ARGS__)
#define cr_expect_eq(a, ...) CRQ_CMP_(crq_expect_fail_, ==, a, __VA_ARGS__)
#define cr_expect_neq(a, ...) CRQ_CMP_(crq_expect_fail_, !=, a, __VA_ARGS__)
#define cr_expect_lt(a, ...) CRQ_CMP_(crq_expect_fail_, <, a, __VA_ARGS__)
#define cr_expect_leq(a, ...) CRQ_CMP_(crq_expect_fail_, <=, a, __VA_ARGS__)
#define cr_expect_gt(a, ...) CRQ_CMP_(crq_expect_fail_, >, a, __VA_ARGS__)
#define cr_expect_geq(a, ...) CRQ_CMP_(crq_expect_fail_, >=, a, __VA_ARGS__)

#define cr_assert_str_eq(a, ...) \
    CRQ_STRCMP_(crq_assert_fail_, ==, a, __VA_ARGS__)
#define cr_assert_str_neq(a, ...) \
    CRQ_STRCMP_(crq_assert_fail_, !=, a, __VA_ARGS__)
#define cr_expect_str_eq(a, ...) \
    CRQ_STRCMP_(crq_expect_fail_, ==, a, __VA_ARGS__)
#define cr_expect_str_neq(a, ...) \
    CRQ_STRCMP_(crq_expect_fail_, !=, a, __VA_ARGS__)
#define cr_assert_str_empty(s, ...) \
    CRQ_CHECK_(crq_assert_fail_, (s)[0] == '\0', \
               "expected (" #s ") to be empty", __VA_ARGS__)
#define cr_expect_str_empty(s, ...) \
    CRQ_CHECK_(crq_expect_fail_, (s)[0] == '\0', \
               "expected (" #s ") to be empty", __VA_ARGS__)
#define cr_assert_str_not_empty(s, ...) \
    CRQ_CHECK_(crq_assert_fail_, (s)[0] != '\0', \
               "expected (" #s ") not to be empty", __VA_ARGS__)
#define cr_expect_str_not_empty(s, ...) \
    CRQ_CHECK_(crq_expect_fail_, (s)[0] != '\0', \
               "expected (" #s ") not to be empty", __VA_ARGS__)

#define cr_assert_arr_eq(a, b, ...) \
    CRQ_ARR_(crq_assert_fail_, ==, a, b, __VA_ARGS__)
#define cr_assert_arr_neq(a, b, ...) \
    CRQ_ARR_(crq_assert_fail_, !=, a, b, __VA_ARGS__)
#define cr_expect_arr_eq(a, b, ...) \
    CRQ_ARR_(crq_expect_fail_, ==, a, b, __VA_ARGS__)
#define cr_expect_arr_neq(a, b, ...) \
    CRQ_ARR_(crq_expect_fail_, !=, a, b, __VA_ARGS__)

#define cr_assert_float_eq(a, b, ...) \
    CRQ_FEQ_(crq_assert_fail_, a, b, __VA_ARGS__)
#define cr_expect_float_eq(a, b, ...) \
    CRQ_FEQ_(crq_expect_fail_, a, b, __VA_ARGS__)
#define cr_assert_float_neq(a, b, ...) \
    CRQ_FNE_(crq_assert_fail_, a, b, __VA_ARGS__)
#define cr_expect_float_neq(a, b, ...) \
    CRQ_FNE_(crq_expect_fail_, a, b, __VA_ARGS__)

#define cr_skip_test(...) crq_skip_(" " __VA_ARGS__)
#define cr_log_info(...) crq_log_("INFO", __VA_ARGS__)
#define cr_log_warn(...) crq_log_("WARN", __VA_ARGS__)
#define cr_log_error(...) crq_log_("ERROR", __VA_ARGS__)

/* ---- the runner ----------------------------------------------------------- */

/* A crash cannot be survived in-process: name the test, then die of it. */
CRQ_WEAK_ void crq_on_signal_(int sig)
{
    const struct crq_test_ *t = crq_state_.current;
    fprintf(stderr, "[CRASH] %s/%s: signal %d\n", t ? t->suite : "?",
            t ? t->name : "?", sig);
    signal(sig, SIG_DFL);
    raise(sig);
}

/* Runs one test; kept apart from main so that no local of main lives across
 * setjmp. Returns 1 if it failed, 0 if it passed and -1 if it was skipped. */
CRQ_WEAK_ int crq_run_one_(const struct crq_test_ *t)
{
    crq_state_.current = t;
    crq_state_.failed = crq_state_.skipped = 0;
    if (setjmp(crq_state_.jump) == 0) {
        if (t->opts.init)
            t->opts.init();
        t->fn();
    }
    if (t->opts.fini && setjmp(crq_state_.jump) == 0)
        t->opts.fini();
    crq_state_.current = NULL;
    return crq_state_.failed ? 1 : crq_state_.skipped ? -1 : 0;
}

CRQ_WEAK_ int main(int argc, char **argv)
{
    const char *filter = NULL;
    int list = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--filter") == 0 && i + 1 < argc)
            filter = argv[++i];
        else if (strncmp(a, "--filter=", 9) == 0)
            filter = a + 9;
        else if ((strcmp(a, "--jobs") == 0 || strcmp(a, "-j") == 0) &&
                 i + 1 < argc)
            i++; /* one process runs everything: ignored */
        else if (strncmp(a, "--jobs=", 7) == 0 || strncmp(a, "-j", 2) == 0)
            ;
        else if (strcmp(a, "--list") == 0 || strcmp(a, "-l") == 0)
            list = 1;
        else if (strncmp(a, "--verbose", 9) == 0)
            crq_state_.verbose = 1;
        else {
            fprintf(stderr,
                    "%s: unknown option %s (this is the qemu stand-in for "
                    "Criterion, tests/qemu/criterion/criterion.h; it takes "
                    "--filter GLOB, --list, --verbose, --jobs N)\n",
                    argv[0], a);
            return 2;
        }
    }
    static const int fatal[] = {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT};
    for (size_t i = 0; i < sizeof fatal / sizeof *fatal; i++)
        signal(fatal[i], crq_on_signal_);

    for (const struct crq_test_ *t = crq_state_.first; t; t = t->next) {
        char full[256];
        snprintf(full, sizeof full, "%s/%s", t->suite, t->name);
        if (filter && fnmatch(filter, full, 0) != 0)
            continue;
        if (list) {
            printf("%s\n", full);
            continue;
        }
        if (t->opts.disabled) {
            fprintf(stderr, "[SKIP] %s: disabled\n", full);
            crq_state_.n_skipped++;
            continue;
        }
        int r = crq_run_one_(t);
        if (r > 0) {
            fprintf(stderr, "[FAIL] %s\n", full);
            crq_state_.n_failed++;
        } else if (r < 0) {
            crq_state_.n_skipped++;
        } else {
            if (crq_state_.verbose)
                fprintf(stderr, "[PASS] %s\n", full);
            crq_state_.n_passed++;
        }
    }
    if (list)
        return 0;
    fprintf(stderr, "%d passed, %d failed, %d skipped\n", crq_state_.n_passed,
            crq_state_.n_failed, crq_state_.n_skipped);
    return crq_state_.n_failed ? 1 : 0;
}

#endif /* MHA_QEMU_CRITERION_H */
