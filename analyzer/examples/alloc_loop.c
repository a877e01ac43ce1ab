/* The analyzer benchmark's workload as a program (docs/PERFORMANCE.md, "Analyzer"):
 * the same shape as analyzer/examples/gen_churn_trace.rs. 50 call sites (noinline
 * malloc wrappers), a ring of 10,000 live blocks: each step frees the slot's block and
 * allocates from a pseudo-random site; 1 in 1,000 allocations of site 7 is never freed.
 * `alloc_loop N` makes N allocator events. Sizes are 64 classes (16 + 32k bytes) rather
 * than the generator's 2,048 sizes: with 2,048 sizes, heaptrack 1.4's
 * heaptrack_interpret asks for 24 GiB and dies (std::bad_alloc) after ~250,000
 * allocations, so heaptrack could not record the generator's exact distribution. Sizes
 * do not change heaptape's cost (analysis time per event is the same for both).
 * Build: cc -O2 -g -o alloc_loop alloc_loop.c */
#include <stdlib.h>
#include <stdint.h>

#define RING 10000
typedef void *(*site_fn)(size_t);
#define S(n) __attribute__((noinline)) static void *site##n(size_t s) { void *p = malloc(s); __asm__ volatile("" : : "r"(p) : "memory"); return p; }
#define S10(a) S(a##0) S(a##1) S(a##2) S(a##3) S(a##4) S(a##5) S(a##6) S(a##7) S(a##8) S(a##9)
S10() S10(1) S10(2) S10(3) S10(4)
#define R10(a) site##a##0, site##a##1, site##a##2, site##a##3, site##a##4, site##a##5, site##a##6, site##a##7, site##a##8, site##a##9
static site_fn sites[50] = {R10(), R10(1), R10(2), R10(3), R10(4)};
static void *ring[RING];

int main(int argc, char **argv) {
    uint64_t events = argc > 1 ? strtoull(argv[1], 0, 10) : 1000000, written = 0;
    uint64_t rng = 0x9e3779b97f4a7c15ull;
    for (size_t i = 0; written < events; i++) {
        rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
        size_t slot = i % RING, site = rng % 50;
        if (ring[slot] && written + 1 < events) {
            if (!(site == 7 && rng % 1000 == 0)) { free(ring[slot]); written++; }
        }
        ring[slot] = sites[site](16 + ((rng >> 20) % 64) * 32);
        written++;
    }
    return 0;
}
