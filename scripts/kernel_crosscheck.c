/* Prints a hash of the C kernel's output for every case it handles, from fixed pseudo-random inputs.
 * Built natively and for another architecture (scripts/kernel_crosscheck.sh), the two listings must be equal:
 * the native kernel is tested bit for bit against the torch path, so equal hashes carry that over. */
#define KERNEL_ONLY
#include "../vllm_mlx_loader/_cdequant.c"

#include <stdio.h>

static uint64_t state = 0x9E3779B97F4A7C15ull;

static uint32_t next32(void) {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    return (uint32_t)(state >> 32);
}

/* A finite value of `kind` with a random sign, mantissa and an exponent over a wide range. */
static void random_param(void *p, int kind, int64_t i) {
    uint32_t r = next32(), sign = r >> 31;
    if (kind == KIND_F32) {
        uint32_t u = (sign << 31) | ((100u + r % 50u) << 23) | (next32() & 0x7FFFFFu);
        memcpy((float *)p + i, &u, 4);
    } else if (kind == KIND_BF16) {
        ((uint16_t *)p)[i] = (uint16_t)((sign << 15) | ((100u + r % 50u) << 7) | (next32() & 0x7Fu));
    } else {
        ((uint16_t *)p)[i] = (uint16_t)((sign << 15) | ((r % 31u) << 10) | (next32() & 0x3FFu));
    }
}

int main(void) {
    enum { ROWS = 37, GROUPS = 6 };
    static uint8_t w[ROWS * 128 * GROUPS];
    static uint32_t s[ROWS * GROUPS], b[ROWS * GROUPS];
    static float out[ROWS * 128 * GROUPS];
    const int64_t group_sizes[] = {32, 64, 128};
    for (int bits = 1; bits <= 8; bits++)
        for (int g = 0; g < 3; g++)
            for (int pk = 0; pk <= 2; pk++)
                for (int ok = 0; ok <= 1; ok++)
                    for (int two = 0; two <= (pk == KIND_BF16); two++) {
                        const int64_t gs = group_sizes[g], cols = gs * GROUPS, row_bytes = cols * bits / 8;
                        for (int64_t i = 0; i < ROWS * row_bytes; i++) w[i] = (uint8_t)next32();
                        for (int64_t i = 0; i < ROWS * GROUPS; i++) {
                            random_param(s, pk, i);
                            random_param(b, pk, i);
                        }
                        dequant_rows(w, s, b, out, ROWS, row_bytes, bits, gs, pk, ok, two);
                        const uint8_t *o = (const uint8_t *)out;
                        uint64_t h = 1469598103934665603ull;
                        for (int64_t i = 0; i < ROWS * cols * (ok == KIND_F32 ? 4 : 2); i++) h = (h ^ o[i]) * 1099511628211ull;
                        printf("bits=%d group_size=%lld params=%d out=%d two_roundings=%d %016llx\n", bits,
                               (long long)gs, pk, ok, two, (unsigned long long)h);
                    }
    return 0;
}
