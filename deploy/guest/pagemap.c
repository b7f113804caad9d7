/* In-guest ground truth for one process: every present PFN its page tables map, from
 * /proc/PID/maps and /proc/PID/pagemap (needs root). Prints "GT-PFNS <pid> <comm> <n>" and then
 * the PFNs in hex, 16 per "GT-PFN <pid>" line. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv) {
    if (argc != 2) return 2;
    char path[64], comm[64] = "";
    int pid = atoi(argv[1]);
    snprintf(path, sizeof path, "/proc/%d/comm", pid);
    FILE *c = fopen(path, "r");
    if (c) { if (fgets(comm, sizeof comm, c)) comm[strcspn(comm, "\n")] = 0; fclose(c); }
    snprintf(path, sizeof path, "/proc/%d/maps", pid);
    FILE *maps = fopen(path, "r");
    snprintf(path, sizeof path, "/proc/%d/pagemap", pid);
    FILE *pm = fopen(path, "rb");
    if (!maps || !pm) return 1;
    static uint64_t pfns[1 << 20];
    size_t n = 0;
    char line[512];
    while (fgets(line, sizeof line, maps)) {
        unsigned long lo, hi;
        if (sscanf(line, "%lx-%lx", &lo, &hi) != 2) continue;
        if (strstr(line, "[vsyscall]")) continue;
        for (unsigned long va = lo; va < hi && n < (1 << 20); va += 4096) {
            uint64_t e;
            if (fseek(pm, (long)(va / 4096 * 8), SEEK_SET) || fread(&e, 8, 1, pm) != 1) break;
            if (e >> 63) pfns[n++] = e & ((1ULL << 55) - 1);
        }
    }
    printf("GT-PFNS %d %s %zu\n", pid, comm, n);
    for (size_t i = 0; i < n; i += 16) {
        printf("GT-PFN %d", pid);
        for (size_t j = i; j < n && j < i + 16; j++) printf(" %llx", (unsigned long long)pfns[j]);
        printf("\n");
    }
    return 0;
}
