/* test_opencl_interop.c: mha_opencl.h against the test's own OpenCL objects
 * (PoCL here): libmha adopts the test's context, device and queue (in-order
 * and out-of-order), wraps its cl_mem buffers (at offsets), and enqueues two
 * layers between the test's own commands with an event chain over several
 * frames; the results equal the host-memory forward. A pending user event
 * in the wait list proves the enqueue never waits; destroying libmha's
 * objects, even with a forward still pending, leaves the test's objects
 * usable and their reference counts as before; bad handles and arguments
 * give clear errors. Skipped without an OpenCL platform, a failure when
 * MHA_REQUIRE_OPENCL=1. */
#define _XOPEN_SOURCE 700 /* usleep */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common.h"
#include "mha_opencl.h"

enum { E = 16, H = 2, L = 5, N = 2, FRAMES = 3 };
#define COUNT ((size_t)L * N * E)
#define BYTES (COUNT * sizeof(float))
#define OUT_OFFSET 64 /* bytes: results are wrapped at an offset */
/* Seconds after which a test that would hang on a libmha that waits fails
 * (kernel builds on a cold PoCL cache take a few of them). */
#define HANG_TIMEOUT 120

/* ---- the test's own OpenCL objects ---------------------------------------- */

typedef struct app {
    cl_device_id device;
    cl_context context;
    cl_command_queue queue;
} app;

static void check_cl(cl_int err, const char *what)
{
    cr_assert_eq(err, CL_SUCCESS, "%s failed: %d", what, (int)err);
}

/* The first device of the first platform, or a skip. */
static void app_open(app *a, int out_of_order)
{
    cl_platform_id plat;
    cl_uint np = 0;
    if (clGetPlatformIDs(1, &plat, &np) != CL_SUCCESS || np == 0 ||
        clGetDeviceIDs(plat, CL_DEVICE_TYPE_ALL, 1, &a->device, NULL) !=
            CL_SUCCESS) {
        const char *req = getenv("MHA_REQUIRE_OPENCL");
        if (req && strcmp(req, "1") == 0)
            cr_assert_fail("MHA_REQUIRE_OPENCL=1 but no OpenCL device");
        cr_skip_test("no OpenCL device");
    }
    cl_int err;
    a->context = clCreateContext(NULL, 1, &a->device, NULL, NULL, &err);
    check_cl(err, "clCreateContext");
    a->queue = clCreateCommandQueue(
        a->context, a->device,
        out_of_order ? CL_QUEUE_OUT_OF_ORDER_EXEC_MODE_ENABLE : 0, &err);
    check_cl(err, "clCreateCommandQueue");
}

static void app_close(app *a)
{
    clReleaseCommandQueue(a->queue);
    clReleaseContext(a->context);
}

static cl_mem app_buffer(const app *a, cl_mem_flags flags, size_t bytes)
{
    cl_int err;
    cl_mem m = clCreateBuffer(a->context, flags, bytes, NULL, &err);
    check_cl(err, "clCreateBuffer");
    return m;
}

static int is_complete(cl_event e)
{
    cl_int status = CL_QUEUED;
    check_cl(clGetEventInfo(e, CL_EVENT_COMMAND_EXECUTION_STATUS,
                            sizeof status, &status, NULL),
             "clGetEventInfo");
    cr_assert_geq(status, CL_COMPLETE, "a command failed: %d", (int)status);
    return status == CL_COMPLETE;
}

/* ---- libmha on it ---------------------------------------------------------- */

typedef struct rig {
    app app;
    mha_context *ctx;
    mha_device *dev;
    mha_layer *layer[2];
} rig;

static mha_layer *make_layer(rig *r, uint64_t seed)
{
    mha_layer_config c;
    mha_layer_config_init(&c, E, H);
    mha_layer *layer = NULL;
    cr_assert_eq(mha_layer_create(r->dev, &c, &layer), MHA_OK, "%s",
                 mha_context_errmsg(r->ctx));
    static float w[3 * E * E];
    test_rng rng = {seed};
    struct { const char *name; int ndim; int64_t shape[2]; } ws[] = {
        {"in_proj_weight", 2, {3 * E, E}}, {"in_proj_bias", 1, {3 * E}},
        {"out_proj.weight", 2, {E, E}},    {"out_proj.bias", 1, {E}}};
    for (size_t i = 0; i < sizeof ws / sizeof ws[0]; i++) {
        for (size_t k = 0; k < sizeof w / sizeof w[0]; k++)
            w[k] = 0.4f * test_normal(&rng);
        cr_assert_eq(mha_layer_set_weight(layer, ws[i].name, w, ws[i].ndim,
                                          ws[i].shape),
                     MHA_OK, "%s", mha_context_errmsg(r->ctx));
    }
    return layer;
}

/* libmha adopts r->app and makes two layers on it. */
static void rig_adopt(rig *r)
{
    cr_assert_eq(mha_context_create(NULL, &r->ctx), MHA_OK);
    mha_status st = mha_opencl_device_adopt(r->ctx, r->app.context,
                                            r->app.device, r->app.queue, NULL,
                                            &r->dev);
    cr_assert_eq(st, MHA_OK, "adopt: %s", mha_context_errmsg(r->ctx));
    r->layer[0] = make_layer(r, 11);
    r->layer[1] = make_layer(r, 12);
}

static void rig_open(rig *r, int out_of_order)
{
    memset(r, 0, sizeof *r);
    app_open(&r->app, out_of_order);
    rig_adopt(r);
}

static void rig_destroy_libmha(rig *r)
{
    mha_layer_destroy(r->layer[0]);
    mha_layer_destroy(r->layer[1]);
    cr_assert_eq(mha_device_destroy(r->dev), MHA_OK, "%s",
                 mha_context_errmsg(r->ctx));
    cr_assert_eq(mha_context_destroy(r->ctx), MHA_OK);
}

static mha_tensor *wrap(rig *r, cl_mem mem, size_t offset)
{
    const int64_t shape[3] = {L, N, E};
    mha_tensor *t = NULL;
    mha_status st = mha_opencl_tensor_wrap(r->dev, mem, offset, MHA_F32, 3,
                                           shape, &t);
    cr_assert_eq(st, MHA_OK, "wrap: %s", mha_context_errmsg(r->ctx));
    return t;
}

/* Causal self-attention of x into y. */
static mha_forward_args self_args(const mha_tensor *x, mha_tensor *y)
{
    mha_forward_args a;
    mha_forward_args_init(&a);
    a.query = a.key = a.value = x;
    a.is_causal = 1;
    a.output = y;
    return a;
}

static void frame_input(int frame, float *x)
{
    test_rng rng = {100 + (uint64_t)frame};
    for (size_t i = 0; i < COUNT; i++)
        x[i] = test_normal(&rng);
}

/* The two layers on host memory (mha_layer_forward_host). */
static void host_forward(rig *r, const float *x, float *y)
{
    static float mid[COUNT];
    const float *in = x;
    for (int i = 0; i < 2; i++) {
        mha_host_forward_args a;
        mha_host_forward_args_init(&a);
        mha_host_array arr = {in, MHA_F32, 3, {L, N, E, 0}};
        a.query = a.key = a.value = arr;
        a.is_causal = 1;
        a.output = i == 0 ? mid : y;
        a.output_count = COUNT;
        cr_assert_eq(mha_layer_forward_host(r->layer[i], &a), MHA_OK, "%s",
                     mha_context_errmsg(r->ctx));
        in = mid;
    }
}

static void expect_host_result(rig *r, const float *x, const float *got)
{
    static float want[COUNT];
    host_forward(r, x, want);
    for (size_t i = 0; i < COUNT; i++)
        cr_assert(fabsf(got[i] - want[i]) <= 1e-4f,
                  "element %zu: enqueued %g, host forward %g", i,
                  (double)got[i], (double)want[i]);
}

/* ---- the event chain of an engine frame ---------------------------------- */

/* Per frame: the test writes the input, layer 0 and layer 1 run, the test
 * reads the output, each step waiting for the event of the step before; a
 * frame's write also waits for the previous layer 0 (it reads x), its
 * layer 1 for the previous read (of y). Nothing is waited on until every
 * frame is enqueued. x is read-only and y write-only for kernels. */
static void run_frames(int out_of_order)
{
    rig r;
    rig_open(&r, out_of_order);
    cl_mem xm = app_buffer(&r.app, CL_MEM_READ_ONLY, BYTES);
    cl_mem mid = app_buffer(&r.app, CL_MEM_READ_WRITE, BYTES);
    cl_mem ym = app_buffer(&r.app, CL_MEM_WRITE_ONLY, OUT_OFFSET + BYTES);
    mha_tensor *x = wrap(&r, xm, 0), *h = wrap(&r, mid, 0);
    mha_tensor *y = wrap(&r, ym, OUT_OFFSET);
    mha_forward_args a0 = self_args(x, h), a1 = self_args(h, y);
    static float in[FRAMES][COUNT], out[FRAMES][COUNT];
    cl_event wrote[FRAMES], done0[FRAMES], done1[FRAMES], read[FRAMES];
    for (int f = 0; f < FRAMES; f++) {
        frame_input(f, in[f]);
        check_cl(clEnqueueWriteBuffer(r.app.queue, xm, CL_FALSE, 0, BYTES,
                                      in[f], f ? 1 : 0,
                                      f ? &done0[f - 1] : NULL, &wrote[f]),
                 "clEnqueueWriteBuffer");
        cr_assert_eq(mha_opencl_layer_enqueue(r.layer[0], &a0, 1, &wrote[f],
                                              &done0[f]),
                     MHA_OK, "%s", mha_context_errmsg(r.ctx));
        cl_event after1[2] = {done0[f], f ? read[f - 1] : NULL};
        cr_assert_eq(mha_opencl_layer_enqueue(r.layer[1], &a1, f ? 2 : 1,
                                              after1, &done1[f]),
                     MHA_OK, "%s", mha_context_errmsg(r.ctx));
        check_cl(clEnqueueReadBuffer(r.app.queue, ym, CL_FALSE, OUT_OFFSET,
                                     BYTES, out[f], 1, &done1[f], &read[f]),
                 "clEnqueueReadBuffer");
    }
    check_cl(clWaitForEvents(FRAMES, read), "clWaitForEvents");
    for (int f = 0; f < FRAMES; f++) {
        expect_host_result(&r, in[f], out[f]);
        clReleaseEvent(wrote[f]);
        clReleaseEvent(done0[f]);
        clReleaseEvent(done1[f]);
        clReleaseEvent(read[f]);
    }
    mha_tensor_destroy(x);
    mha_tensor_destroy(h);
    mha_tensor_destroy(y);
    rig_destroy_libmha(&r);
    clReleaseMemObject(xm);
    clReleaseMemObject(mid);
    clReleaseMemObject(ym);
    app_close(&r.app);
}

Test(opencl_interop, frames_on_in_order_queue_match_host_forward)
{
    run_frames(0);
}

Test(opencl_interop, frames_on_out_of_order_queue_match_host_forward)
{
    run_frames(1);
}

/* ---- the enqueue never waits --------------------------------------------- */

typedef struct pending {
    cl_mem xm, ym;
    mha_tensor *x, *h, *y;
    cl_event user, done;
    float in[COUNT];
} pending;

/* Both layers enqueued behind an unset user event; the call returns and
 * the output event stays incomplete. */
static void enqueue_pending(rig *r, pending *p)
{
    cl_int err;
    p->xm = app_buffer(&r->app, CL_MEM_READ_WRITE, BYTES);
    p->ym = app_buffer(&r->app, CL_MEM_READ_WRITE, BYTES);
    frame_input(0, p->in);
    check_cl(clEnqueueWriteBuffer(r->app.queue, p->xm, CL_TRUE, 0, BYTES,
                                  p->in, 0, NULL, NULL),
             "clEnqueueWriteBuffer");
    p->x = wrap(r, p->xm, 0);
    p->y = wrap(r, p->ym, 0);
    const int64_t shape[3] = {L, N, E};
    cr_assert_eq(mha_tensor_create(r->dev, MHA_F32, 3, shape, &p->h), MHA_OK);
    p->user = clCreateUserEvent(r->app.context, &err);
    check_cl(err, "clCreateUserEvent");
    mha_forward_args a0 = self_args(p->x, p->h), a1 = self_args(p->h, p->y);
    cl_event mid;
    cr_assert_eq(mha_opencl_layer_enqueue(r->layer[0], &a0, 1, &p->user,
                                          &mid),
                 MHA_OK, "%s", mha_context_errmsg(r->ctx));
    cr_assert_eq(mha_opencl_layer_enqueue(r->layer[1], &a1, 1, &mid,
                                          &p->done),
                 MHA_OK, "%s", mha_context_errmsg(r->ctx));
    clReleaseEvent(mid);
    check_cl(clFlush(r->app.queue), "clFlush");
    usleep(50 * 1000);
    cr_assert(!is_complete(p->done),
              "the forward ran before its wait list completed");
}

/* Sets the user event and reads the result once the forward is done. */
static void release_pending(rig *r, pending *p, float *out)
{
    check_cl(clSetUserEventStatus(p->user, CL_COMPLETE),
             "clSetUserEventStatus");
    check_cl(clWaitForEvents(1, &p->done), "clWaitForEvents");
    check_cl(clEnqueueReadBuffer(r->app.queue, p->ym, CL_TRUE, 0, BYTES, out,
                                 0, NULL, NULL),
             "clEnqueueReadBuffer");
    clReleaseEvent(p->user);
    clReleaseEvent(p->done);
}

static void destroy_pending_tensors(pending *p)
{
    mha_tensor_destroy(p->x);
    mha_tensor_destroy(p->h);
    mha_tensor_destroy(p->y);
}

static void enqueue_behind_user_event(int out_of_order)
{
    rig r;
    pending p;
    static float out[COUNT];
    rig_open(&r, out_of_order);
    enqueue_pending(&r, &p);
    release_pending(&r, &p, out);
    expect_host_result(&r, p.in, out);
    destroy_pending_tensors(&p);
    rig_destroy_libmha(&r);
    clReleaseMemObject(p.xm);
    clReleaseMemObject(p.ym);
    app_close(&r.app);
}

Test(opencl_interop, enqueue_returns_while_wait_list_pending_in_order,
     .timeout = HANG_TIMEOUT)
{
    enqueue_behind_user_event(0);
}

Test(opencl_interop, enqueue_returns_while_wait_list_pending_out_of_order,
     .timeout = HANG_TIMEOUT)
{
    enqueue_behind_user_event(1);
}

/* ---- ownership -------------------------------------------------------------- */

/* The reference count OpenCL reports for a queue, context or buffer. */
typedef enum ref_kind { REF_QUEUE, REF_CONTEXT, REF_MEM } ref_kind;

static cl_uint refs(ref_kind kind, void *obj)
{
    cl_uint n = 0;
    cl_int err =
        kind == REF_QUEUE
            ? clGetCommandQueueInfo((cl_command_queue)obj,
                                    CL_QUEUE_REFERENCE_COUNT, sizeof n, &n,
                                    NULL)
        : kind == REF_CONTEXT
            ? clGetContextInfo((cl_context)obj, CL_CONTEXT_REFERENCE_COUNT,
                               sizeof n, &n, NULL)
            : clGetMemObjectInfo((cl_mem)obj, CL_MEM_REFERENCE_COUNT,
                                 sizeof n, &n, NULL);
    check_cl(err, "a reference count query");
    return n;
}

/* The reference count of obj once it is down to want, or its value after
 * a second: PoCL holds a reference on the queue for its last command and
 * drops it from a worker thread at a time of its own, so the count the
 * application sees is its own plus 0 or 1 of PoCL's. */
static cl_uint settled_refs(ref_kind kind, void *obj, cl_uint want)
{
    cl_uint n = refs(kind, obj);
    for (int i = 0; i < 1000 && n > want; i++) {
        nanosleep(&(struct timespec){0, 1000000}, NULL);
        n = refs(kind, obj);
    }
    return n;
}

/* libmha is torn down while its forward waits on the user event; the
 * forward still completes, and the test's queue, context and buffers work
 * afterwards, also for a second libmha device adopted on them. In the end
 * the queue and context have no more references than before libmha (PoCL's
 * own reference for a last command may be there or gone; see
 * settled_refs). */
Test(opencl_interop, destroy_while_pending_leaves_app_objects_usable,
     .timeout = HANG_TIMEOUT)
{
    rig r;
    pending p;
    static float out[COUNT], again[COUNT];
    memset(&r, 0, sizeof r);
    app_open(&r.app, 0);
    cl_mem probe = app_buffer(&r.app, CL_MEM_READ_WRITE, BYTES);
    check_cl(clEnqueueWriteBuffer(r.app.queue, probe, CL_TRUE, 0, BYTES, out,
                                  0, NULL, NULL),
             "clEnqueueWriteBuffer");
    clReleaseMemObject(probe);
    const cl_uint queue_refs = settled_refs(REF_QUEUE, r.app.queue, 1);
    const cl_uint context_refs = refs(REF_CONTEXT, r.app.context);
    rig_adopt(&r);
    enqueue_pending(&r, &p);
    destroy_pending_tensors(&p);
    rig_destroy_libmha(&r);
    release_pending(&r, &p, out);
    cr_assert_eq(settled_refs(REF_MEM, p.xm, 1), 1,
                 "libmha kept a reference to mem");

    rig r2 = {.app = r.app};
    rig_adopt(&r2);
    expect_host_result(&r2, p.in, out);
    host_forward(&r2, p.in, again);
    rig_destroy_libmha(&r2);
    check_cl(clEnqueueWriteBuffer(r.app.queue, p.ym, CL_TRUE, 0, BYTES, again,
                                  0, NULL, NULL),
             "clEnqueueWriteBuffer after libmha");
    check_cl(clFinish(r.app.queue), "clFinish after libmha");
    clReleaseMemObject(p.xm);
    clReleaseMemObject(p.ym);
    cl_uint q = settled_refs(REF_QUEUE, r.app.queue, 1);
    cl_uint c = settled_refs(REF_CONTEXT, r.app.context, context_refs);
    cr_assert(q <= queue_refs && c <= context_refs,
              "libmha kept references: queue %u (before libmha %u), "
              "context %u (%u)",
              q, queue_refs, c, context_refs);
    app_close(&r.app);
}

/* A layer keeps the scratch of every shape it enqueued (the queue may still
 * run it): after 4 such shapes a fifth enqueue is refused, while the
 * blocking host forward still serves any shape, with scratch of its own,
 * and gives the result it gave before the shapes were pinned. */
Test(opencl_interop, enqueued_shapes_are_pinned_and_host_forward_still_works,
     .timeout = HANG_TIMEOUT)
{
    rig r;
    rig_open(&r, 0);
    static float in[COUNT], before[COUNT], after[COUNT];
    frame_input(0, in);
    host_forward(&r, in, before);
    cl_mem xm = app_buffer(&r.app, CL_MEM_READ_WRITE, BYTES);
    cl_mem ym = app_buffer(&r.app, CL_MEM_READ_WRITE, BYTES);
    check_cl(clEnqueueWriteBuffer(r.app.queue, xm, CL_TRUE, 0, BYTES, in, 0,
                                  NULL, NULL),
             "clEnqueueWriteBuffer");
    for (int64_t len = 1; len <= L; len++) {
        const int64_t shape[3] = {len, N, E};
        mha_tensor *x = NULL, *y = NULL;
        cr_assert_eq(mha_opencl_tensor_wrap(r.dev, xm, 0, MHA_F32, 3, shape,
                                            &x), MHA_OK);
        cr_assert_eq(mha_opencl_tensor_wrap(r.dev, ym, 0, MHA_F32, 3, shape,
                                            &y), MHA_OK);
        mha_forward_args a = self_args(x, y);
        mha_status st = mha_opencl_layer_enqueue(r.layer[0], &a, 0, NULL,
                                                 NULL);
        if (len < L)
            cr_assert_eq(st, MHA_OK, "%s", mha_context_errmsg(r.ctx));
        else
            cr_assert(st == MHA_LIMIT_REACHED &&
                          strstr(mha_context_errmsg(r.ctx), "already holds 4"),
                      "a fifth enqueued shape: %s, %s", mha_status_str(st),
                      mha_context_errmsg(r.ctx));
        mha_tensor_destroy(x);
        mha_tensor_destroy(y);
    }
    host_forward(&r, in, after);
    cr_assert_arr_eq(before, after, sizeof before);
    check_cl(clFinish(r.app.queue), "clFinish");
    rig_destroy_libmha(&r);
    clReleaseMemObject(xm);
    clReleaseMemObject(ym);
    app_close(&r.app);
}

/* mha.h's blocking calls on an adopted device and wrapped tensors: upload
 * and download go to the wrapped range, mha_layer_forward waits. */
Test(opencl_interop, blocking_calls_work_on_adopted_device)
{
    rig r;
    static float in[COUNT], out[COUNT], back[COUNT];
    rig_open(&r, 1);
    cl_mem xm = app_buffer(&r.app, CL_MEM_READ_WRITE, OUT_OFFSET + BYTES);
    cl_mem ym = app_buffer(&r.app, CL_MEM_READ_WRITE, BYTES);
    mha_tensor *x = wrap(&r, xm, OUT_OFFSET), *y = wrap(&r, ym, 0);
    frame_input(1, in);
    cr_assert_eq(mha_tensor_upload(x, in, BYTES), MHA_OK);
    check_cl(clEnqueueReadBuffer(r.app.queue, xm, CL_TRUE, OUT_OFFSET, BYTES,
                                 back, 0, NULL, NULL),
             "clEnqueueReadBuffer");
    cr_assert_arr_eq(back, in, BYTES, "upload wrote the wrapped range");
    mha_forward_args a = self_args(x, y);
    cr_assert_eq(mha_layer_forward(r.layer[0], &a), MHA_OK, "%s",
                 mha_context_errmsg(r.ctx));
    a = self_args(y, x);
    cr_assert_eq(mha_layer_forward(r.layer[1], &a), MHA_OK, "%s",
                 mha_context_errmsg(r.ctx));
    cr_assert_eq(mha_tensor_download(x, out, BYTES), MHA_OK);
    expect_host_result(&r, in, out);
    mha_tensor_destroy(x);
    mha_tensor_destroy(y);
    rig_destroy_libmha(&r);
    clReleaseMemObject(xm);
    clReleaseMemObject(ym);
    app_close(&r.app);
}

/* ---- bad inputs ------------------------------------------------------------ */

static void expect_error(rig *r, mha_status got, mha_status want,
                         const char *needle)
{
    const char *msg = mha_context_errmsg(r->ctx);
    cr_assert_eq(got, want, "status %s (%s); expected %s",
                 mha_status_str(got), msg, mha_status_str(want));
    cr_assert(strstr(msg, needle), "message \"%s\" lacks \"%s\"", msg,
              needle);
}

/* A rig, and a second application whose handles are foreign to it. */
static void open_with_other(rig *r, app *other)
{
    rig_open(r, 0);
    app_open(other, 0);
}

static void close_with_other(rig *r, app *other)
{
    rig_destroy_libmha(r);
    app_close(other);
    app_close(&r->app);
}

Test(opencl_interop, adopt_rejects_null_and_foreign_handles)
{
    rig r;
    app other;
    open_with_other(&r, &other);
    const cl_uint other_refs = refs(REF_QUEUE, other.queue);
    const struct {
        cl_context context;
        cl_device_id device;
        cl_command_queue queue;
        const char *needle;
    } cases[] = {
        {NULL, r.app.device, r.app.queue, "context is NULL"},
        {r.app.context, NULL, r.app.queue, "device is NULL"},
        {r.app.context, r.app.device, NULL, "queue is NULL"},
        {r.app.context, r.app.device, other.queue,
         "queue belongs to another cl_context than context"},
    };
    mha_device *d = NULL;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        expect_error(&r, mha_opencl_device_adopt(r.ctx, cases[i].context,
                                                 cases[i].device,
                                                 cases[i].queue, NULL, &d),
                     MHA_INVALID_ARGUMENT, cases[i].needle);
    cr_assert_null(d);
    cr_assert_eq(refs(REF_QUEUE, other.queue), other_refs,
                 "a refused adopt keeps no reference");
    close_with_other(&r, &other);
}

/* A context that left opencl out loaded no ICD loader: adopting is refused
 * and says why, not that the loader failed to load. */
Test(opencl_interop, adopt_in_context_without_opencl_says_so)
{
    app a;
    app_open(&a, 0);
    mha_context_options o;
    mha_context_options_init(&o);
    o.backends = "cpu";
    mha_context *cpu_only;
    cr_assert_eq(mha_context_create(&o, &cpu_only), MHA_OK);
    mha_device *d = NULL;
    cr_expect_eq(mha_opencl_device_adopt(cpu_only, a.context, a.device,
                                         a.queue, NULL, &d),
                 MHA_NO_DEVICE);
    cr_expect_null(d);
    cr_expect(strstr(mha_context_errmsg(cpu_only),
                     "left the opencl backend out"),
              "%s", mha_context_errmsg(cpu_only));
    mha_context_destroy(cpu_only);
    app_close(&a);
}

Test(opencl_interop, wrap_rejects_bad_buffers)
{
    rig r;
    app other;
    open_with_other(&r, &other);
    cl_mem small = app_buffer(&r.app, CL_MEM_READ_WRITE, BYTES - 4);
    cl_mem big = app_buffer(&r.app, CL_MEM_READ_WRITE, BYTES + 8);
    cl_mem foreign = app_buffer(&other, CL_MEM_READ_WRITE, BYTES);
    const int64_t shape[3] = {L, N, E};
    const struct {
        cl_mem mem;
        size_t offset;
        mha_status want;
        const char *needle;
    } cases[] = {
        {NULL, 0, MHA_INVALID_ARGUMENT, "mem is NULL"},
        {foreign, 0, MHA_INVALID_ARGUMENT,
         "mem belongs to another cl_context than the device's"},
        {small, 0, MHA_BUFFER_TOO_SMALL,
         "needs 640 bytes; the buffer range holds 636"},
        {big, 12, MHA_BUFFER_TOO_SMALL, "holds 636"},
        {big, 2, MHA_INVALID_ARGUMENT,
         "offset 2 is not a multiple of the element size (4 bytes)"},
        {big, BYTES + 12, MHA_BUFFER_TOO_SMALL, "past the end of mem"},
    };
    mha_tensor *t = NULL;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        expect_error(&r, mha_opencl_tensor_wrap(r.dev, cases[i].mem,
                                                cases[i].offset, MHA_F32, 3,
                                                shape, &t),
                     cases[i].want, cases[i].needle);
    mha_device *cpu = NULL;
    cr_assert_eq(mha_device_open(r.ctx, "cpu", NULL, &cpu), MHA_OK);
    expect_error(&r, mha_opencl_tensor_wrap(cpu, big, 0, MHA_F32, 3, shape,
                                            &t),
                 MHA_INVALID_ARGUMENT, "not an OpenCL device");
    cr_assert_null(t);
    cr_assert_eq(refs(REF_MEM, small), 1, "a refused wrap keeps no reference");
    cr_assert_eq(refs(REF_MEM, big), 1);
    cr_assert_eq(mha_opencl_tensor_wrap(r.dev, big, 8, MHA_F32, 3, shape, &t),
                 MHA_OK);
    cr_assert_eq(refs(REF_MEM, big), 2, "a tensor holds one reference");
    mha_tensor_destroy(t);
    cr_assert_eq(refs(REF_MEM, big), 1);
    mha_device_destroy(cpu);
    clReleaseMemObject(small);
    clReleaseMemObject(big);
    clReleaseMemObject(foreign);
    close_with_other(&r, &other);
}

Test(opencl_interop, enqueue_rejects_bad_wait_lists_and_flags)
{
    rig r;
    app other;
    open_with_other(&r, &other);
    cl_int err;
    cl_event foreign = clCreateUserEvent(other.context, &err);
    check_cl(err, "clCreateUserEvent");
    cl_mem xm = app_buffer(&r.app, CL_MEM_READ_WRITE, BYTES);
    cl_mem ro = app_buffer(&r.app, CL_MEM_READ_ONLY, BYTES);
    mha_tensor *x = wrap(&r, xm, 0), *y = wrap(&r, ro, 0);
    /* The read-only output is found at the output projection, after the
     * forward's first kernels were enqueued: they read x. */
    static const float zeros[COUNT];
    cr_assert_eq(mha_tensor_upload(x, zeros, BYTES), MHA_OK);
    mha_forward_args a = self_args(x, x);
    cl_event none = NULL, ev = NULL;
    const struct {
        cl_uint count;
        const cl_event *list;
        const char *needle;
    } cases[] = {
        {1, NULL, "num_events_in_wait_list is 1 but event_wait_list is NULL"},
        {0, &foreign,
         "num_events_in_wait_list is 0 but event_wait_list is not NULL"},
        {1, &none, "event_wait_list[0] is NULL"},
        {1, &foreign, "event_wait_list[0] belongs to another cl_context"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        expect_error(&r, mha_opencl_layer_enqueue(r.layer[0], &a,
                                                  cases[i].count,
                                                  cases[i].list, &ev),
                     MHA_INVALID_ARGUMENT, cases[i].needle);
    a = self_args(x, y);
    expect_error(&r, mha_opencl_layer_enqueue(r.layer[0], &a, 0, NULL, &ev),
                 MHA_INVALID_ARGUMENT, "CL_MEM_READ_ONLY");
    cr_assert_null(ev);
    check_cl(clFinish(r.app.queue), "clFinish");
    mha_tensor_destroy(x);
    mha_tensor_destroy(y);
    clReleaseEvent(foreign);
    clReleaseMemObject(xm);
    clReleaseMemObject(ro);
    close_with_other(&r, &other);
}

/* A forward the core refuses enqueues nothing, not even a wait on the
 * user event: the queue then finishes while that event is unset. */
Test(opencl_interop, refused_forward_enqueues_nothing,
     .timeout = HANG_TIMEOUT)
{
    rig r;
    rig_open(&r, 0);
    cl_int err;
    cl_event user = clCreateUserEvent(r.app.context, &err);
    check_cl(err, "clCreateUserEvent");
    cl_mem xm = app_buffer(&r.app, CL_MEM_READ_WRITE, BYTES);
    const int64_t shape[2] = {L * N, E};
    mha_tensor *x = wrap(&r, xm, 0), *flat = NULL;
    cr_assert_eq(mha_opencl_tensor_wrap(r.dev, xm, 0, MHA_F32, 2, shape,
                                        &flat),
                 MHA_OK);
    mha_forward_args a = self_args(x, flat);
    cl_event ev = NULL;
    expect_error(&r, mha_opencl_layer_enqueue(r.layer[0], &a, 1, &user, &ev),
                 MHA_SHAPE_MISMATCH, "output has shape [10,16]");
    check_cl(clFinish(r.app.queue), "clFinish");
    cr_assert_null(ev);
    check_cl(clSetUserEventStatus(user, CL_COMPLETE), "clSetUserEventStatus");
    clReleaseEvent(user);
    mha_tensor_destroy(x);
    mha_tensor_destroy(flat);
    rig_destroy_libmha(&r);
    clReleaseMemObject(xm);
    app_close(&r.app);
}
