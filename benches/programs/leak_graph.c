// N live blocks (~100 bytes each) forming a dense pointer graph: every block points to
// two others; the first 3/4 are reachable from a global table, the last quarter is
// lost (a lost graph: definitely + indirectly lost).
#include <stdio.h>
#include <stdlib.h>
struct node { struct node *a, *b; char pad[84]; };
struct node **table;
int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 10000000;
    struct node **all = malloc(sizeof *all * n);
    for (long i = 0; i < n; i++) all[i] = malloc(sizeof(struct node));
    unsigned long x = 88172645463325252ull;
    for (long i = 0; i < n; i++) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        long lo = i < 3 * n / 4 ? 0 : 3 * n / 4, span = i < 3 * n / 4 ? 3 * n / 4 : n - 3 * n / 4;
        all[i]->a = all[lo + (long)(x % span)];
        all[i]->b = all[lo + (long)((x >> 20) % span)];
    }
    table = malloc(sizeof *table * (3 * n / 4));
    for (long i = 0; i < 3 * n / 4; i++) table[i] = all[i];
    free(all);
    printf("%ld blocks\n", n);
    return 0;
}
