/* opencl_engine.c: libmha inside an application's own OpenCL context and
 * queue (include/mha_opencl.h). The "engine" makes its context, queue
 * (out-of-order where the device allows) and buffers, builds its own kernels
 * from opencl_engine.cl, and hands libmha its handles. Each frame it
 * enqueues its pass that writes token embeddings, two libmha attention
 * layers, and its pass that pools their output, chained by events; it waits
 * once, after the last frame. Then it checks every frame against libmha's
 * host-memory forward of the same layers; exit status 0 when they agree to
 * 1e-4. Usage: example-opencl-engine [path/to/opencl_engine.cl] */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "mha_opencl.h"

enum { E = 64, H = 4, L = 16, N = 2, ROWS = L * N, VOCAB = 50, FRAMES = 4 };
#define ACT_BYTES ((size_t)ROWS * E * sizeof(float))

#ifndef OPENCL_ENGINE_CL
#define OPENCL_ENGINE_CL "opencl_engine.cl"
#endif

/* ---- the engine's own OpenCL objects -------------------------------------- */

typedef struct engine {
    cl_device_id device;
    cl_context context;
    cl_command_queue queue;
    int out_of_order;
    cl_program program;
    cl_kernel embed, pool;
    cl_mem tokens, table, act, x, y, pooled; /* x, y: halves of act */
} engine;

static int cl_ok(cl_int err, const char *what)
{
    if (err == CL_SUCCESS)
        return 1;
    fprintf(stderr, "%s failed: %d\n", what, (int)err);
    return 0;
}

static int mha_ok(mha_context *ctx, mha_status st, const char *what)
{
    if (st == MHA_OK)
        return 1;
    fprintf(stderr, "%s failed: %s: %s\n", what, mha_status_str(st),
            mha_context_errmsg(ctx));
    return 0;
}

/* Deterministic pseudo-random values in [-scale, scale). */
static void fill(float *v, size_t n, unsigned seed, float scale)
{
    for (size_t i = 0; i < n; i++) {
        seed = seed * 1664525u + 1013904223u;
        v[i] = scale * ((float)(seed >> 8) / 8388608.0f - 1.0f);
    }
}

static char *read_text(const char *path)
{
    FILE *f = fopen(path, "rb");
    char *text = NULL;
    long n = -1;
    if (f && fseek(f, 0, SEEK_END) == 0 && (n = ftell(f)) >= 0 &&
        fseek(f, 0, SEEK_SET) == 0 && (text = malloc((size_t)n + 1)) &&
        fread(text, 1, (size_t)n, f) == (size_t)n)
        text[n] = '\0';
    else if (text) {
        free(text);
        text = NULL;
    }
    if (f)
        fclose(f);
    if (!text)
        fprintf(stderr, "cannot read %s\n", path);
    return text;
}

/* The engine's kernels, built in its own context. */
static int build_kernels(engine *g, const char *path)
{
    char *src = read_text(path);
    if (!src)
        return 0;
    cl_int err;
    const char *srcs[1] = {src};
    g->program = clCreateProgramWithSource(g->context, 1, srcs, NULL, &err);
    free(src);
    if (!cl_ok(err, "clCreateProgramWithSource"))
        return 0;
    err = clBuildProgram(g->program, 1, &g->device, "", NULL, NULL);
    if (err != CL_SUCCESS) {
        char log[4096] = "";
        clGetProgramBuildInfo(g->program, g->device, CL_PROGRAM_BUILD_LOG,
                              sizeof log - 1, log, NULL);
        fprintf(stderr, "building %s failed:\n%s\n", path, log);
        return 0;
    }
    g->embed = clCreateKernel(g->program, "embed_tokens", &err);
    if (cl_ok(err, "clCreateKernel(embed_tokens)"))
        g->pool = clCreateKernel(g->program, "mean_rows", &err);
    return cl_ok(err, "clCreateKernel");
}

static cl_mem sub_buffer(engine *g, size_t origin, cl_int *err)
{
    cl_buffer_region r = {origin, ACT_BYTES};
    return clCreateSubBuffer(g->act, CL_MEM_READ_WRITE,
                             CL_BUFFER_CREATE_TYPE_REGION, &r, err);
}

/* Token ids and the embedding table are uploaded once; x and y are two
 * sub-buffers of one activation buffer. */
static int make_buffers(engine *g)
{
    static int tokens[ROWS];
    static float table[VOCAB * E];
    for (int r = 0; r < ROWS; r++)
        tokens[r] = (r * 7 + 3) % VOCAB;
    fill(table, VOCAB * E, 9, 1.0f);
    const cl_mem_flags ro = CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR;
    cl_int err;
    g->tokens = clCreateBuffer(g->context, ro, sizeof tokens, tokens, &err);
    if (err == CL_SUCCESS)
        g->table = clCreateBuffer(g->context, ro, sizeof table, table, &err);
    if (err == CL_SUCCESS)
        g->act = clCreateBuffer(g->context, CL_MEM_READ_WRITE, 2 * ACT_BYTES,
                                NULL, &err);
    if (err == CL_SUCCESS)
        g->x = sub_buffer(g, 0, &err);
    if (err == CL_SUCCESS)
        g->y = sub_buffer(g, ACT_BYTES, &err);
    if (err == CL_SUCCESS)
        g->pooled = clCreateBuffer(g->context, CL_MEM_WRITE_ONLY,
                                   (size_t)FRAMES * E * sizeof(float), NULL,
                                   &err);
    return cl_ok(err, "creating the engine's buffers");
}

/* A GPU where there is one, else any device; an out-of-order queue where
 * the device has them, since that is where events matter. */
static int engine_open(engine *g, const char *cl_path)
{
    cl_platform_id plat;
    cl_uint np = 0;
    if (clGetPlatformIDs(1, &plat, &np) != CL_SUCCESS || np == 0) {
        fprintf(stderr, "no OpenCL platform\n");
        return 0;
    }
    if (clGetDeviceIDs(plat, CL_DEVICE_TYPE_GPU, 1, &g->device, NULL) !=
            CL_SUCCESS &&
        !cl_ok(clGetDeviceIDs(plat, CL_DEVICE_TYPE_ALL, 1, &g->device, NULL),
               "clGetDeviceIDs"))
        return 0;
    cl_command_queue_properties props = 0;
    clGetDeviceInfo(g->device, CL_DEVICE_QUEUE_PROPERTIES, sizeof props,
                    &props, NULL);
    g->out_of_order = (props & CL_QUEUE_OUT_OF_ORDER_EXEC_MODE_ENABLE) != 0;
    cl_int err;
    g->context = clCreateContext(NULL, 1, &g->device, NULL, NULL, &err);
    if (!cl_ok(err, "clCreateContext"))
        return 0;
    g->queue = clCreateCommandQueue(
        g->context, g->device,
        g->out_of_order ? CL_QUEUE_OUT_OF_ORDER_EXEC_MODE_ENABLE : 0, &err);
    return cl_ok(err, "clCreateCommandQueue") && build_kernels(g, cl_path) &&
           make_buffers(g);
}

static void engine_close(engine *g)
{
    cl_mem mems[] = {g->x, g->y, g->act, g->tokens, g->table, g->pooled};
    for (size_t i = 0; i < sizeof mems / sizeof *mems; i++)
        if (mems[i])
            clReleaseMemObject(mems[i]);
    if (g->embed)
        clReleaseKernel(g->embed);
    if (g->pool)
        clReleaseKernel(g->pool);
    if (g->program)
        clReleaseProgram(g->program);
    if (g->queue)
        clReleaseCommandQueue(g->queue);
    if (g->context)
        clReleaseContext(g->context);
}

/* ---- libmha on the engine's handles --------------------------------------- */

typedef struct attention {
    mha_context *ctx;
    mha_device *dev;
    mha_layer *layer[2];
    mha_tensor *x, *h, *y; /* x, y wrap the engine's buffers; h is libmha's */
} attention;

static int set_weights(attention *a, mha_layer *layer, unsigned seed)
{
    static float w_in[3 * E * E], b_in[3 * E], w_out[E * E], b_out[E];
    fill(w_in, 3 * E * E, seed, 0.2f);
    fill(b_in, 3 * E, seed + 1, 0.1f);
    fill(w_out, E * E, seed + 2, 0.2f);
    fill(b_out, E, seed + 3, 0.1f);
    const int64_t s_w_in[2] = {3 * E, E}, s_b_in[1] = {3 * E};
    const int64_t s_w_out[2] = {E, E}, s_b_out[1] = {E};
    return mha_ok(a->ctx, mha_layer_set_weight(layer, "in_proj_weight", w_in,
                                               2, s_w_in), "weight") &&
           mha_ok(a->ctx, mha_layer_set_weight(layer, "in_proj_bias", b_in,
                                               1, s_b_in), "weight") &&
           mha_ok(a->ctx, mha_layer_set_weight(layer, "out_proj.weight",
                                               w_out, 2, s_w_out), "weight") &&
           mha_ok(a->ctx, mha_layer_set_weight(layer, "out_proj.bias", b_out,
                                               1, s_b_out), "weight");
}

static int attention_open(attention *a, engine *g)
{
    const int64_t shape[3] = {L, N, E};
    mha_layer_config cfg;
    mha_layer_config_init(&cfg, E, H);
    if (mha_context_create(NULL, &a->ctx) != MHA_OK) {
        fprintf(stderr, "cannot create a libmha context\n");
        return 0;
    }
    if (!mha_ok(a->ctx, mha_opencl_device_adopt(a->ctx, g->context,
                                                g->device, g->queue, NULL,
                                                &a->dev), "adopt"))
        return 0;
    for (int i = 0; i < 2; i++)
        if (!mha_ok(a->ctx, mha_layer_create(a->dev, &cfg, &a->layer[i]),
                    "layer") ||
            !set_weights(a, a->layer[i], 10u * (unsigned)i + 1u))
            return 0;
    return mha_ok(a->ctx, mha_opencl_tensor_wrap(a->dev, g->x, 0, MHA_F32, 3,
                                                 shape, &a->x), "wrap x") &&
           mha_ok(a->ctx, mha_opencl_tensor_wrap(a->dev, g->y, 0, MHA_F32, 3,
                                                 shape, &a->y), "wrap y") &&
           mha_ok(a->ctx, mha_tensor_create(a->dev, MHA_F32, 3, shape, &a->h),
                  "tensor h");
}

static void attention_close(attention *a)
{
    mha_tensor_destroy(a->x);
    mha_tensor_destroy(a->h);
    mha_tensor_destroy(a->y);
    mha_layer_destroy(a->layer[0]);
    mha_layer_destroy(a->layer[1]);
    mha_device_destroy(a->dev);
    mha_context_destroy(a->ctx);
}

/* ---- frames ---------------------------------------------------------------- */

typedef struct frame_events {
    cl_event embed, layer0, layer1, pool;
} frame_events;

static float frame_scale(int frame) { return 1.0f + 0.25f * (float)frame; }

static double now_us(void)
{
    struct timespec ts;
    timespec_get(&ts, TIME_UTC);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

/* One kernel argument: {size, pointer to the value}. */
typedef struct karg {
    size_t size;
    const void *value;
} karg;

/* Sets n arguments of k and enqueues it over items work items. */
static int run_kernel(engine *g, cl_kernel k, const char *name,
                      const karg *args, cl_uint n, size_t items,
                      cl_uint nwait, const cl_event *wait, cl_event *done)
{
    for (cl_uint i = 0; i < n; i++)
        if (!cl_ok(clSetKernelArg(k, i, args[i].size, args[i].value),
                   "clSetKernelArg"))
            return 0;
    return cl_ok(clEnqueueNDRangeKernel(g->queue, k, 1, NULL, &items, NULL,
                                        nwait, wait, done),
                 name);
}

/* One frame: embed -> layer 0 -> layer 1 -> pool. Each step waits for the
 * step it consumes, and for the previous frame's step that still reads
 * what it overwrites (x: layer 0, y: pool). */
static int enqueue_frame(engine *g, attention *a, int f, frame_events *ev,
                         const frame_events *prev, double *mha_us)
{
    const int rows = ROWS, e = E;
    const float scale = frame_scale(f);
    const karg embed[] = {{sizeof g->tokens, &g->tokens},
                          {sizeof g->table, &g->table},
                          {sizeof g->x, &g->x},
                          {sizeof rows, &rows},
                          {sizeof e, &e},
                          {sizeof scale, &scale}};
    if (!run_kernel(g, g->embed, "embed_tokens", embed, 6, (size_t)ROWS * E,
                    prev ? 1 : 0, prev ? &prev->layer0 : NULL, &ev->embed))
        return 0;

    mha_forward_args f0, f1;
    mha_forward_args_init(&f0);
    f0.query = f0.key = f0.value = a->x;
    f0.is_causal = 1;
    f0.output = a->h;
    f1 = f0;
    f1.query = f1.key = f1.value = a->h;
    f1.output = a->y;
    double t0 = now_us();
    if (!mha_ok(a->ctx, mha_opencl_layer_enqueue(a->layer[0], &f0, 1,
                                                 &ev->embed, &ev->layer0),
                "layer 0"))
        return 0;
    const cl_event wait1[2] = {ev->layer0, prev ? prev->pool : NULL};
    if (!mha_ok(a->ctx, mha_opencl_layer_enqueue(a->layer[1], &f1,
                                                 prev ? 2 : 1, wait1,
                                                 &ev->layer1),
                "layer 1"))
        return 0;
    *mha_us = now_us() - t0;

    const karg pool[] = {{sizeof g->y, &g->y},
                         {sizeof g->pooled, &g->pooled},
                         {sizeof rows, &rows},
                         {sizeof e, &e},
                         {sizeof f, &f}};
    return run_kernel(g, g->pool, "mean_rows", pool, 5, E, 1, &ev->layer1,
                      &ev->pool);
}

/* ---- checking against the host-memory forward ---------------------------- */

/* The frame's input as embed_tokens makes it, through both layers with
 * mha_layer_forward_host, into y. */
static int host_frame(attention *a, int f, float *y)
{
    static float table[VOCAB * E], x[ROWS * E], h[ROWS * E];
    fill(table, VOCAB * E, 9, 1.0f);
    for (int r = 0; r < ROWS; r++)
        for (int e = 0; e < E; e++)
            x[r * E + e] = table[((r * 7 + 3) % VOCAB) * E + e] * frame_scale(f);
    const float *in = x;
    for (int i = 0; i < 2; i++) {
        mha_host_forward_args args;
        mha_host_forward_args_init(&args);
        mha_host_array arr = {in, MHA_F32, 3, {L, N, E, 0}};
        args.query = args.key = args.value = arr;
        args.is_causal = 1;
        args.output = i == 0 ? h : y;
        args.output_count = ROWS * E;
        if (!mha_ok(a->ctx, mha_layer_forward_host(a->layer[i], &args),
                    "host forward"))
            return 0;
        in = h;
    }
    return 1;
}

static double max_diff(const float *a, const float *b, int n, double worst)
{
    for (int i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (!(d <= worst)) /* also catches NaN */
            worst = d;
    }
    return worst;
}

/* Compares every frame's pooled vector, and the last frame's whole output,
 * with the host-memory forward. */
static double check_frames(attention *a, const float *pooled,
                           const float *last_y)
{
    static float y[ROWS * E];
    float mean[E];
    double worst = 0;
    for (int f = 0; f < FRAMES; f++) {
        if (!host_frame(a, f, y))
            return INFINITY;
        for (int e = 0; e < E; e++) {
            double s = 0;
            for (int r = 0; r < ROWS; r++)
                s += y[r * E + e];
            mean[e] = (float)(s / ROWS);
        }
        worst = max_diff(pooled + f * E, mean, E, worst);
    }
    return max_diff(last_y, y, ROWS * E, worst);
}

/* ---- main ------------------------------------------------------------------ */

static void release_events(frame_events *ev, int n)
{
    for (int f = 0; f < n; f++) {
        cl_event all[4] = {ev[f].embed, ev[f].layer0, ev[f].layer1,
                           ev[f].pool};
        for (int i = 0; i < 4; i++)
            if (all[i])
                clReleaseEvent(all[i]);
    }
}

/* All frames enqueued, then one wait: the blocking reads after the last
 * frame's pool pass. */
static int run_frames(engine *g, attention *a, float *pooled, float *last_y)
{
    frame_events ev[FRAMES] = {{0}};
    int ok = 1;
    for (int f = 0; f < FRAMES && ok; f++) {
        double us = 0;
        ok = enqueue_frame(g, a, f, &ev[f], f ? &ev[f - 1] : NULL, &us);
        if (ok)
            printf("frame %d: embed_tokens -> mha layer 0 -> mha layer 1 -> "
                   "mean_rows enqueued (libmha: %.1f us of CPU)\n", f, us);
    }
    ok = ok && cl_ok(clEnqueueReadBuffer(g->queue, g->pooled, CL_TRUE, 0,
                                         (size_t)FRAMES * E * sizeof(float),
                                         pooled, 1, &ev[FRAMES - 1].pool,
                                         NULL), "reading pooled") &&
         cl_ok(clEnqueueReadBuffer(g->queue, g->y, CL_TRUE, 0, ACT_BYTES,
                                   last_y, 1, &ev[FRAMES - 1].layer1, NULL),
               "reading y");
    release_events(ev, FRAMES);
    return ok;
}

int main(int argc, char **argv)
{
    static float pooled[FRAMES * E], last_y[ROWS * E];
    engine g = {0};
    attention a = {0};
    int ok = engine_open(&g, argc > 1 ? argv[1] : OPENCL_ENGINE_CL) &&
             attention_open(&a, &g);
    if (ok) {
        mha_device_info info;
        mha_device_info_of(a.dev, &info);
        printf("libmha %s in the engine's OpenCL context on %s (%s queue)\n",
               mha_version(), info.name,
               g.out_of_order ? "out-of-order" : "in-order");
        printf("%d frames, 2 causal self-attention layers E=%d H=%d L=%d "
               "N=%d\n", FRAMES, E, H, L, N);
        ok = run_frames(&g, &a, pooled, last_y);
    }
    double err = ok ? check_frames(&a, pooled, last_y) : INFINITY;
    /* libmha first or the engine first: neither owns the other's handles. */
    attention_close(&a);
    engine_close(&g);
    if (!ok)
        return 1;
    printf("max |engine frames - host-memory forward| = %.3g: %s\n", err,
           err <= 1e-4 ? "agree" : "DISAGREE");
    return err <= 1e-4 ? 0 : 1;
}
