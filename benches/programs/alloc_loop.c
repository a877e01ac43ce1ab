// Allocation-heavy loop: N malloc/free pairs of 32..287 bytes.
#include <stdio.h>
#include <stdlib.h>
int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 100000;
    unsigned long s = 0;
    for (long i = 0; i < n; i++) {
        char *p = malloc(32 + (i & 255));
        p[0] = (char)i;
        s += (unsigned char)p[0];
        free(p);
    }
    printf("%lu\n", s);
    return 0;
}
