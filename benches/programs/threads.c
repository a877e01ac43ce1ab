// N threads x M malloc/free pairs; prints a checksum.
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
static int iters = 100000;
static void *work(void *arg) {
    unsigned long sum = 0;
    for (int i = 0; i < iters; i++) {
        char *p = malloc(16 + (i % 64));
        p[0] = (char)i;
        sum += (unsigned char)p[0];
        free(p);
    }
    return (void *)sum;
}
int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 8;
    if (argc > 2) iters = atoi(argv[2]);
    pthread_t t[64];
    for (int i = 0; i < n; i++) pthread_create(&t[i], 0, work, 0);
    unsigned long total = 0;
    for (int i = 0; i < n; i++) { void *r; pthread_join(t[i], &r); total += (unsigned long)r; }
    printf("checksum %lu\n", total);
    return 0;
}
