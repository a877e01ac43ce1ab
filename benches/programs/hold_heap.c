// Holds N blocks of SIZE bytes (default 1 M of 1 KiB: 1 GiB) in a table held by a
// global, each block's first word pointing at the block allocated before it and the
// rest filled (resident, no pointers); prints "ready", then answers each line on stdin
// with "pong" until EOF. For `cargo bench --bench snapshot -- --during-run`.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void **table;

int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 1L << 20;
    long size = argc > 2 ? atol(argv[2]) : 1024;
    table = malloc(n * sizeof *table);
    void *prev = NULL;
    for (long i = 0; i < n; i++) {
        void **b = malloc(size);
        memset(b, 0x5a, size);
        b[0] = prev;
        table[i] = b;
        prev = b;
    }
    printf("ready\n");
    fflush(stdout);
    char line[64];
    while (fgets(line, sizeof line, stdin)) {
        printf("pong\n");
        fflush(stdout);
    }
    return 0;
}
