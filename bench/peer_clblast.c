/* peer_clblast.c: multi-head attention composed from CLBlast on an OpenCL
 * device: Q/K/V and output projections by CLBlastSgemm plus a bias-add
 * kernel, per-head scores by CLBlastSgemmStridedBatched with 1/sqrt(d) as
 * alpha, causal mask and row softmax by a small kernel, weighted sum by
 * CLBlastSgemmStridedBatched. The two kernels are bench/peer_clblast.cl,
 * embedded by cmake/embed.cmake. The device is the first OpenCL device (in
 * clGetPlatformIDs / clGetDeviceIDs order, the order libmha's opencl
 * backend numbers them in) whose CL_DEVICE_NAME equals the libmha device's
 * mha_device_info name. One context, queue and program per device is kept
 * until bench_clblast_release, so CLBlast compiles each routine once per
 * device, not once per case. Built with MHA_BENCH_CLBLAST only. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "peers.h"

#ifdef MHA_BENCH_CLBLAST
#include <CL/cl.h>
#include <clblast_c.h>

#include "bench_clblast_cl.h"

int bench_clblast_built(void) { return 1; }

typedef struct cl_peer_dev {
    char name[128];
    cl_device_id dev;
    cl_context ctx;
    cl_command_queue q;
    cl_program prog;
    cl_kernel kbias, ksoft;
    cl_ulong max_alloc;
} cl_peer_dev;

static cl_peer_dev g_devs[BENCH_MAX_DEVICES];
static int g_ndevs;


static void free_dev(cl_peer_dev *p)
{
    if (p->kbias)
        clReleaseKernel(p->kbias);
    if (p->ksoft)
        clReleaseKernel(p->ksoft);
    if (p->prog)
        clReleaseProgram(p->prog);
    if (p->q)
        clReleaseCommandQueue(p->q);
    if (p->ctx)
        clReleaseContext(p->ctx);
    memset(p, 0, sizeof *p);
}

/* The first OpenCL device named name, with its context, queue and kernels
 * (made on first use). NULL with a message in err. */
static cl_peer_dev *get_dev(const char *name, char *err, size_t errlen)
{
    for (int i = 0; i < g_ndevs; i++)
        if (!strcmp(g_devs[i].name, name))
            return &g_devs[i];
    if (g_ndevs == BENCH_MAX_DEVICES) {
        snprintf(err, errlen, "too many OpenCL devices");
        return NULL;
    }
    cl_uint np = 0;
    cl_platform_id plats[16];
    cl_device_id found = NULL;
    if (clGetPlatformIDs(16, plats, &np) != CL_SUCCESS || np == 0) {
        snprintf(err, errlen, "no OpenCL platform");
        return NULL;
    }
    for (cl_uint p = 0; p < np && p < 16 && !found; p++) {
        cl_device_id ids[32];
        cl_uint n = 0;
        if (clGetDeviceIDs(plats[p], CL_DEVICE_TYPE_ALL, 32, ids, &n) !=
            CL_SUCCESS)
            continue;
        for (cl_uint i = 0; i < n && i < 32 && !found; i++) {
            char dn[256] = "";
            clGetDeviceInfo(ids[i], CL_DEVICE_NAME, sizeof dn - 1, dn, NULL);
            if (!strcmp(dn, name))
                found = ids[i];
        }
    }
    if (!found) {
        snprintf(err, errlen, "no OpenCL device named \"%s\"", name);
        return NULL;
    }
    cl_peer_dev *d = &g_devs[g_ndevs];
    memset(d, 0, sizeof *d);
    snprintf(d->name, sizeof d->name, "%s", name);
    d->dev = found;
    cl_int e = CL_SUCCESS;
    const char *what = "clCreateContext";
    d->ctx = clCreateContext(NULL, 1, &found, NULL, NULL, &e);
    if (e == CL_SUCCESS) {
        what = "clCreateCommandQueue";
        d->q = clCreateCommandQueue(d->ctx, found, 0, &e);
    }
    if (e == CL_SUCCESS) {
        what = "clCreateProgramWithSource";
        const char *src = (const char *)bench_clblast_cl[0].data;
        d->prog = clCreateProgramWithSource(d->ctx, 1, &src, NULL, &e);
    }
    if (e == CL_SUCCESS) {
        what = "clBuildProgram";
        e = clBuildProgram(d->prog, 1, &found, "-cl-std=CL1.2", NULL, NULL);
    }
    if (e == CL_SUCCESS) {
        what = "clCreateKernel";
        d->kbias = clCreateKernel(d->prog, "add_bias", &e);
    }
    if (e == CL_SUCCESS)
        d->ksoft = clCreateKernel(d->prog, "softmax_rows", &e);
    if (e == CL_SUCCESS) {
        what = "clGetDeviceInfo";
        e = clGetDeviceInfo(found, CL_DEVICE_MAX_MEM_ALLOC_SIZE,
                            sizeof d->max_alloc, &d->max_alloc, NULL);
    }
    if (e != CL_SUCCESS) {
        snprintf(err, errlen, "%s failed (%d)", what, (int)e);
        free_dev(d);
        return NULL;
    }
    g_ndevs++;
    return d;
}

void bench_clblast_release(void)
{
    for (int i = 0; i < g_ndevs; i++)
        free_dev(&g_devs[i]);
    g_ndevs = 0;
}

/* One case on one device: its buffers. */
typedef struct cl_peer_case {
    cl_peer_dev *d;
    const bench_case *c;
    cl_mem xq, xk, xv, wq, wk, wv, bin, wo, bo, qp, kp, vp, sc, att, y;
} cl_peer_case;

static void case_free(cl_peer_case *s)
{
    cl_mem *m[] = {&s->xq, &s->xk, &s->xv, &s->wq, &s->wk,
                   &s->wv, &s->bin, &s->wo, &s->bo, &s->qp,
                   &s->kp, &s->vp, &s->sc, &s->att, &s->y};
    for (size_t i = 0; i < sizeof m / sizeof *m; i++)
        if (*m[i]) {
            clReleaseMemObject(*m[i]);
            *m[i] = NULL;
        }
}

static cl_int mkbuf(cl_peer_case *s, cl_mem *m, size_t n, const float *host)
{
    cl_int e = CL_SUCCESS;
    *m = clCreateBuffer(s->d->ctx,
                        CL_MEM_READ_WRITE | (host ? CL_MEM_COPY_HOST_PTR : 0),
                        n * sizeof(float), (void *)host, &e);
    return e;
}

/* Creates and uploads the buffers of case c. 0, 1 (skip: too big for one
 * allocation, message in err) or -1 (message in err). */
static int case_make(cl_peer_case *s, cl_peer_dev *dv, const bench_case *c,
                     const bench_case_data *d, char *err, size_t errlen)
{
    memset(s, 0, sizeof *s);
    s->d = dv;
    s->c = c;
    size_t e = (size_t)c->embed_dim, h = (size_t)c->heads,
           b = (size_t)c->batch, l = (size_t)c->tgt_len,
           sl = (size_t)c->src_len, kd = (size_t)c->kdim,
           vd = (size_t)c->vdim;
    if ((cl_ulong)(h * l * sl * sizeof(float)) > dv->max_alloc ||
        (cl_ulong)(l * b * e * sizeof(float)) > dv->max_alloc) {
        snprintf(err, errlen, "scores (%zu MiB) exceed the device's "
                 "max allocation", h * l * sl * sizeof(float) >> 20);
        return 1;
    }
    cl_int r = CL_SUCCESS;
    struct {
        cl_mem *m;
        size_t n;
        const float *host;
    } bufs[] = {
        {&s->xq, d->nq, d->q},           {&s->xk, d->nk, d->k},
        {&s->xv, d->nv, d->v},           {&s->wq, e * e, d->w_q},
        {&s->wk, e * kd, d->w_k},        {&s->wv, e * vd, d->w_v},
        {&s->bin, 3 * e, d->b_in},       {&s->wo, e * e, d->w_o},
        {&s->bo, e, d->b_o},             {&s->qp, l * e, NULL},
        {&s->kp, sl * e, NULL},          {&s->vp, sl * e, NULL},
        {&s->sc, h * l * sl, NULL},      {&s->att, l * e, NULL},
        {&s->y, l * b * e, NULL},
    };
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs && r == CL_SUCCESS; i++)
        r = mkbuf(s, bufs[i].m, bufs[i].n, bufs[i].host);
    if (r != CL_SUCCESS) {
        snprintf(err, errlen, "clCreateBuffer failed (%d)", (int)r);
        case_free(s);
        return -1;
    }
    return 0;
}

static cl_int add_bias(cl_peer_case *s, cl_mem y, int yoff, int ld, cl_mem b,
                       int boff, size_t rows, size_t cols)
{
    cl_kernel k = s->d->kbias;
    cl_int e = clSetKernelArg(k, 0, sizeof y, &y);
    e |= clSetKernelArg(k, 1, sizeof yoff, &yoff);
    e |= clSetKernelArg(k, 2, sizeof ld, &ld);
    e |= clSetKernelArg(k, 3, sizeof b, &b);
    e |= clSetKernelArg(k, 4, sizeof boff, &boff);
    if (e != CL_SUCCESS)
        return CL_INVALID_KERNEL_ARGS;
    size_t g[2] = {cols, rows};
    return clEnqueueNDRangeKernel(s->d->q, k, 2, NULL, g, NULL, 0, NULL,
                                  NULL);
}

/* y (rows x n, ldy, offset yoff) = x (rows x k, ldx, offset xoff) w^T
 * (w: n x k) + bias[boff..] */
static int linear(cl_peer_case *s, size_t rows, size_t n, size_t k, cl_mem x,
                  size_t xoff, size_t ldx, cl_mem w, cl_mem bias, int boff,
                  cl_mem y, size_t yoff, size_t ldy)
{
    CLBlastStatusCode st = CLBlastSgemm(
        CLBlastLayoutRowMajor, CLBlastTransposeNo, CLBlastTransposeYes, rows,
        n, k, 1.0f, x, xoff, ldx, w, 0, k, 0.0f, y, yoff, ldy, &s->d->q,
        NULL);
    if (st != CLBlastSuccess)
        return (int)st;
    return add_bias(s, y, (int)yoff, (int)ldy, bias, boff, rows, n);
}

/* The forward into s->y; waits for it. 0 or a CLBlast / OpenCL status. */
static int case_forward(cl_peer_case *s)
{
    const bench_case *c = s->c;
    size_t e = (size_t)c->embed_dim, h = (size_t)c->heads,
           b = (size_t)c->batch, l = (size_t)c->tgt_len,
           sl = (size_t)c->src_len, kd = (size_t)c->kdim,
           vd = (size_t)c->vdim, dh = e / h;
    cl_command_queue *q = &s->d->q;
    int rc;
    for (size_t bi = 0; bi < b; bi++) {
        if ((rc = linear(s, l, e, e, s->xq, bi * e, b * e, s->wq, s->bin, 0,
                         s->qp, 0, e)) ||
            (rc = linear(s, sl, e, kd, s->xk, bi * kd, b * kd, s->wk, s->bin,
                         (int)e, s->kp, 0, e)) ||
            (rc = linear(s, sl, e, vd, s->xv, bi * vd, b * vd, s->wv, s->bin,
                         (int)(2 * e), s->vp, 0, e)))
            return rc;
        rc = (int)CLBlastSgemmStridedBatched(
            CLBlastLayoutRowMajor, CLBlastTransposeNo, CLBlastTransposeYes, l,
            sl, dh, 1.0f / sqrtf((float)dh), s->qp, 0, e, dh, s->kp, 0, e, dh,
            0.0f, s->sc, 0, sl, l * sl, h, q, NULL);
        if (rc)
            return rc;
        cl_kernel k = s->d->ksoft;
        int il = (int)l, in = (int)sl, causal = c->causal;
        rc = clSetKernelArg(k, 0, sizeof s->sc, &s->sc);
        rc |= clSetKernelArg(k, 1, sizeof il, &il);
        rc |= clSetKernelArg(k, 2, sizeof in, &in);
        rc |= clSetKernelArg(k, 3, sizeof causal, &causal);
        if (rc)
            return CL_INVALID_KERNEL_ARGS;
        size_t rows = h * l;
        if ((rc = clEnqueueNDRangeKernel(*q, k, 1, NULL, &rows, NULL, 0, NULL,
                                         NULL)))
            return rc;
        rc = (int)CLBlastSgemmStridedBatched(
            CLBlastLayoutRowMajor, CLBlastTransposeNo, CLBlastTransposeNo, l,
            dh, sl, 1.0f, s->sc, 0, sl, l * sl, s->vp, 0, e, dh, 0.0f,
            s->att, 0, e, dh, h, q, NULL);
        if (rc)
            return rc;
        if ((rc = linear(s, l, e, e, s->att, 0, e, s->wo, s->bo, 0, s->y,
                         bi * e, b * e)))
            return rc;
    }
    return clFinish(*q);
}

static int case_download(cl_peer_case *s, float *out, size_t n)
{
    return clEnqueueReadBuffer(s->d->q, s->y, CL_TRUE, 0, n * sizeof(float),
                               out, 0, NULL, NULL);
}

int bench_clblast_forward(const char *device_name, const bench_case *c,
                          const bench_case_data *d, float *out, char *err,
                          size_t errlen)
{
    cl_peer_dev *dv = get_dev(device_name, err, errlen);
    if (!dv)
        return -1;
    cl_peer_case s;
    int rc = case_make(&s, dv, c, d, err, errlen);
    if (rc)
        return rc;
    rc = case_forward(&s);
    if (!rc)
        rc = case_download(&s, out, d->nq);
    if (rc)
        snprintf(err, errlen, "CLBlast/OpenCL status %d", rc);
    case_free(&s);
    return rc ? -1 : 0;
}

static int case_forward_once(void *arg) { return case_forward(arg); }

int bench_clblast_run(const char *device_name, const bench_options *o,
                      const bench_case *c, const bench_case_data *d,
                      bench_result *r)
{
    if (c->dtype == MHA_F16) {
        snprintf(r->status, sizeof r->status, "skip");
        snprintf(r->note, sizeof r->note, "fp32 only");
        return 0;
    }
    char err[128] = "";
    double t0 = bench_now();
    float *out = malloc(d->nq * sizeof(float));
    cl_peer_dev *dv = out ? get_dev(device_name, err, sizeof err) : NULL;
    cl_peer_case s;
    int rc = dv ? case_make(&s, dv, c, d, err, sizeof err) : -1;
    if (!out)
        snprintf(err, sizeof err, "out of host memory");
    if (rc) {
        snprintf(r->status, sizeof r->status, "%s", rc > 0 ? "skip" : "error");
        snprintf(r->note, sizeof r->note, "CLBlast: %s", err);
        free(out);
        return rc > 0 ? 0 : -1;
    }
    rc = case_forward(&s);
    if (!rc)
        rc = case_download(&s, out, d->nq);
    r->first_ms = 1e3 * (bench_now() - t0);
    if (rc) {
        snprintf(r->status, sizeof r->status, "error");
        snprintf(r->note, sizeof r->note, "CLBlast/OpenCL status %d", rc);
        case_free(&s);
        free(out);
        return -1;
    }
    bench_record_check(r, bench_compare_output(out, d->ref, d->nq, c->dtype));
    for (int i = 0; i < o->warmup; i++)
        case_forward(&s);
    bench_time_runs(o, case_forward_once, &s, r);
    free(out);
    case_free(&s);
    return 0;
}
#else
int bench_clblast_built(void) { return 0; }

int bench_clblast_forward(const char *device_name, const bench_case *c,
                          const bench_case_data *d, float *out, char *err,
                          size_t errlen)
{
    (void)device_name;
    (void)c;
    (void)d;
    (void)out;
    snprintf(err, errlen, "CLBlast peer not built");
    return -1;
}

int bench_clblast_run(const char *device_name, const bench_options *o,
                      const bench_case *c, const bench_case_data *d,
                      bench_result *r)
{
    (void)device_name;
    (void)o;
    (void)c;
    (void)d;
    (void)r;
    return -1;
}

void bench_clblast_release(void) {}
#endif
