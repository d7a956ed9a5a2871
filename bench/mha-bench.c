/* mha-bench: the cross-vendor attention benchmark. For every device x case
 * it builds a layer with fixed-seed random weights, checks one output
 * against the CPU backend's scalar kernels, warms up, then times forwards
 * until --repeat runs and --min-time seconds are both reached. The parser,
 * formulas and writers live in args.c, cases.c and report.c, the case data
 * and the host forward in data.c, one case on one device in device_run.c,
 * decoder cases (mha_decoder over a KV cache) in decoder.c,
 * the OpenBLAS and PyTorch rows in peers.c, the CLBlast row in
 * peer_clblast.c, --targets (the CPU backend's targets table) in
 * targets.c, and --backward (forward + backward) in backward.c. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench.h"
#include "peers.h"
#include "targets.h"

static int progress;

static void init_result(bench_result *r, const bench_case *c)
{
    memset(r, 0, sizeof *r);
    r->c = *c;
    r->device_mem_mib = -1;
}

/* A new row of rep for case c on device di. */
static bench_result *device_row(bench_report *rep, int di, const bench_case *c)
{
    bench_result *r = &rep->results[rep->nresults++];
    init_result(r, c);
    const mha_device_info *inf = &rep->devices[di].info;
    snprintf(r->device, sizeof r->device, "%s", rep->devices[di].spec);
    snprintf(r->device_name, sizeof r->device_name, "%s", inf->name);
    snprintf(r->backend, sizeof r->backend, "%s", inf->backend);
    return r;
}

/* A decoder case (decoder.c) on every device; no reference, no peers. */
static int run_decoder_case(mha_context *ctx, mha_device **devs, int ndev,
                            const bench_options *o, const bench_case *c,
                            bench_report *rep)
{
    int rc = BENCH_EXIT_OK;
    for (int di = 0; di < ndev; di++) {
        bench_result *r = device_row(rep, di, c);
        if (progress)
            fprintf(stderr, "%s on %s (%s)...\n", c->name, r->device,
                    r->device_name);
        uint64_t peak = 0;
        mha_device_reset_peak_memory(devs[di]);
        bench_decoder_case(ctx, devs[di], o, c, r);
        if (mha_device_memory_usage(devs[di], NULL, &peak) == MHA_OK)
            r->device_mem_mib = (double)peak / (1024.0 * 1024.0);
        r->peak_rss_mib = bench_peak_rss_mib();
        if (!strcmp(r->status, "error"))
            rc = BENCH_EXIT_FAIL;
    }
    return rc;
}

/* The devices to run: each spec opened once (a device named twice, as by
 * "best" and "cpu", is run twice). */
static int open_devices(mha_context *ctx, const bench_options *o,
                        mha_device ***devs, bench_device_desc **descs)
{
    int count = 0;
    mha_device_count(ctx, &count);
    int all = o->ndevices == 0;
    for (int i = 0; i < o->ndevices; i++)
        all |= !strcmp(o->devices[i], "all");
    int max = (all ? count : 0) + o->ndevices;
    *devs = calloc((size_t)max + 1, sizeof **devs);
    *descs = calloc((size_t)max + 1, sizeof **descs);
    if (!*devs || !*descs) {
        fprintf(stderr, "mha-bench: out of host memory\n");
        return -1;
    }
    int n = 0;
    mha_device_options dopt;
    mha_device_options_init(&dopt);
    dopt.threads = o->threads;
    for (int i = 0; all && i < count; i++) {
        if (mha_device_open_index(ctx, i, &dopt, &(*devs)[n])) {
            fprintf(stderr, "mha-bench: device %d: %s\n", i,
                    mha_context_errmsg(ctx));
            continue;
        }
        n++;
    }
    for (int i = 0; i < o->ndevices; i++) {
        if (!strcmp(o->devices[i], "all"))
            continue;
        if (mha_device_open(ctx, o->devices[i], &dopt, &(*devs)[n])) {
            fprintf(stderr, "mha-bench: --device %s: %s\n", o->devices[i],
                    mha_context_errmsg(ctx));
            return -1;
        }
        n++;
    }
    for (int i = 0; i < n; i++) {
        mha_device_info_of((*devs)[i], &(*descs)[i].info);
        snprintf((*descs)[i].spec, sizeof (*descs)[i].spec, "%s:%d",
                 (*descs)[i].info.backend, (*descs)[i].info.backend_index);
    }
    return n;
}

int main(int argc, char **argv)
{
    bench_options o;
    char err[BENCH_ERRLEN];
    if (bench_parse_args(argc, argv, &o, err, sizeof err)) {
        fprintf(stderr, "%s\n", err);
        return BENCH_EXIT_USAGE;
    }
    if (o.help) {
        fputs(bench_usage, stdout);
        return 0;
    }
    if (o.compare_old) {
        int rc = bench_compare_files(o.compare_old, o.compare_new, stdout, err,
                                     sizeof err);
        if (rc)
            fprintf(stderr, "%s\n", err);
        return rc;
    }
    if (o.targets)
        return bench_targets_run(&o, stdout);
    if (o.backward)
        return bench_backward_run(&o, stdout);
    progress = isatty(2);

    mha_context *ctx = NULL;
    if (mha_context_create(NULL, &ctx)) {
        fprintf(stderr, "mha-bench: cannot create a libmha context\n");
        return BENCH_EXIT_FAIL;
    }
    mha_device **devs = NULL;
    bench_report rep;
    memset(&rep, 0, sizeof rep);
    bench_machine_info(&rep);
    rep.threads = o.threads;
    int ndev = open_devices(ctx, &o, &devs, &rep.devices);
    int rc = BENCH_EXIT_OK;
    mha_device *ref_dev = NULL;
    mha_device_options ropt;
    mha_device_options_init(&ropt);
    ropt.threads = o.threads;
    ropt.cpu_isa = "scalar";
    if (ndev < 0) {
        rc = BENCH_EXIT_USAGE;
        goto out;
    }
    rep.ndevices = ndev;
    if (mha_device_open(ctx, "cpu", &ropt, &ref_dev)) {
        fprintf(stderr, "mha-bench: no scalar CPU reference: %s\n",
                mha_context_errmsg(ctx));
        rc = BENCH_EXIT_FAIL;
        goto out;
    }
    bench_peers peers;
    if (progress && o.peers)
        fprintf(stderr, "PyTorch peer (all cases, one python3 run)...\n");
    bench_peers_init(&peers, &o);
    /* a CLBlast row may follow each OpenCL device */
    int maxres = o.ncases * (2 * ndev + BENCH_PEER_COUNT);
    rep.results = calloc((size_t)maxres + 1, sizeof *rep.results);
    if (!rep.results) {
        fprintf(stderr, "mha-bench: out of host memory\n");
        rc = BENCH_EXIT_FAIL;
        goto out;
    }
    for (int ci = 0; ci < o.ncases; ci++) {
        const bench_case *c = &o.cases[ci];
        if (c->decoder) {
            if (run_decoder_case(ctx, devs, ndev, &o, c, &rep))
                rc = BENCH_EXIT_FAIL;
            continue;
        }
        bench_case_data d;
        if (bench_case_data_make(c, &d)) {
            fprintf(stderr, "mha-bench: %s: out of host memory\n", c->name);
            rc = BENCH_EXIT_FAIL;
            continue;
        }
        if (progress)
            fprintf(stderr, "[%d/%d] %s: scalar reference...\n", ci + 1,
                    o.ncases, c->name);
        mha_status st = bench_forward_host(ref_dev, c, MHA_F32, &d, d.ref);
        if (st != MHA_OK) {
            fprintf(stderr, "mha-bench: %s: reference failed: %s\n", c->name,
                    mha_context_errmsg(ctx));
            rc = BENCH_EXIT_FAIL;
            bench_case_data_free(&d);
            continue;
        }
        int first_row = rep.nresults;
        for (int di = 0; di < ndev; di++) {
            bench_result *r = device_row(&rep, di, c);
            const mha_device_info *inf = &rep.devices[di].info;
            if (progress)
                fprintf(stderr, "[%d/%d] %s on %s (%s)...\n", ci + 1,
                        o.ncases, c->name, r->device, inf->name);
            bench_device_case(ctx, devs[di], &o, c, &d, r);
            r->peak_rss_mib = bench_peak_rss_mib();
            if (!strcmp(r->status, "FAIL") || !strcmp(r->status, "error"))
                rc = BENCH_EXIT_FAIL;
            if (!peers.enabled || !peers.have_clblast ||
                strcmp(inf->backend, "opencl"))
                continue;
            /* CLBlast peer on the same OpenCL device (matched by name). */
            r = &rep.results[rep.nresults++];
            init_result(r, c);
            const char *colon = strchr(rep.devices[di].spec, ':');
            snprintf(r->device, sizeof r->device, "clblast:%s",
                     colon ? colon + 1 : "0");
            snprintf(r->device_name, sizeof r->device_name,
                     "CLBlast on %.100s", inf->name);
            snprintf(r->backend, sizeof r->backend, "peer");
            if (progress)
                fprintf(stderr, "[%d/%d] %s on %s (CLBlast)...\n", ci + 1,
                        o.ncases, c->name, r->device);
            bench_clblast_run(inf->name, &o, c, &d, r);
            if (r->median_ms > 0) {
                r->gflops = bench_flops(c) / (r->median_ms * 1e6);
                r->gbps = bench_bytes(c) / (r->median_ms * 1e6);
            }
            r->peak_rss_mib = bench_peak_rss_mib();
            if (!strcmp(r->status, "FAIL") || !strcmp(r->status, "error"))
                rc = BENCH_EXIT_FAIL;
        }
        for (int pi = 0; pi < BENCH_PEER_COUNT; pi++) {
            bench_result *r = &rep.results[rep.nresults];
            init_result(r, c);
            if (!bench_peer_run(&peers, pi, &o, ci, &d, r))
                continue;
            if (progress)
                fprintf(stderr, "[%d/%d] %s on %s done\n", ci + 1, o.ncases,
                        c->name, r->device);
            if (r->median_ms > 0) {
                r->gflops = bench_flops(c) / (r->median_ms * 1e6);
                r->gbps = bench_bytes(c) / (r->median_ms * 1e6);
            }
            r->peak_rss_mib = bench_peak_rss_mib();
            if (!strcmp(r->status, "FAIL"))
                rc = BENCH_EXIT_FAIL;
            rep.nresults++;
        }
        /* ratio: time over the libmha CPU backend's time for this case. */
        double cpu_ms = 0;
        for (int i = first_row; i < rep.nresults; i++)
            if (!strcmp(rep.results[i].backend, "cpu") &&
                rep.results[i].median_ms > 0 &&
                (cpu_ms == 0 || rep.results[i].median_ms < cpu_ms))
                cpu_ms = rep.results[i].median_ms;
        for (int i = first_row; cpu_ms > 0 && i < rep.nresults; i++)
            if (rep.results[i].median_ms > 0)
                rep.results[i].ratio = rep.results[i].median_ms / cpu_ms;
        bench_case_data_free(&d);
    }
    bench_peers_notes(&peers, stderr);

    bench_print_table(stdout, &rep);
    bench_print_extras(stdout, &rep);
    if (o.json_path && bench_write_json(o.json_path, &rep)) {
        fprintf(stderr, "mha-bench: cannot write --json %s\n", o.json_path);
        rc = BENCH_EXIT_FAIL;
    }
    if (o.csv_path && bench_write_csv(o.csv_path, &rep)) {
        fprintf(stderr, "mha-bench: cannot write --csv %s\n", o.csv_path);
        rc = BENCH_EXIT_FAIL;
    }
out:
    bench_clblast_release();
    free(rep.results);
    for (int i = 0; devs && devs[i]; i++)
        mha_device_destroy(devs[i]);
    free(devs);
    free(rep.devices);
    mha_device_destroy(ref_dev);
    mha_context_destroy(ctx);
    return rc;
}
