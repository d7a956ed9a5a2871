/* test_vulkan_decoder_record.c: decoder steps recorded into an engine's
 * command buffer (mha_vulkan_decoder_record), one per frame at a growing
 * cache length, through the engine of examples/vulkan_engine.c (compiled
 * in, as test_vulkan_interop does) under the Khronos validation layer with
 * synchronization validation, whose messages the engine counts: every
 * test asserts there were none. Each frame's output must equal what
 * mha_decoder_forward gives for the same tokens (a second context adopting
 * the same device, with its own layer and cache) to 1e-5, and after the
 * first decode step a record may create no Vulkan object (pipelines,
 * descriptor sets, memory, buffers: counted through the
 * vkGetDeviceProcAddr the recording context is given) and make no host
 * allocation (counted through its allocator hooks). Covered: a full cache
 * long enough for split-K decode, two sequences, a recorded prefill first;
 * a ring cache of a windowed layer that moves its rows while recording;
 * several steps in one command buffer; the scratch of a recorded step
 * kept when a bigger one is made; the errors of the call; a device
 * below the kernels' 9 storage buffers per stage refused at adoption. */
#include <criterion/criterion.h>

#define MHA_ENGINE_NO_MAIN
#include "vulkan_engine.c"
#include "vulkan_engine_test.h"

enum { E = 32, HQ = 4, HKV = 2, D = 8, B = 2, PREFILL = 5 };

/* ---- what the recording context creates ---------------------------------- */

static int g_objects; /* Vulkan objects created through our table */
static PFN_vkCreateComputePipelines g_pipelines;
static PFN_vkAllocateDescriptorSets g_sets;
static PFN_vkAllocateMemory g_memory;
static PFN_vkCreateBuffer g_buffer;

static VKAPI_ATTR VkResult VKAPI_CALL count_pipelines(
    VkDevice dev, VkPipelineCache cache, uint32_t n,
    const VkComputePipelineCreateInfo *ci, const VkAllocationCallbacks *a,
    VkPipeline *out)
{
    g_objects += (int)n;
    return g_pipelines(dev, cache, n, ci, a, out);
}

static VKAPI_ATTR VkResult VKAPI_CALL count_sets(
    VkDevice dev, const VkDescriptorSetAllocateInfo *ai, VkDescriptorSet *out)
{
    g_objects += (int)ai->descriptorSetCount;
    return g_sets(dev, ai, out);
}

static VKAPI_ATTR VkResult VKAPI_CALL count_memory(
    VkDevice dev, const VkMemoryAllocateInfo *ai,
    const VkAllocationCallbacks *a, VkDeviceMemory *out)
{
    g_objects++;
    return g_memory(dev, ai, a, out);
}

static VKAPI_ATTR VkResult VKAPI_CALL count_buffer(
    VkDevice dev, const VkBufferCreateInfo *ci,
    const VkAllocationCallbacks *a, VkBuffer *out)
{
    g_objects++;
    return g_buffer(dev, ci, a, out);
}

/* vkGetDeviceProcAddr with the creating commands counted. */
static VKAPI_ATTR PFN_vkVoidFunction VKAPI_CALL
counting_gdpa(VkDevice dev, const char *name)
{
    PFN_vkVoidFunction f = vkGetDeviceProcAddr(dev, name);
    if (!strcmp(name, "vkCreateComputePipelines")) {
        g_pipelines = (PFN_vkCreateComputePipelines)f;
        return (PFN_vkVoidFunction)count_pipelines;
    }
    if (!strcmp(name, "vkAllocateDescriptorSets")) {
        g_sets = (PFN_vkAllocateDescriptorSets)f;
        return (PFN_vkVoidFunction)count_sets;
    }
    if (!strcmp(name, "vkAllocateMemory")) {
        g_memory = (PFN_vkAllocateMemory)f;
        return (PFN_vkVoidFunction)count_memory;
    }
    if (!strcmp(name, "vkCreateBuffer")) {
        g_buffer = (PFN_vkCreateBuffer)f;
        return (PFN_vkVoidFunction)count_buffer;
    }
    return f;
}

/* ---- one side: a context adopting the engine's device ------------------ */

typedef struct side {
    mha_context *ctx;
    mha_device *dev;
    mha_decoder *layer;
    mha_kv_cache *cache;
    mha_tensor *x[2], *y[2]; /* [B, PREFILL, E] and [B, 1, E] */
} side;

static void fill_uniform(float *p, size_t n, unsigned *seed, float scale)
{
    for (size_t i = 0; i < n; i++) {
        *seed = *seed * 1664525u + 1013904223u;
        p[i] = ((float)(*seed >> 8) / 16777216.0f - 0.5f) * 2.0f * scale;
    }
}

static void set_weight(side *s, const char *name, int64_t rows, int64_t cols,
                       unsigned seed)
{
    size_t n = (size_t)(rows * cols);
    float *w = malloc(n * sizeof *w);
    fill_uniform(w, n, &seed, 1.0f / sqrtf((float)cols));
    int64_t shape[2] = {rows, cols};
    cr_assert_eq(mha_decoder_set_weight(s->layer, name, w, 2, shape), MHA_OK,
                 "%s", mha_context_errmsg(s->ctx));
    free(w);
}

/* A context on e's device (counting: with the counting hooks and table),
 * a layer of window (0: none) and a cache of capacity (a ring of that
 * window when ring). */
static void side_open(side *s, engine *e, bool counting, int64_t window,
                      int64_t capacity, bool ring)
{
    memset(s, 0, sizeof *s);
    mha_context_options o;
    mha_context_options_init(&o);
    if (counting)
        o = counting_options();
    cr_assert_eq(mha_context_create(&o, &s->ctx), MHA_OK);
    mha_vulkan_device_info info = engine_share(e, true);
    if (counting)
        info.get_device_proc_addr = counting_gdpa;
    cr_assert_eq(mha_vulkan_device_adopt(s->ctx, &info, NULL, &s->dev),
                 MHA_OK, "%s", mha_context_errmsg(s->ctx));
    mha_decoder_config cfg;
    mha_decoder_config_init(&cfg, E, HQ);
    cfg.num_kv_heads = HKV;
    cfg.head_dim = D;
    cfg.window = window;
    cr_assert_eq(mha_decoder_create(s->dev, &cfg, &s->layer), MHA_OK, "%s",
                 mha_context_errmsg(s->ctx));
    set_weight(s, "q_proj.weight", HQ * D, E, 1);
    set_weight(s, "k_proj.weight", HKV * D, E, 2);
    set_weight(s, "v_proj.weight", HKV * D, E, 3);
    set_weight(s, "o_proj.weight", E, HQ * D, 4);
    mha_kv_cache_config kc;
    mha_kv_cache_config_init(&kc);
    kc.capacity = capacity;
    kc.num_sequences = B;
    kc.num_kv_heads = HKV;
    kc.head_dim = D;
    kc.window = ring ? window : 0;
    cr_assert_eq(mha_kv_cache_create(s->dev, &kc, &s->cache), MHA_OK, "%s",
                 mha_context_errmsg(s->ctx));
    for (int i = 0; i < 2; i++) {
        int64_t shape[3] = {B, i ? 1 : PREFILL, E};
        cr_assert_eq(mha_tensor_create(s->dev, MHA_F32, 3, shape, &s->x[i]),
                     MHA_OK);
        cr_assert_eq(mha_tensor_create(s->dev, MHA_F32, 3, shape, &s->y[i]),
                     MHA_OK);
    }
}

static void side_close(side *s)
{
    for (int i = 0; i < 2; i++) {
        mha_tensor_destroy(s->x[i]);
        mha_tensor_destroy(s->y[i]);
    }
    mha_kv_cache_destroy(s->cache);
    mha_decoder_destroy(s->layer);
    mha_device_destroy(s->dev);
    mha_context_destroy(s->ctx);
}

static mha_decoder_forward_args step_args(side *s, int i)
{
    mha_decoder_forward_args a;
    mha_decoder_forward_args_init(&a);
    a.x = s->x[i];
    a.cache = s->cache;
    a.output = s->y[i];
    return a;
}

static VkCommandBuffer engine_cmd(engine *e)
{
    VkCommandBufferAllocateInfo ai = {
        .sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_ALLOCATE_INFO,
        .commandPool = e->pool,
        .level = VK_COMMAND_BUFFER_LEVEL_PRIMARY,
        .commandBufferCount = 1};
    VkCommandBuffer cmd;
    cr_assert_eq(vkAllocateCommandBuffers(e->device, &ai, &cmd), VK_SUCCESS);
    return cmd;
}

static void expect_close(const float *got, const float *want, size_t n,
                         int frame)
{
    for (size_t k = 0; k < n; k++)
        cr_assert(fabsf(got[k] - want[k]) <= 1e-5f,
                  "frame %d: output[%zu] recorded %g, forward %g", frame, k,
                  (double)got[k], (double)want[k]);
}

/* ---- the frames ----------------------------------------------------------- */

/* Records one step of s's layer (tokens x, T of them a sequence) into cmd
 * and submits it; g_allocs and g_objects count the record only. */
static void record_frame(engine *e, side *s, VkCommandBuffer cmd, int i,
                         size_t *allocs, int *objects)
{
    VkCommandBufferBeginInfo bi = {
        .sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_BEGIN_INFO,
        .flags = VK_COMMAND_BUFFER_USAGE_ONE_TIME_SUBMIT_BIT};
    cr_assert_eq(vkBeginCommandBuffer(cmd, &bi), VK_SUCCESS);
    mha_decoder_forward_args a = step_args(s, i);
    size_t a0 = g_allocs;
    int o0 = g_objects;
    cr_assert_eq(mha_vulkan_decoder_record(s->layer, &a, cmd), MHA_OK, "%s",
                 mha_context_errmsg(s->ctx));
    *allocs = g_allocs - a0;
    *objects = g_objects - o0;
    engine_barrier(cmd, VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT,
                   VK_ACCESS_SHADER_WRITE_BIT, VK_PIPELINE_STAGE_HOST_BIT,
                   VK_ACCESS_HOST_READ_BIT);
    cr_assert_eq(vkEndCommandBuffer(cmd), VK_SUCCESS);
    cr_assert(engine_submit(e, &cmd, 1));
}

/* steps frames (a prefill of PREFILL tokens, then single tokens) recorded
 * on one side and run by mha_decoder_forward on the other: equal outputs
 * and lengths, no validation message, and after frame warm no object and
 * no host allocation in a record. */
static void run_frames(int64_t window, int64_t capacity, bool ring,
                       int steps, int warm)
{
    engine e;
    open_engine(&e, true, false);
    side rec, ref;
    side_open(&rec, &e, true, window, capacity, ring);
    side_open(&ref, &e, false, window, capacity, ring);
    VkCommandBuffer cmd = engine_cmd(&e);
    float x[B * PREFILL * E], got[B * PREFILL * E], want[B * PREFILL * E];
    unsigned seed = 99;
    int64_t len = 0;
    for (int f = 0; f < steps; f++) {
        int i = f ? 1 : 0;
        int64_t T = f ? 1 : PREFILL;
        size_t n = (size_t)(B * T * E), allocs;
        int objects;
        fill_uniform(x, n, &seed, 1.0f);
        cr_assert_eq(mha_tensor_upload(rec.x[i], x, n * 4), MHA_OK);
        cr_assert_eq(mha_tensor_upload(ref.x[i], x, n * 4), MHA_OK);
        record_frame(&e, &rec, cmd, i, &allocs, &objects);
        mha_decoder_forward_args a = step_args(&ref, i);
        cr_assert_eq(mha_decoder_forward(ref.layer, &a), MHA_OK, "%s",
                     mha_context_errmsg(ref.ctx));
        cr_assert_eq(mha_tensor_download(rec.y[i], got, n * 4), MHA_OK);
        cr_assert_eq(mha_tensor_download(ref.y[i], want, n * 4), MHA_OK);
        expect_close(got, want, n, f);
        len += T;
        for (int64_t b = 0; b < B; b++) {
            int64_t l = -1;
            cr_assert_eq(mha_kv_cache_length(rec.cache, b, &l), MHA_OK);
            cr_assert_eq(l, len);
        }
        if (f > warm)
            cr_assert(allocs == 0 && objects == 0,
                      "frame %d (length %lld): the record made %zu host "
                      "allocations and %d Vulkan objects",
                      f, (long long)len, allocs, objects);
    }
    vkFreeCommandBuffers(e.device, e.pool, 1, &cmd);
    side_close(&rec);
    side_close(&ref);
    close_engine(&e);
}

/* capacity 512: decode splits the keys over 4 workgroups (split-K); warm
 * after the first decode step (frame 1). */
Test(vulkan_decoder_record, full_cache_steps_match_forward, .timeout = 600)
{
    run_frames(0, 512, false, 40, 1);
}

/* window 8, ring of 16: rows move every 9 tokens (frames 12, 21, 30, 39),
 * recorded too; warm after the first move (its copy's descriptor sets). */
Test(vulkan_decoder_record, ring_cache_steps_match_forward, .timeout = 600)
{
    run_frames(8, 16, true, 40, 12);
}

/* STEPS decode steps recorded into one command buffer, each on its own x
 * and output, submitted once: the later steps see the earlier ones'
 * appends and lengths (the recorded writes are ordered), as STEPS forwards
 * do. */
Test(vulkan_decoder_record, several_steps_in_one_command_buffer)
{
    enum { STEPS = 4 };
    engine e;
    open_engine(&e, true, false);
    side rec, ref;
    side_open(&rec, &e, true, 0, 64, false);
    side_open(&ref, &e, false, 0, 64, false);
    mha_tensor *x[STEPS], *y[STEPS];
    int64_t shape[3] = {B, 1, E};
    float in[STEPS][B * E], got[B * E], want[STEPS][B * E];
    unsigned seed = 5;
    VkCommandBuffer cmd = engine_cmd(&e);
    VkCommandBufferBeginInfo bi = {
        .sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_BEGIN_INFO};
    cr_assert_eq(vkBeginCommandBuffer(cmd, &bi), VK_SUCCESS);
    for (int s = 0; s < STEPS; s++) {
        cr_assert_eq(mha_tensor_create(rec.dev, MHA_F32, 3, shape, &x[s]),
                     MHA_OK);
        cr_assert_eq(mha_tensor_create(rec.dev, MHA_F32, 3, shape, &y[s]),
                     MHA_OK);
        fill_uniform(in[s], B * E, &seed, 1.0f);
        cr_assert_eq(mha_tensor_upload(x[s], in[s], sizeof in[s]), MHA_OK);
        mha_decoder_forward_args a = step_args(&rec, 1);
        a.x = x[s];
        a.output = y[s];
        cr_assert_eq(mha_vulkan_decoder_record(rec.layer, &a, cmd), MHA_OK,
                     "%s", mha_context_errmsg(rec.ctx));
        int64_t len = 0;
        cr_assert_eq(mha_kv_cache_length(rec.cache, 1, &len), MHA_OK);
        cr_assert_eq(len, s + 1, "the host length is the recorded one");
        cr_assert_eq(mha_tensor_upload(ref.x[1], in[s], sizeof in[s]),
                     MHA_OK);
        a = step_args(&ref, 1);
        cr_assert_eq(mha_decoder_forward(ref.layer, &a), MHA_OK);
        cr_assert_eq(mha_tensor_download(ref.y[1], want[s], sizeof want[s]),
                     MHA_OK);
    }
    int64_t group0[2] = {0, 1}; /* the recorded steps read its weights */
    cr_expect_eq(mha_decoder_prune_heads(rec.layer, group0, 2),
                 MHA_BAD_STATE, "%s", mha_context_errmsg(rec.ctx));
    engine_barrier(cmd, VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT,
                   VK_ACCESS_SHADER_WRITE_BIT, VK_PIPELINE_STAGE_HOST_BIT,
                   VK_ACCESS_HOST_READ_BIT);
    cr_assert_eq(vkEndCommandBuffer(cmd), VK_SUCCESS);
    cr_assert(engine_submit(&e, &cmd, 1));
    for (int s = 0; s < STEPS; s++) {
        cr_assert_eq(mha_tensor_download(y[s], got, sizeof got), MHA_OK);
        expect_close(got, want[s], B * E, s);
        mha_tensor_destroy(x[s]);
        mha_tensor_destroy(y[s]);
    }
    vkFreeCommandBuffers(e.device, e.pool, 1, &cmd);
    side_close(&rec);
    side_close(&ref);
    close_engine(&e);
}

/* A layer on another backend, no command buffer, a bad argument: each
 * refused with its status and a message naming the call; a refused
 * record leaves the host lengths as they were. */
Test(vulkan_decoder_record, errors)
{
    engine e;
    open_engine(&e, true, false);
    side rec;
    side_open(&rec, &e, false, 0, 8, false);
    VkCommandBuffer cmd = engine_cmd(&e);
    mha_decoder_forward_args a = step_args(&rec, 1);
    cr_assert_eq(mha_vulkan_decoder_record(rec.layer, &a, VK_NULL_HANDLE),
                 MHA_INVALID_ARGUMENT);
    cr_expect(strstr(mha_context_errmsg(rec.ctx), "VK_NULL_HANDLE"), "%s",
              mha_context_errmsg(rec.ctx));
    VkCommandBufferBeginInfo bi = {
        .sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_BEGIN_INFO};
    cr_assert_eq(vkBeginCommandBuffer(cmd, &bi), VK_SUCCESS);
    a.output = rec.y[0]; /* [B, PREFILL, E] for a step of one token */
    cr_assert_eq(mha_vulkan_decoder_record(rec.layer, &a, cmd),
                 MHA_SHAPE_MISMATCH);
    const char *msg = mha_context_errmsg(rec.ctx);
    cr_expect(strstr(msg, "mha_vulkan_decoder_record") &&
                  strstr(msg, "output"), "%s", msg);
    int64_t len = -1;
    cr_assert_eq(mha_kv_cache_length(rec.cache, 0, &len), MHA_OK);
    cr_expect_eq(len, 0);
    cr_assert_eq(vkEndCommandBuffer(cmd), VK_SUCCESS);

    mha_device *cpu = NULL;
    mha_decoder *layer = NULL;
    mha_decoder_config cfg;
    mha_decoder_config_init(&cfg, E, HQ);
    cr_assert_eq(mha_device_open(rec.ctx, "cpu", NULL, &cpu), MHA_OK);
    cr_assert_eq(mha_decoder_create(cpu, &cfg, &layer), MHA_OK);
    cr_assert_eq(mha_vulkan_decoder_record(layer, &a, cmd),
                 MHA_INVALID_ARGUMENT);
    cr_expect(strstr(mha_context_errmsg(rec.ctx), "not on a Vulkan device"),
              "%s", mha_context_errmsg(rec.ctx));
    cr_assert_eq(mha_vulkan_decoder_record(NULL, &a, cmd),
                 MHA_INVALID_ARGUMENT);
    mha_decoder_destroy(layer);
    mha_device_destroy(cpu);
    vkFreeCommandBuffers(e.device, e.pool, 1, &cmd);
    side_close(&rec);
    close_engine(&e);
}

/* A device with fewer storage buffers per stage than the kernels bind
 * (MHA_VULKAN_LIMITS storage=4, Vulkan's minimum) is refused at adoption
 * with both numbers, not at the first pipeline. */
Test(vulkan_decoder_record, adopting_a_device_below_nine_storage_buffers)
{
    setenv("MHA_VULKAN_LIMITS", "storage=4", 1);
    engine e;
    open_engine(&e, true, false);
    mha_context *ctx = NULL;
    cr_assert_eq(mha_context_create(NULL, &ctx), MHA_OK);
    mha_vulkan_device_info info = engine_share(&e, true);
    mha_device *dev = NULL;
    cr_assert_eq(mha_vulkan_device_adopt(ctx, &info, NULL, &dev),
                 MHA_UNSUPPORTED);
    const char *msg = mha_context_errmsg(ctx);
    cr_expect(strstr(msg, "4 storage buffers per stage") &&
                  strstr(msg, "kernels bind 9"), "%s", msg);
    cr_assert_null(dev);
    mha_context_destroy(ctx);
    close_engine(&e);
}

/* A step recorded into a command buffer not yet submitted uses the layer's
 * scratch of its bucket of B*T and the device's split-K partials (cache
 * 512: split); a later, bigger step must free neither (the first command
 * buffer may still run): the recording layer grows its device memory by
 * more than a layer that only runs forwards (which frees the old bucket),
 * and both command buffers, submitted after, give the forwards' outputs
 * with no validation message (a freed range's descriptor sets go). */
Test(vulkan_decoder_record, recorded_scratch_outlives_a_bigger_bucket)
{
    engine e;
    open_engine(&e, true, false);
    side rec, ref;
    side_open(&rec, &e, false, 0, 512, false);
    side_open(&ref, &e, false, 0, 512, false);
    VkCommandBuffer cmd[2] = {engine_cmd(&e), engine_cmd(&e)};
    VkCommandBufferBeginInfo bi = {
        .sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_BEGIN_INFO};
    float in[B * PREFILL * E], got[B * PREFILL * E], want[2][B * PREFILL * E];
    unsigned seed = 11;
    uint64_t grew[2];
    for (int f = 0; f < 2; f++) {
        int i = f ? 0 : 1; /* one token, then a prefill-sized step */
        size_t n = (size_t)(B * (i ? 1 : PREFILL) * E);
        fill_uniform(in, n, &seed, 1.0f);
        cr_assert_eq(mha_tensor_upload(rec.x[i], in, n * 4), MHA_OK);
        cr_assert_eq(mha_tensor_upload(ref.x[i], in, n * 4), MHA_OK);
        uint64_t before[2], after[2];
        cr_assert_eq(mha_device_memory_usage(rec.dev, &before[0], NULL),
                     MHA_OK);
        cr_assert_eq(mha_device_memory_usage(ref.dev, &before[1], NULL),
                     MHA_OK);
        cr_assert_eq(vkBeginCommandBuffer(cmd[f], &bi), VK_SUCCESS);
        mha_decoder_forward_args a = step_args(&rec, i);
        cr_assert_eq(mha_vulkan_decoder_record(rec.layer, &a, cmd[f]),
                     MHA_OK, "%s", mha_context_errmsg(rec.ctx));
        engine_barrier(cmd[f], VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT,
                       VK_ACCESS_SHADER_WRITE_BIT, VK_PIPELINE_STAGE_HOST_BIT,
                       VK_ACCESS_HOST_READ_BIT);
        cr_assert_eq(vkEndCommandBuffer(cmd[f]), VK_SUCCESS);
        a = step_args(&ref, i);
        cr_assert_eq(mha_decoder_forward(ref.layer, &a), MHA_OK);
        cr_assert_eq(mha_tensor_download(ref.y[i], want[f], n * 4), MHA_OK);
        cr_assert_eq(mha_device_memory_usage(rec.dev, &after[0], NULL),
                     MHA_OK);
        cr_assert_eq(mha_device_memory_usage(ref.dev, &after[1], NULL),
                     MHA_OK);
        if (f == 1)
            cr_expect_gt(after[0] - before[0], after[1] - before[1],
                         "the recorded step's scratch was freed");
        grew[f] = after[0] - before[0];
    }
    cr_expect_gt(grew[1], 0, "the bigger bucket made no new scratch");
    cr_assert(engine_submit(&e, cmd, 2));
    for (int f = 0; f < 2; f++) {
        int i = f ? 0 : 1;
        size_t n = (size_t)(B * (i ? 1 : PREFILL) * E);
        cr_assert_eq(mha_tensor_download(rec.y[i], got, n * 4), MHA_OK);
        expect_close(got, want[f], n, f);
    }
    vkFreeCommandBuffers(e.device, e.pool, 2, cmd);
    side_close(&rec);
    side_close(&ref);
    close_engine(&e);
}
