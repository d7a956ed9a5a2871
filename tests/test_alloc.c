/* test_alloc.c: out-of-memory behaviour through the public allocator hook
 * (mha_context_options.allocator), SQLite-style fault injection: an
 * allocator that counts live blocks fails its Nth call, for N = 1, 2, ...
 * until a whole scenario runs clean. Every step must succeed or return
 * MHA_OUT_OF_MEMORY, retrying the failed step with memory back must work,
 * and tearing down must leave no block live. Also checks the plan arena
 * promise: a repeated forward shape allocates nothing. (cJSON inside the
 * safetensors loader uses the C heap and is exempt, as mha.h says.) */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "mha.h"

#define FIXTURE MHA_FIXTURE_DIR "/self_basic_e16_h2.safetensors"
#define FIXTURE2 MHA_FIXTURE_DIR "/self_batch_first_e16_h2.safetensors"
#define MAX_N 5000 /* no scenario here needs this many allocations */

/* ---- the failing, counting allocator ------------------------------------- */

typedef struct counter {
    long live;    /* blocks handed out and not yet freed */
    long calls;   /* malloc calls so far */
    long fail_at; /* the call that returns NULL; 0: none */
    long failed;  /* calls that returned NULL */
} counter;

static void *count_malloc(void *user, size_t size)
{
    counter *c = user;
    c->calls++;
    if (c->fail_at && c->calls == c->fail_at) {
        c->failed++;
        return NULL;
    }
    void *p = malloc(size);
    if (p)
        c->live++;
    return p;
}

static void count_free(void *user, void *ptr)
{
    counter *c = user;
    if (!ptr)
        return;
    c->live--;
    free(ptr);
}

/* ---- the scenario -------------------------------------------------------- */

enum { E = 16, H = 2, L = 5, N = 2, L2 = 7 };

typedef struct scenario {
    counter c;
    mha_allocator alloc;
    mha_context *ctx;
    mha_device *dev;
    mha_layer *layer;
    mha_tensor *t[5]; /* device-tensor scenario: q, k, v, out, weights */
    float q[L2 * N * E], k[L2 * N * E], v[L2 * N * E];
    float out[L2 * N * E], w[N * L2 * L2];
} scenario;

static void fill(float *p, size_t n, unsigned seed)
{
    for (size_t i = 0; i < n; i++) {
        seed = seed * 1664525u + 1013904223u;
        p[i] = (float)((seed >> 12) % 1024) / 512.0f - 1.0f;
    }
}

static void scenario_init(scenario *s, long fail_at)
{
    memset(s, 0, sizeof *s);
    s->c.fail_at = fail_at;
    s->alloc.malloc = count_malloc;
    s->alloc.free = count_free;
    s->alloc.user = &s->c;
    fill(s->q, L2 * N * E, 1);
    fill(s->k, L2 * N * E, 2);
    fill(s->v, L2 * N * E, 3);
}

static mha_status step_context(scenario *s)
{
    mha_context_options o;
    mha_context_options_init(&o);
    o.allocator = &s->alloc;
    return mha_context_create(&o, &s->ctx);
}

static mha_status step_device(scenario *s)
{
    mha_device_options o;
    mha_device_options_init(&o);
    o.threads = 2;
    return mha_device_open(s->ctx, "cpu", &o, &s->dev);
}

static mha_status step_layer(scenario *s)
{
    mha_layer_config cfg;
    mha_layer_config_init(&cfg, E, H);
    return mha_layer_create(s->dev, &cfg, &s->layer);
}

static mha_status step_load(scenario *s)
{
    return mha_layer_load_safetensors(s->layer, FIXTURE, "mha.");
}

static mha_status host_forward(scenario *s, int len, int need_weights)
{
    mha_host_forward_args a;
    mha_host_forward_args_init(&a);
    mha_host_array q = {s->q, MHA_F32, 3, {len, N, E, 0}};
    mha_host_array k = {s->k, MHA_F32, 3, {len, N, E, 0}};
    mha_host_array v = {s->v, MHA_F32, 3, {len, N, E, 0}};
    a.query = q;
    a.key = k;
    a.value = v;
    a.need_weights = need_weights;
    a.output = s->out;
    a.output_count = L2 * N * E;
    a.weights = s->w;
    a.weights_count = N * L2 * L2;
    return mha_layer_forward_host(s->layer, &a);
}

static mha_status step_forward(scenario *s) { return host_forward(s, L, 1); }

static mha_status make_tensor(scenario *s, int i, int64_t d0, int64_t d1,
                              int64_t d2, const float *data)
{
    int64_t shape[3] = {d0, d1, d2};
    mha_status st = mha_tensor_create(s->dev, MHA_F32, 3, shape, &s->t[i]);
    if (st == MHA_OK && data)
        st = mha_tensor_upload(s->t[i], data, (size_t)(d0 * d1 * d2) * 4);
    return st;
}

static mha_status step_tensors(scenario *s)
{
    const float *data[3] = {s->q, s->k, s->v};
    mha_status st = MHA_OK;
    for (int i = 0; i < 3 && st == MHA_OK; i++)
        if (!s->t[i])
            st = make_tensor(s, i, L, N, E, data[i]);
    if (st == MHA_OK && !s->t[3])
        st = make_tensor(s, 3, L, N, E, NULL);
    if (st == MHA_OK && !s->t[4])
        st = make_tensor(s, 4, N, L, L, NULL);
    return st;
}

static mha_status step_device_forward(scenario *s)
{
    mha_forward_args a;
    mha_forward_args_init(&a);
    a.query = s->t[0];
    a.key = s->t[1];
    a.value = s->t[2];
    a.output = s->t[3];
    a.weights = s->t[4];
    a.need_weights = 1;
    mha_status st = mha_layer_forward(s->layer, &a);
    if (st == MHA_OK)
        st = mha_tensor_download(s->t[3], s->out, L * N * E * 4);
    return st;
}

/* Destroys what exists, innermost first; every destroy must succeed. */
static void scenario_teardown(scenario *s)
{
    for (int i = 0; i < 5; i++)
        cr_assert_eq(mha_tensor_destroy(s->t[i]), MHA_OK);
    cr_assert_eq(mha_layer_destroy(s->layer), MHA_OK);
    cr_assert_eq(mha_device_destroy(s->dev), MHA_OK);
    cr_assert_eq(mha_context_destroy(s->ctx), MHA_OK);
    memset(s->t, 0, sizeof s->t);
    s->layer = NULL;
    s->dev = NULL;
    s->ctx = NULL;
}

typedef struct step {
    const char *name;
    mha_status (*run)(scenario *s);
    int forward; /* produces s->out, compared with the clean run */
} step;

static const step host_steps[] = {
    {"context create", step_context, 0}, {"device open cpu", step_device, 0},
    {"layer create", step_layer, 0},     {"load safetensors", step_load, 0},
    {"host forward", step_forward, 1},   {"second host forward",
                                          step_forward, 1},
};

static const step device_steps[] = {
    {"context create", step_context, 0}, {"device open cpu", step_device, 0},
    {"layer create", step_layer, 0},     {"load safetensors", step_load, 0},
    {"tensors", step_tensors, 0},        {"device forward",
                                          step_device_forward, 1},
    {"second device forward", step_device_forward, 1},
};

/* Runs steps with the fail_at-th allocation failing. Returns 1 when an
 * allocation failed (so a larger fail_at is worth trying). */
static int run_with_failure(const step *steps, int nsteps, long fail_at,
                            const float *want_out)
{
    static scenario s;
    scenario_init(&s, fail_at);
    for (int i = 0; i < nsteps; i++) {
        mha_status st = steps[i].run(&s);
        if (st == MHA_OK) {
            cr_assert_eq(s.c.failed, 0,
                         "N=%ld: %s swallowed a failed allocation", fail_at,
                         steps[i].name);
            continue;
        }
        cr_assert_eq(st, MHA_OUT_OF_MEMORY, "N=%ld: %s returned %s: %s",
                     fail_at, steps[i].name, mha_status_str(st),
                     mha_context_errmsg(s.ctx));
        /* memory is back: the same step now works on the same objects */
        s.c.fail_at = 0;
        st = steps[i].run(&s);
        cr_assert_eq(st, MHA_OK, "N=%ld: retrying %s: %s: %s", fail_at,
                     steps[i].name, mha_status_str(st),
                     mha_context_errmsg(s.ctx));
        if (steps[i].forward)
            cr_assert_arr_eq(s.out, want_out, L * N * E * sizeof(float),
                             "N=%ld: retried %s gives another result",
                             fail_at, steps[i].name);
        scenario_teardown(&s);
        cr_assert_eq(s.c.live, 0, "N=%ld: %ld block(s) leaked after %s",
                     fail_at, s.c.live, steps[i].name);
        return 1;
    }
    if (want_out)
        cr_assert_arr_eq(s.out, want_out, L * N * E * sizeof(float));
    scenario_teardown(&s);
    cr_assert_eq(s.c.live, 0, "N=%ld: %ld block(s) leaked", fail_at,
                 s.c.live);
    return s.c.failed != 0;
}

static void fault_inject(const step *steps, int nsteps)
{
    static float want[L2 * N * E];
    static scenario clean;
    scenario_init(&clean, 0);
    for (int i = 0; i < nsteps; i++)
        cr_assert_eq(steps[i].run(&clean), MHA_OK, "clean run: %s: %s",
                     steps[i].name, mha_context_errmsg(clean.ctx));
    memcpy(want, clean.out, sizeof want);
    long total = clean.c.calls;
    scenario_teardown(&clean);
    cr_assert_eq(clean.c.live, 0, "clean run leaked %ld block(s)",
                 clean.c.live);
    cr_assert_gt(total, 5, "only %ld allocations: the hook is not used",
                 total);
    long n = 1;
    while (n < MAX_N && run_with_failure(steps, nsteps, n, want))
        n++;
    cr_assert_lt(n, MAX_N);
    cr_assert_geq(n, total, "scenario ran clean at N=%ld of %ld", n, total);
    cr_log_info("fault injection: %ld allocation points checked", n - 1);
}

Test(alloc, every_failed_allocation_in_the_host_scenario_is_clean_oom,
     .timeout = 120)
{
    fault_inject(host_steps, sizeof host_steps / sizeof *host_steps);
}

Test(alloc, every_failed_allocation_in_the_device_scenario_is_clean_oom,
     .timeout = 120)
{
    fault_inject(device_steps, sizeof device_steps / sizeof *device_steps);
}

/* ---- the plan arena promise ---------------------------------------------- */

static void open_loaded(scenario *s)
{
    scenario_init(s, 0);
    cr_assert_eq(step_context(s), MHA_OK);
    cr_assert_eq(step_device(s), MHA_OK);
    cr_assert_eq(step_layer(s), MHA_OK);
    cr_assert_eq(step_load(s), MHA_OK, "%s", mha_context_errmsg(s->ctx));
}

static long calls_of(scenario *s, int len, int need_weights)
{
    long before = s->c.calls;
    cr_assert_eq(host_forward(s, len, need_weights), MHA_OK, "%s",
                 mha_context_errmsg(s->ctx));
    return s->c.calls - before;
}

Test(alloc, repeated_forward_shape_allocates_nothing)
{
    static scenario s;
    open_loaded(&s);
    for (int nw = 0; nw < 2; nw++) {
        cr_expect_gt(calls_of(&s, L, nw), 0,
                     "first forward (need_weights %d) allocated nothing", nw);
        long live = s.c.live;
        for (int i = 0; i < 3; i++)
            cr_expect_eq(calls_of(&s, L, nw), 0,
                         "repeat %d (need_weights %d) allocated", i, nw);
        cr_expect_eq(s.c.live, live);
    }
    cr_expect_gt(calls_of(&s, L2, 1), 0, "a new shape allocated nothing");
    cr_expect_eq(calls_of(&s, L2, 1), 0, "the new shape again allocated");
    cr_expect_eq(calls_of(&s, L, 1), 0, "the first shape, still cached");
    scenario_teardown(&s);
    cr_expect_eq(s.c.live, 0);
}

Test(alloc, repeated_device_forward_allocates_nothing)
{
    static scenario s;
    open_loaded(&s);
    cr_assert_eq(step_tensors(&s), MHA_OK);
    cr_assert_eq(step_device_forward(&s), MHA_OK, "%s",
                 mha_context_errmsg(s.ctx));
    long before = s.c.calls;
    for (int i = 0; i < 3; i++)
        cr_assert_eq(step_device_forward(&s), MHA_OK);
    cr_expect_eq(s.c.calls, before, "%ld allocations in repeated forwards",
                 s.c.calls - before);
    scenario_teardown(&s);
    cr_expect_eq(s.c.live, 0);
}

/* ---- a load that runs out of memory keeps the previous weights ----------- */

Test(alloc, load_failing_for_memory_keeps_previous_weights)
{
    static scenario s;
    open_loaded(&s);
    cr_assert_eq(step_forward(&s), MHA_OK);
    static float want[L2 * N * E];
    memcpy(want, s.out, sizeof want);
    long n;
    for (n = 1; n < MAX_N; n++) {
        long live = s.c.live;
        s.c.fail_at = s.c.calls + n;
        s.c.failed = 0;
        mha_status st = mha_layer_load_safetensors(s.layer, FIXTURE2, "mha.");
        s.c.fail_at = 0;
        if (st == MHA_OK && s.c.failed == 0)
            break;
        cr_assert_eq(st, MHA_OUT_OF_MEMORY, "N=%ld: %s: %s", n,
                     mha_status_str(st), mha_context_errmsg(s.ctx));
        cr_assert_eq(s.c.live, live, "N=%ld: the failed load leaked", n);
        cr_assert_eq(step_forward(&s), MHA_OK);
        cr_expect_arr_eq(s.out, want, L * N * E * sizeof(float),
                         "N=%ld: a load that ran out of memory changed the "
                         "layer's weights",
                         n);
    }
    cr_assert_gt(n, 1);
    /* the other file really has other weights */
    cr_assert_eq(step_forward(&s), MHA_OK);
    cr_expect_arr_neq(s.out, want, L * N * E * sizeof(float));
    scenario_teardown(&s);
    cr_expect_eq(s.c.live, 0);
}
