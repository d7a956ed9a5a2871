/* vulkan_engine_test.h: what the Criterion suites that drive the engine
 * of examples/vulkan_engine.c share (test_vulkan_interop.c,
 * test_vulkan_decoder_record.c): starting the engine or skipping, closing
 * it with the validation layer's messages asserted to be none, and host
 * allocations counted through a context's hooks. Include it after
 * vulkan_engine.c (compiled in with MHA_ENGINE_NO_MAIN). */
#ifndef MHA_VULKAN_ENGINE_TEST_H
#define MHA_VULKAN_ENGINE_TEST_H

#include <criterion/criterion.h>

/* Makes the engine, or skips when there is no Vulkan device (fails when
 * MHA_REQUIRE_VULKAN=1). */
static void open_engine(engine *e, bool validation, bool fp16)
{
    if (engine_create(e, validation, fp16))
        return;
    bool none = e->instance && !e->gpu;
    engine_destroy(e);
    const char *req = getenv("MHA_REQUIRE_VULKAN");
    if (none && !(req && strcmp(req, "1") == 0))
        cr_skip_test("no Vulkan 1.1 device with a compute queue");
    cr_assert_fail("the engine could not start (see stderr)");
}

/* Closes the engine and asserts the validation layer reported nothing
 * over its whole life (leaked objects are reported at vkDestroyDevice). */
static void close_engine(engine *e)
{
    engine_destroy(e);
    cr_assert_eq(e->messages, 0, "%d validation message(s), see stderr",
                 e->messages);
}

/* Host allocations through a context's hooks, counted. */
static size_t g_allocs;

static void *counting_malloc(void *user, size_t size)
{
    (void)user;
    g_allocs++;
    return malloc(size);
}

static void counting_free(void *user, void *ptr)
{
    (void)user;
    free(ptr);
}

static const mha_allocator g_counting = {counting_malloc, counting_free,
                                         NULL};

static mha_context_options counting_options(void)
{
    mha_context_options o;
    mha_context_options_init(&o);
    o.allocator = &g_counting;
    return o;
}

#endif /* MHA_VULKAN_ENGINE_TEST_H */
