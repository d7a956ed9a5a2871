/* test_backend_iface.c: the backend contract's check (core/backend.c): every
 * compiled-in backend passes it, and a backend that lacks a method or was
 * built for an interface version libmha does not know is refused with a
 * message naming the backend and the method or both versions. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

#include "backend.h"

Test(backend_iface, every_registered_backend_passes)
{
    char why[160];
    for (int i = 0; mha_backend_registry[i]; i++)
        cr_expect(mha_backend_check(mha_backend_registry[i], why, sizeof why),
                  "%s", why);
}

static void expect_refused(const mha_backend_iface *iface, const char *word)
{
    char why[160] = "";
    cr_expect(!mha_backend_check(iface, why, sizeof why),
              "a backend without %s was accepted", word);
    cr_expect(strstr(why, iface->name) && strstr(why, word),
              "message \"%s\" names neither the backend nor %s", why, word);
}

/* Each method of MHA_BACKEND_METHODS removed in turn. */
#define REMOVE_ONE(method, since)                                            \
    {                                                                        \
        mha_backend_iface f = *mha_backend_registry[0];                      \
        f.name = "broken";                                                   \
        f.method = NULL;                                                     \
        expect_refused(&f, #method);                                         \
    }

Test(backend_iface, a_missing_method_is_refused_by_name)
{
    MHA_BACKEND_METHODS(REMOVE_ONE)
}

Test(backend_iface, an_unknown_version_is_refused_naming_both)
{
    char now[16];
    snprintf(now, sizeof now, "%d", MHA_BACKEND_IFACE_VERSION);
    const int bad[] = {0, MHA_BACKEND_IFACE_VERSION + 1};
    for (int i = 0; i < 2; i++) {
        mha_backend_iface f = *mha_backend_registry[0];
        f.name = "future";
        f.version = bad[i];
        char version[16];
        snprintf(version, sizeof version, "version %d", bad[i]);
        expect_refused(&f, version);
        char why[160];
        mha_backend_check(&f, why, sizeof why);
        cr_expect(strstr(why, now), "\"%s\" lacks libmha's version %s", why,
                  now);
    }
}

Test(backend_iface, a_nameless_backend_is_refused)
{
    mha_backend_iface f = *mha_backend_registry[0];
    f.name = NULL;
    char why[160];
    cr_expect(!mha_backend_check(&f, why, sizeof why));
}
