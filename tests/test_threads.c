/* test_threads.c: mha.h's threading model, proven. Several threads each
 * own a context and use it at the same time: creating and destroying
 * contexts (every backend probed: the OpenCL ICD stack once crashed when
 * probed from two threads), and running host and device-tensor forwards on
 * cpu, vulkan:0 and opencl:0 at once, layers created and destroyed, every
 * result checked against one computed before the threads start. Threads
 * record what went wrong; the main thread asserts. scripts/test-tsan.sh
 * runs this suite under ThreadSanitizer. */
#include <criterion/criterion.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common.h"

enum { E = 32, H = 4, L = 5, S = 7, N = 2 };
enum { OUT_N = L * N * E, W_N = N * L * S };

/* Inputs, weights and the expected results: written before any thread
 * starts, only read by the threads. */
static float q_in[L * N * E], k_in[S * N * E], v_in[S * N * E];
static float w_in[3 * E * E], b_in[3 * E], wo_in[E * E], bo_in[E];
static float want_out[OUT_N], want_w[W_N];

static void fill_inputs(void)
{
    test_rng r = {42};
    float *arrays[] = {q_in, k_in, v_in, w_in, b_in, wo_in, bo_in};
    size_t sizes[] = {L * N * E, S * N * E, S * N * E, 3 * E * E, 3 * E,
                      E * E, E};
    for (size_t a = 0; a < sizeof sizes / sizeof *sizes; a++)
        for (size_t i = 0; i < sizes[a]; i++)
            arrays[a][i] = test_normal(&r) * 0.3f;
}

/* What one thread saw first going wrong ("" when nothing did). */
typedef struct job {
    const char *spec; /* device to open: "cpu", "vulkan:0", "opencl:0" */
    int rounds;
    int device_tensors; /* also run the device-tensor forward */
    int deferred;       /* keep the last host results in out and w for the
                           main thread to check, instead of checking them */
    float out[OUT_N], w[W_N];
    mha_context_options options;
    char error[512];
} job;

#define FAIL(j, ...)                                                       \
    do {                                                                   \
        if (!(j)->error[0])                                                \
            snprintf((j)->error, sizeof (j)->error, __VA_ARGS__);          \
        goto done;                                                         \
    } while (0)

static mha_status make_layer(mha_device *dev, mha_layer **out)
{
    mha_layer_config c;
    mha_layer_config_init(&c, E, H);
    mha_status st = mha_layer_create(dev, &c, out);
    int64_t sw[2] = {3 * E, E}, sb[1] = {3 * E}, so[2] = {E, E}, sob[1] = {E};
    if (st == MHA_OK)
        st = mha_layer_set_weight(*out, "in_proj_weight", w_in, 2, sw);
    if (st == MHA_OK)
        st = mha_layer_set_weight(*out, "in_proj_bias", b_in, 1, sb);
    if (st == MHA_OK)
        st = mha_layer_set_weight(*out, "out_proj.weight", wo_in, 2, so);
    if (st == MHA_OK)
        st = mha_layer_set_weight(*out, "out_proj.bias", bo_in, 1, sob);
    return st;
}

static mha_status host_forward(mha_layer *layer, int need_weights,
                               float *out, float *w)
{
    mha_host_forward_args a;
    mha_host_forward_args_init(&a);
    a.query = (mha_host_array){q_in, MHA_F32, 3, {L, N, E}};
    a.key = (mha_host_array){k_in, MHA_F32, 3, {S, N, E}};
    a.value = (mha_host_array){v_in, MHA_F32, 3, {S, N, E}};
    a.is_causal = 1;
    a.need_weights = need_weights;
    a.output = out;
    a.output_count = OUT_N;
    a.weights = w;
    a.weights_count = W_N;
    return mha_layer_forward_host(layer, &a);
}

/* query, key, value, output, weights as device tensors. */
static mha_status tensor_forward(mha_device *dev, mha_layer *layer,
                                 float *out, float *w)
{
    static const int64_t shapes[5][3] = {
        {L, N, E}, {S, N, E}, {S, N, E}, {L, N, E}, {N, L, S}};
    const float *src[3] = {q_in, k_in, v_in};
    mha_tensor *t[5] = {NULL};
    mha_status st = MHA_OK;
    for (int i = 0; i < 5 && st == MHA_OK; i++)
        st = mha_tensor_create(dev, MHA_F32, 3, shapes[i], &t[i]);
    for (int i = 0; i < 3 && st == MHA_OK; i++)
        st = mha_tensor_upload(t[i], src[i], (size_t)(shapes[i][0] *
                               shapes[i][1] * shapes[i][2]) * sizeof(float));
    mha_forward_args a;
    mha_forward_args_init(&a);
    a.query = t[0], a.key = t[1], a.value = t[2];
    a.output = t[3], a.weights = t[4];
    a.is_causal = 1;
    a.need_weights = 1;
    if (st == MHA_OK)
        st = mha_layer_forward(layer, &a);
    if (st == MHA_OK)
        st = mha_tensor_download(t[3], out, OUT_N * sizeof(float));
    if (st == MHA_OK)
        st = mha_tensor_download(t[4], w, W_N * sizeof(float));
    for (int i = 0; i < 5; i++)
        mha_tensor_destroy(t[i]);
    return st;
}

static double max_err(const float *got, const float *want, int n)
{
    double m = 0;
    for (int i = 0; i < n; i++) {
        double d = fabs((double)got[i] - (double)want[i]);
        m = isnan(d) || d > m ? (isnan(d) ? INFINITY : d) : m;
    }
    return m;
}

static void check_result(job *j, const char *what, const float *out,
                         const float *w)
{
    if (j->deferred) {
        memcpy(j->out, out, sizeof j->out);
        if (w)
            memcpy(j->w, w, sizeof j->w);
        return;
    }
    double eo = max_err(out, want_out, OUT_N);
    double ew = w ? max_err(w, want_w, W_N) : 0;
    if ((eo > 1e-4 || ew > 1e-4) && !j->error[0])
        snprintf(j->error, sizeof j->error,
                 "%s %s: output off by %g, weights by %g", j->spec, what, eo,
                 ew);
}

/* One round: a context, the device, two layers one after the other, each
 * running its forwards; everything destroyed. */
static void run_round(job *j, int round)
{
    mha_context *ctx = NULL;
    mha_device *dev = NULL;
    mha_layer *layer = NULL;
    float out[OUT_N], w[W_N];
    mha_status st = mha_context_create(&j->options, &ctx);
    if (st != MHA_OK)
        FAIL(j, "%s round %d: mha_context_create: %s", j->spec, round,
             mha_status_str(st));
    if ((st = mha_device_open(ctx, j->spec, NULL, &dev)) != MHA_OK)
        FAIL(j, "%s round %d: %s", j->spec, round, mha_context_errmsg(ctx));
    for (int l = 0; l < 2; l++) {
        if ((st = make_layer(dev, &layer)) != MHA_OK)
            FAIL(j, "%s: %s", j->spec, mha_context_errmsg(ctx));
        if ((st = host_forward(layer, (round + l) % 2, out, w)) != MHA_OK)
            FAIL(j, "%s: %s", j->spec, mha_context_errmsg(ctx));
        check_result(j, "host forward", out, (round + l) % 2 ? w : NULL);
        if (j->device_tensors) {
            if ((st = tensor_forward(dev, layer, out, w)) != MHA_OK)
                FAIL(j, "%s: %s", j->spec, mha_context_errmsg(ctx));
            check_result(j, "device-tensor forward", out, w);
        }
        mha_layer_destroy(layer);
        layer = NULL;
    }
done:
    mha_layer_destroy(layer);
    mha_device_destroy(dev);
    mha_context_destroy(ctx);
}

static void *run_job(void *arg)
{
    job *j = arg;
    for (int r = 0; r < j->rounds && !j->error[0]; r++)
        run_round(j, r);
    return NULL;
}

/* The expected results, from the cpu backend on the main thread. */
static void compute_expected(void)
{
    mha_context *ctx = NULL;
    mha_device *dev = NULL;
    mha_layer *layer = NULL;
    cr_assert_eq(mha_context_create(NULL, &ctx), MHA_OK);
    test_require_backends(ctx);
    cr_assert_eq(mha_device_open(ctx, "cpu", NULL, &dev), MHA_OK);
    cr_assert_eq(make_layer(dev, &layer), MHA_OK);
    cr_assert_eq(host_forward(layer, 1, want_out, want_w), MHA_OK, "%s",
                 mha_context_errmsg(ctx));
    mha_layer_destroy(layer);
    mha_device_destroy(dev);
    mha_context_destroy(ctx);
}

/* Whether this machine has a device for spec (a missing backend is
 * skipped here; test_require_backends already failed if CI needs it). */
static int has_device(const char *spec)
{
    mha_context *ctx = NULL;
    mha_device *dev = NULL;
    cr_assert_eq(mha_context_create(NULL, &ctx), MHA_OK);
    int ok = mha_device_open(ctx, spec, NULL, &dev) == MHA_OK;
    mha_device_destroy(dev);
    mha_context_destroy(ctx);
    return ok;
}

static void run_jobs(job *jobs, int n)
{
    pthread_t th[16];
    cr_assert_leq(n, 16);
    for (int i = 0; i < n; i++)
        cr_assert_eq(pthread_create(&th[i], NULL, run_job, &jobs[i]), 0);
    for (int i = 0; i < n; i++)
        pthread_join(th[i], NULL);
    for (int i = 0; i < n; i++)
        cr_expect_str_empty(jobs[i].error, "thread %d: %s", i, jobs[i].error);
}

static job make_job(const char *spec, int rounds, int device_tensors)
{
    job j;
    memset(&j, 0, sizeof j);
    j.spec = spec;
    j.rounds = rounds;
    j.device_tensors = device_tensors;
    mha_context_options_init(&j.options);
    return j;
}

/* Four threads that only ever use the cpu device, but whose contexts
 * probe every backend at the same time, the first probe of the process
 * included; returns how many threads failed. */
static int first_probes_race(job jobs[4])
{
    for (int i = 0; i < 4; i++) {
        jobs[i] = make_job("cpu", 2, 0);
        jobs[i].deferred = 1;
    }
    pthread_t th[4];
    for (int i = 0; i < 4; i++)
        if (pthread_create(&th[i], NULL, run_job, &jobs[i]) != 0)
            return 4;
    for (int i = 0; i < 4; i++)
        pthread_join(th[i], NULL);
    int failed = 0;
    for (int i = 0; i < 4; i++)
        if (jobs[i].error[0]) {
            fprintf(stderr, "thread %d: %s\n", i, jobs[i].error);
            failed++;
        }
    return failed;
}

/* Under AddressSanitizer: PoCL's LLVM gives the thread that first starts
 * it an alternate signal stack from malloc, which ASan would try to unmap
 * when that thread ends (and abort: "unable to unmap"). ASan's own
 * alternate stacks are not needed by these tests. */
#if defined(__SANITIZE_ADDRESS__)
#define TEST_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define TEST_ASAN 1
#endif
#endif
#ifdef TEST_ASAN
const char *__asan_default_options(void);
const char *__asan_default_options(void) { return "use_sigaltstack=0"; }
#endif

/* Issue 12, defect 1: PoCL crashed in clGetDeviceInfo when the first
 * probes of a process ran concurrently (in about two runs of three). Each
 * of several child processes gets its own first probe; the expected
 * results are computed once the race is over. */
Test(threads, contexts_created_and_destroyed_concurrently, .timeout = 240)
{
    fill_inputs();
    enum { CHILDREN = 8 };
    for (int c = 0; c < CHILDREN; c++) {
        pid_t pid = fork();
        cr_assert_geq(pid, 0);
        if (pid == 0) {
            job jobs[4];
            _exit(first_probes_race(jobs));
        }
        int status = 0;
        cr_assert_eq(waitpid(pid, &status, 0), pid);
        cr_assert(WIFEXITED(status), "child %d died (signal %d)", c,
                  WIFSIGNALED(status) ? WTERMSIG(status) : 0);
        cr_assert_eq(WEXITSTATUS(status), 0, "child %d: %d threads failed",
                     c, WEXITSTATUS(status));
    }
    job jobs[4];
    cr_assert_eq(first_probes_race(jobs), 0);
    compute_expected();
    for (int i = 0; i < 4; i++) {
        jobs[i].deferred = 0;
        check_result(&jobs[i], "host forward", jobs[i].out, jobs[i].w);
        cr_expect_str_empty(jobs[i].error, "thread %d: %s", i, jobs[i].error);
    }
}

/* Each thread its own context on one device, two threads per backend, all
 * at once: host and device-tensor forwards, layers made and destroyed. */
Test(threads, cpu_vulkan_opencl_at_once, .timeout = 300)
{
    fill_inputs();
    compute_expected();
    static const char *const specs[] = {"cpu", "vulkan:0", "opencl:0"};
    job jobs[6];
    int n = 0;
    for (int i = 0; i < 6; i++)
        if (has_device(specs[i % 3]))
            jobs[n++] = make_job(specs[i % 3], 2, 1);
    cr_assert_gt(n, 0);
    run_jobs(jobs, n);
}
