// N int3 traps: the floor cost of one ptrace stop.
#include <stdlib.h>
int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 10000;
    for (long i = 0; i < n; i++) __asm__ volatile("int3");
    return 0;
}
