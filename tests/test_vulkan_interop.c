/* test_vulkan_interop.c: libmha inside an engine's own Vulkan device
 * (include/mha_vulkan.h), driven through the engine of
 * examples/vulkan_engine.c, which this file compiles in without its main()
 * so that what is tested is what users copy. The engine's own instance runs
 * the Khronos validation layer with synchronization validation and a
 * messenger that counts warnings and errors, so every test also asserts
 * that nothing was reported. Covered: frames of engine pass -> libmha
 * layers -> engine pass giving the host forward's result (fp32, and fp16
 * where 16-bit storage is enabled), replayed; a barrier the engine leaves
 * out is reported (the check is live); an fp16 layer on a device without
 * storageBuffer16BitAccess enabled is a clear error; without a queue the
 * submit-and-wait calls fail clearly while recording works; the engine's
 * device, queue and buffers keep working after libmha is destroyed; the
 * checks of mha_vulkan_tensor_wrap; a steady-state record allocates no
 * host memory; and the per-frame CPU cost of recording a 12-layer
 * BERT-base stack (printed, not asserted); adoption in a context that
 * probes no Vulkan itself (backends "cpu"). Linked like an engine: libmha
 * statically, libvulkan directly. */
#include <criterion/criterion.h>
#include <criterion/logging.h>

#include <time.h>

#define MHA_ENGINE_NO_MAIN
#include "vulkan_engine.c"
#include "vulkan_engine_test.h"

/* struct_size of an mha_vulkan_buffer written as an initializer */
#define VKB sizeof(mha_vulkan_buffer)

/* ---- helpers ------------------------------------------------------------ */

/* An engine under validation with the scene on it (see scene_create). */
static void start(engine *e, scene *s, const mha_context_options *options,
                  mha_dtype dtype, bool queue)
{
    open_engine(e, true, dtype == MHA_F16);
    if (dtype == MHA_F16 && !e->storage16.storageBuffer16BitAccess) {
        engine_destroy(e);
        cr_skip_test("no storageBuffer16BitAccess on this device");
    }
    cr_assert(scene_create(e, s, options, dtype, queue), "%s",
              mha_context_errmsg(s->ctx));
}

static void finish(engine *e, scene *s)
{
    scene_destroy(e, s);
    close_engine(e);
}

static void run_frames(engine *e, scene *s)
{
    for (int f = 0; f < FRAMES; ++f)
        cr_assert(scene_record(e, s, f), "%s", mha_context_errmsg(s->ctx));
    cr_assert(engine_submit(e, s->cmd, FRAMES));
}

static void assert_matches(const scene *s, mha_layer *const *ref, double tol)
{
    double worst = INFINITY;
    cr_assert(scene_check(s, ref, &worst), "%s", mha_context_errmsg(s->ctx));
    cr_assert(worst <= tol, "recorded frames differ from the host forward "
                            "by %g (tolerance %g)",
              worst, tol);
}

static mha_device *adopt(mha_context *ctx, const engine *e, bool queue)
{
    mha_vulkan_device_info info = engine_share(e, queue);
    mha_device *dev = NULL;
    cr_assert_eq(mha_vulkan_device_adopt(ctx, &info, NULL, &dev), MHA_OK,
                 "%s", mha_context_errmsg(ctx));
    return dev;
}

static void assert_error(mha_context *ctx, mha_status got, mha_status want,
                         const char *needle)
{
    cr_assert_eq(got, want, "status %s, expected %s: %s",
                 mha_status_str(got), mha_status_str(want),
                 mha_context_errmsg(ctx));
    cr_assert(strstr(mha_context_errmsg(ctx), needle),
              "message \"%s\" does not name \"%s\"", mha_context_errmsg(ctx),
              needle);
}

static double now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

/* ---- frames ------------------------------------------------------------ */

/* FRAMES frames of dtype layers match the host forward to tol, and again
 * when the recorded command buffers are submitted a second time. */
static void frames_match(mha_dtype dtype, double tol)
{
    engine e;
    scene s;
    start(&e, &s, NULL, dtype, true);
    run_frames(&e, &s);
    assert_matches(&s, s.layers, tol);
    memset(s.readback.map, 0, ACT_BYTES * FRAMES);
    cr_assert(engine_submit(&e, s.cmd, FRAMES));
    assert_matches(&s, s.layers, tol);
    finish(&e, &s);
}

Test(vulkan_interop, frames_match_host_under_sync_validation)
{
    frames_match(MHA_F32, 1e-4);
}

Test(vulkan_interop, fp16_layers_record_where_enabled)
{
    frames_match(MHA_F16, 1e-2);
}

/* The engine records libmha's output being read with no barrier between:
 * synchronization validation must see the read-after-write hazard, or the
 * zero-message assertions elsewhere would prove nothing. */
Test(vulkan_interop, missing_engine_barrier_is_reported)
{
    engine e;
    scene s;
    start(&e, &s, NULL, MHA_F32, true);
    VkCommandBufferBeginInfo bi = {
        .sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_BEGIN_INFO};
    cr_assert_eq(vkBeginCommandBuffer(s.cmd[0], &bi), VK_SUCCESS);
    mha_forward_args a = layer_args(&s, 0);
    cr_assert_eq(mha_vulkan_layer_record(s.layers[0], &a, s.cmd[0]), MHA_OK);
    engine_affine(&e, s.cmd[0], s.to_readback, act_offset(1), 0, 1.0f, 0.0f);
    cr_assert_eq(vkEndCommandBuffer(s.cmd[0]), VK_SUCCESS);
    cr_assert(engine_submit(&e, s.cmd, 1));
    scene_destroy(&e, &s);
    engine_destroy(&e);
    cr_assert_gt(e.messages, 0, "the hazard went unreported");
}

/* ---- what the engine enabled and gave ----------------------------------- */

Test(vulkan_interop, fp16_layer_needs_16bit_storage_enabled)
{
    engine e;
    open_engine(&e, true, false);
    mha_context *ctx = NULL;
    cr_assert_eq(mha_context_create(NULL, &ctx), MHA_OK);
    mha_device *dev = adopt(ctx, &e, true);
    mha_layer_config cfg;
    mha_layer_config_init(&cfg, EMBED, HEADS);
    cfg.dtype = MHA_F16;
    mha_layer *layer = NULL;
    assert_error(ctx, mha_layer_create(dev, &cfg, &layer), MHA_UNSUPPORTED,
                 "storageBuffer16BitAccess");
    cr_assert_null(layer);
    cfg.dtype = MHA_F32; /* the device still serves what it can */
    cr_assert_eq(mha_layer_create(dev, &cfg, &layer), MHA_OK);
    mha_layer_destroy(layer);
    mha_device_destroy(dev);
    mha_context_destroy(ctx);
    close_engine(&e);
}

Test(vulkan_interop, without_queue_record_works_and_submits_fail_clearly)
{
    engine e;
    scene s;
    start(&e, &s, NULL, MHA_F32, false);
    run_frames(&e, &s);
    static float y[ACT_COUNT];
    assert_error(s.ctx, host_forward(s.layers[0], s.emb.map, y),
                 MHA_UNSUPPORTED, "without a VkQueue");
    mha_forward_args a = layer_args(&s, 0);
    assert_error(s.ctx, mha_layer_forward(s.layers[0], &a), MHA_UNSUPPORTED,
                 "without a VkQueue");
    /* the frames are checked against the CPU backend instead */
    mha_device *cpu = NULL;
    mha_layer *ref[LAYERS] = {NULL};
    cr_assert_eq(mha_device_open(s.ctx, "cpu", NULL, &cpu), MHA_OK);
    cr_assert(scene_layers(s.ctx, cpu, MHA_F32, ref));
    assert_matches(&s, ref, 1e-4);
    for (int l = 0; l < LAYERS; ++l)
        mha_layer_destroy(ref[l]);
    mha_device_destroy(cpu);
    finish(&e, &s);
}

Test(vulkan_interop, engine_keeps_working_after_libmha_is_destroyed)
{
    engine e;
    scene s;
    start(&e, &s, NULL, MHA_F32, true);
    run_frames(&e, &s);
    scene_release_mha(&s); /* every libmha object, the context too */
    /* the engine's queue, command buffers, descriptor sets and buffers */
    VkCommandBufferBeginInfo bi = {
        .sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_BEGIN_INFO};
    cr_assert_eq(vkBeginCommandBuffer(s.cmd[0], &bi), VK_SUCCESS);
    engine_affine(&e, s.cmd[0], s.to_readback, act_offset(LAYERS), 0, 2.0f,
                  1.0f);
    engine_barrier(s.cmd[0], VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT,
                   VK_ACCESS_SHADER_WRITE_BIT, VK_PIPELINE_STAGE_HOST_BIT,
                   VK_ACCESS_HOST_READ_BIT);
    cr_assert_eq(vkEndCommandBuffer(s.cmd[0]), VK_SUCCESS);
    cr_assert(engine_submit(&e, s.cmd, 1));
    const float *out = s.acts.map + act_offset(LAYERS);
    for (uint32_t i = 0; i < ACT_COUNT; ++i)
        cr_assert_float_eq(s.readback.map[i], out[i] * 2.0f + 1.0f, 1e-5);
    finish(&e, &s);
}

/* A second wrap of the ranges the frames use, recorded with and then
 * destroyed: the descriptor sets it shared with the scene's live tensors
 * stay, so the frames replay without a validation message. And a wrap of
 * libmha's own buffer is refused (its sets would have two owners). */
Test(vulkan_interop, destroying_a_wrap_keeps_other_tensors_records_valid)
{
    engine e;
    scene s;
    start(&e, &s, NULL, MHA_F32, true);
    run_frames(&e, &s);
    const int64_t shape[3] = {TOKENS, BATCH, EMBED};
    mha_tensor *twin[2] = {NULL, NULL};
    for (int i = 0; i < 2; ++i) {
        mha_vulkan_buffer range = {VKB, s.acts.buffer, act_offset(i) * 4ull,
                                   ACT_BYTES, BUFFER_USAGE};
        cr_assert_eq(mha_vulkan_tensor_wrap(s.device, &range, MHA_F32, 3,
                                            shape, &twin[i]), MHA_OK);
    }
    mha_forward_args a;
    mha_forward_args_init(&a);
    a.query = a.key = a.value = twin[0];
    a.output = twin[1];
    VkCommandBufferBeginInfo bi = {
        .sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_BEGIN_INFO};
    VkCommandBuffer spare = s.cmd[FRAMES - 1];
    cr_assert_eq(vkBeginCommandBuffer(spare, &bi), VK_SUCCESS);
    cr_assert_eq(mha_vulkan_layer_record(s.layers[0], &a, spare), MHA_OK);
    cr_assert_eq(vkEndCommandBuffer(spare), VK_SUCCESS);
    mha_tensor_destroy(twin[0]);
    mha_tensor_destroy(twin[1]);
    cr_assert(scene_record(&e, &s, FRAMES - 1), "%s",
              mha_context_errmsg(s.ctx));
    memset(s.readback.map, 0, ACT_BYTES * FRAMES);
    cr_assert(engine_submit(&e, s.cmd, FRAMES));
    assert_matches(&s, s.layers, 1e-4);

    mha_tensor *own = NULL, *again = NULL;
    mha_vulkan_buffer range;
    mha_vulkan_buffer_init(&range);
    cr_assert_eq(mha_tensor_create(s.device, MHA_F32, 3, shape, &own),
                 MHA_OK);
    cr_assert_eq(mha_vulkan_tensor_buffer(own, &range), MHA_OK);
    assert_error(s.ctx,
                 mha_vulkan_tensor_wrap(s.device, &range, MHA_F32, 3, shape,
                                        &again),
                 MHA_INVALID_ARGUMENT, "libmha's own");
    cr_assert_null(again);
    mha_tensor_destroy(own);
    finish(&e, &s);
}

Test(vulkan_interop, wrap_checks_its_arguments)
{
    engine e;
    scene s;
    start(&e, &s, NULL, MHA_F32, true);
    mha_context *ctx = s.ctx;
    const int64_t shape[3] = {TOKENS, BATCH, EMBED};
    mha_tensor *t = NULL;
    mha_vulkan_buffer b = {VKB, s.acts.buffer, 2, ACT_BYTES, BUFFER_USAGE};
    assert_error(ctx, mha_vulkan_tensor_wrap(s.device, &b, MHA_F32, 3, shape,
                                             &t),
                 MHA_INVALID_ARGUMENT, "multiple of the element size");
    b = (mha_vulkan_buffer){VKB, s.acts.buffer, 4, ACT_BYTES,
                            VK_BUFFER_USAGE_TRANSFER_DST_BIT};
    assert_error(ctx, mha_vulkan_tensor_wrap(s.device, &b, MHA_F32, 3, shape,
                                             &t),
                 MHA_INVALID_ARGUMENT, "STORAGE_BUFFER");
    b = (mha_vulkan_buffer){VKB, s.acts.buffer, 4, VK_WHOLE_SIZE, BUFFER_USAGE};
    assert_error(ctx, mha_vulkan_tensor_wrap(s.device, &b, MHA_F32, 3, shape,
                                             &t),
                 MHA_INVALID_ARGUMENT, "VK_WHOLE_SIZE");
    b = (mha_vulkan_buffer){VKB, s.acts.buffer, 4, ACT_BYTES - 4, BUFFER_USAGE};
    assert_error(ctx, mha_vulkan_tensor_wrap(s.device, &b, MHA_F32, 3, shape,
                                             &t),
                 MHA_BUFFER_TOO_SMALL, "needs");
    b.range = ACT_BYTES;
    assert_error(ctx, mha_vulkan_tensor_wrap(s.device, &b, MHA_BOOL, 3, shape,
                                             &t),
                 MHA_DTYPE_MISMATCH, "bool");
    assert_error(ctx, mha_vulkan_tensor_wrap(s.device, &b, MHA_F32, 3, shape,
                                             NULL),
                 MHA_INVALID_ARGUMENT, "mha_vulkan_tensor_wrap: out is NULL");
    mha_vulkan_device_info shared = engine_share(&e, true);
    assert_error(ctx, mha_vulkan_device_adopt(ctx, &shared, NULL, NULL),
                 MHA_INVALID_ARGUMENT, "mha_vulkan_device_adopt: out is NULL");
    cr_assert_null(t);

    /* wrapped memory is the engine's, not counted as libmha's; emb (no
     * tensor wraps it yet) declared without transfer usage */
    uint64_t before = 0, after = 0;
    mha_device_memory_usage(s.device, &before, NULL);
    mha_vulkan_buffer storage = {VKB, s.emb.buffer, 0, ACT_BYTES,
                                 VK_BUFFER_USAGE_STORAGE_BUFFER_BIT};
    cr_assert_eq(mha_vulkan_tensor_wrap(s.device, &storage, MHA_F32, 3, shape,
                                        &t),
                 MHA_OK, "%s", mha_context_errmsg(ctx));
    mha_device_memory_usage(s.device, &after, NULL);
    cr_assert_eq(before, after);
    static float data[ACT_COUNT];
    fill(data, ACT_COUNT, 5, 1.0f);
    assert_error(ctx, mha_tensor_upload(t, data, sizeof data),
                 MHA_UNSUPPORTED, "TRANSFER_DST");
    mha_tensor_destroy(t);

    /* with transfer usage, uploads land in the engine's buffer in place */
    cr_assert_eq(mha_vulkan_tensor_wrap(s.device, &b, MHA_F32, 3, shape, &t),
                 MHA_OK);
    cr_assert_eq(mha_tensor_upload(t, data, sizeof data), MHA_OK, "%s",
                 mha_context_errmsg(ctx));
    cr_assert_arr_eq(s.acts.map + 1, data, sizeof data);
    static float back[ACT_COUNT];
    cr_assert_eq(mha_tensor_download(t, back, sizeof back), MHA_OK);
    cr_assert_arr_eq(back, data, sizeof data);
    mha_vulkan_buffer where;
    mha_vulkan_buffer_init(&where);
    cr_assert_eq(mha_vulkan_tensor_buffer(t, &where), MHA_OK);
    cr_assert(where.buffer == s.acts.buffer && where.offset == 4 &&
              where.range == ACT_BYTES);
    mha_tensor_destroy(t);

    /* libmha's own tensors can be bound by the engine */
    cr_assert_eq(mha_tensor_create(s.device, MHA_F32, 3, shape, &t), MHA_OK);
    cr_assert_eq(mha_vulkan_tensor_buffer(t, &where), MHA_OK);
    cr_assert(where.buffer && where.offset % 256 == 0 &&
              where.range >= ACT_BYTES &&
              (where.usage & VK_BUFFER_USAGE_STORAGE_BUFFER_BIT));
    mha_tensor_destroy(t);

    /* other devices, and a missing command buffer */
    mha_device *cpu = NULL;
    mha_layer *cpu_layers[LAYERS] = {NULL};
    cr_assert_eq(mha_device_open(ctx, "cpu", NULL, &cpu), MHA_OK);
    assert_error(ctx, mha_vulkan_tensor_wrap(cpu, &b, MHA_F32, 3, shape, &t),
                 MHA_INVALID_ARGUMENT, "not on a Vulkan device");
    cr_assert(scene_layers(ctx, cpu, MHA_F32, cpu_layers));
    mha_forward_args a = layer_args(&s, 0);
    assert_error(ctx, mha_vulkan_layer_record(cpu_layers[0], &a, s.cmd[0]),
                 MHA_INVALID_ARGUMENT, "not on a Vulkan device");
    for (int l = 0; l < LAYERS; ++l)
        mha_layer_destroy(cpu_layers[l]);
    mha_device_destroy(cpu);
    assert_error(ctx, mha_vulkan_layer_record(s.layers[0], &a,
                                              VK_NULL_HANDLE),
                 MHA_INVALID_ARGUMENT, "VK_NULL_HANDLE");
    mha_device_info info;
    cr_assert_eq(mha_device_info_of(s.device, &info), MHA_OK);
    cr_assert(info.index == -1 && strstr(info.details, "adopted"));
    finish(&e, &s);
}

/* ---- the cost of recording ---------------------------------------------- */

Test(vulkan_interop, steady_state_record_allocates_nothing)
{
    engine e;
    scene s;
    mha_context_options o = counting_options();
    start(&e, &s, &o, MHA_F32, true);
    run_frames(&e, &s); /* the first records make plans, pipelines, sets */
    size_t first = g_allocs;
    run_frames(&e, &s); /* the same frames recorded again */
    cr_assert_eq(g_allocs, first, "%zu host allocations in steady state",
                 g_allocs - first);
    assert_matches(&s, s.layers, 1e-4);
    finish(&e, &s);
}

/* One frame of a 12-layer BERT-base-shaped stack (E=768, H=12, L=128,
 * N=1, layer l reading act[l] and writing act[l + 1]) recorded REPS times
 * into one command buffer, never submitted: the CPU time of the records
 * and their host allocations. The engine runs without validation here, so
 * the time is libmha's and the driver's. */
Test(vulkan_interop, bert_base_record_cost, .timeout = 600)
{
    enum { E = 768, H = 12, L = 128, DEPTH = 12, REPS = 30 };
    const VkDeviceSize bytes = (VkDeviceSize)L * E * 4;
    engine e;
    open_engine(&e, false, false);
    mha_context_options o = counting_options();
    mha_context *ctx = NULL;
    cr_assert_eq(mha_context_create(&o, &ctx), MHA_OK);
    mha_device *dev = adopt(ctx, &e, true);
    mha_layer *layers[DEPTH] = {NULL};
    mha_tensor *act[DEPTH + 1] = {NULL};
    mha_layer_config cfg;
    mha_layer_config_init(&cfg, E, H);
    cr_assert(create_layers(ctx, dev, &cfg, DEPTH, layers));
    engine_buffer buf;
    cr_assert(engine_buffer_create(&e, bytes * (DEPTH + 1), &buf));
    const int64_t shape[3] = {L, 1, E};
    for (int i = 0; i <= DEPTH; ++i) {
        mha_vulkan_buffer b = {VKB, buf.buffer, bytes * (VkDeviceSize)i, bytes,
                               BUFFER_USAGE};
        cr_assert_eq(mha_vulkan_tensor_wrap(dev, &b, MHA_F32, 3, shape,
                                            &act[i]), MHA_OK);
    }
    VkCommandBufferAllocateInfo ai = {
        .sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_ALLOCATE_INFO,
        .commandPool = e.pool,
        .level = VK_COMMAND_BUFFER_LEVEL_PRIMARY,
        .commandBufferCount = 1};
    VkCommandBuffer cmd;
    cr_assert_eq(vkAllocateCommandBuffers(e.device, &ai, &cmd), VK_SUCCESS);
    VkCommandBufferBeginInfo bi = {
        .sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_BEGIN_INFO};
    double times[REPS], first = 0.0;
    size_t allocs = 0;
    for (int r = -1; r < REPS; ++r) { /* r = -1: the first record */
        cr_assert_eq(vkBeginCommandBuffer(cmd, &bi), VK_SUCCESS);
        size_t a0 = g_allocs;
        double t0 = now_us();
        for (int l = 0; l < DEPTH; ++l) {
            mha_forward_args a;
            mha_forward_args_init(&a);
            a.query = a.key = a.value = act[l];
            a.output = act[l + 1];
            cr_assert_eq(mha_vulkan_layer_record(layers[l], &a, cmd), MHA_OK,
                         "%s", mha_context_errmsg(ctx));
        }
        if (r < 0) {
            first = now_us() - t0;
        } else {
            times[r] = now_us() - t0;
            allocs += g_allocs - a0;
        }
        cr_assert_eq(vkEndCommandBuffer(cmd), VK_SUCCESS);
    }
    for (int i = 1; i < REPS; ++i) /* insertion sort for the median */
        for (int j = i; j > 0 && times[j] < times[j - 1]; --j) {
            double t = times[j];
            times[j] = times[j - 1];
            times[j - 1] = t;
        }
    cr_log_info("record of a %d-layer BERT-base stack (E=%d H=%d L=%d N=1) "
                "into the engine's command buffer: median %.1f us per frame "
                "(%.2f us per layer), min %.1f, max %.1f over %d frames, "
                "%zu host allocations; the first record (plans, scratch, "
                "pipelines, descriptor sets) %.1f ms",
                DEPTH, E, H, L, times[REPS / 2], times[REPS / 2] / DEPTH,
                times[0], times[REPS - 1], REPS, allocs, first / 1e3);
    cr_assert_eq(allocs, 0);
    vkFreeCommandBuffers(e.device, e.pool, 1, &cmd);
    for (int i = 0; i <= DEPTH; ++i)
        mha_tensor_destroy(act[i]);
    for (int l = 0; l < DEPTH; ++l)
        mha_layer_destroy(layers[l]);
    mha_device_destroy(dev);
    mha_context_destroy(ctx);
    engine_buffer_destroy(&e, &buf);
    engine_destroy(&e);
}

/* An engine adopting its own VkDevice can keep libmha from probing Vulkan:
 * with backends "cpu" libmha makes no VkInstance of its own (its device
 * list holds the cpu only), and the adopted device still records frames
 * that match the host forward. */
Test(vulkan_interop, adopted_device_needs_no_vulkan_probe)
{
    engine e;
    scene s;
    mha_context_options o;
    mha_context_options_init(&o);
    o.backends = "cpu";
    start(&e, &s, &o, MHA_F32, true);
    int n = 0;
    cr_assert_eq(mha_device_count(s.ctx, &n), MHA_OK);
    for (int i = 0; i < n; i++) {
        mha_device_info info;
        cr_assert_eq(mha_device_get_info(s.ctx, i, &info), MHA_OK);
        cr_expect_str_eq(info.backend, "cpu");
    }
    run_frames(&e, &s);
    assert_matches(&s, s.layers, 1e-4);
    finish(&e, &s);
}
