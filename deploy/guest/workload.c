/* The guest's memory workload: fills MIB MiB with a pattern that says which page it is and which
 * generation of it, then passes over it for ever: each pass checks every page against what it should
 * hold (counting pages that differ), rewrites every REWRITE-th page with its next generation, and
 * prints one line to the console (the serial log):
 *   WORKLOAD pass=P mib=M errors=E checksum=C ms=T
 * errors counts every page ever found wrong: memory that a migration or the pager got wrong shows
 * there. checksum is over the generations, so both ends of a migration can be compared. Creates
 * /run/work-ready after the first pass. Static, so the initramfs needs no libc. */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static uint64_t mix(uint64_t x) {
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

static void fill(uint64_t *page, uint64_t index, uint32_t gen) {
    uint64_t seed = mix(index * 1000003ULL + gen);
    for (int w = 0; w < 512; w++) page[w] = seed + (uint64_t)w * 0x100000001b3ULL;
}

static int check(const uint64_t *page, uint64_t index, uint32_t gen) {
    uint64_t seed = mix(index * 1000003ULL + gen);
    for (int w = 0; w < 512; w++)
        if (page[w] != seed + (uint64_t)w * 0x100000001b3ULL) return 0;
    return 1;
}

static uint64_t now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s MIB [REWRITE]\n", argv[0]);
        return 2;
    }
    size_t pages = (size_t)atol(argv[1]) * 256;
    size_t rewrite = argc > 2 ? (size_t)atol(argv[2]) : 7;
    uint64_t *mem = mmap(NULL, pages * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    uint32_t *gen = calloc(pages, sizeof *gen);
    if (mem == MAP_FAILED || !gen) {
        perror("workload: memory");
        return 1;
    }
    int console = open("/dev/console", O_WRONLY);
    for (size_t i = 0; i < pages; i++) fill(mem + i * 512, i, 0);
    uint64_t errors = 0;
    for (uint64_t pass = 1;; pass++) {
        uint64_t start = now_ms(), checksum = 0;
        for (size_t i = 0; i < pages; i++) {
            uint64_t *page = mem + i * 512;
            if (!check(page, i, gen[i])) errors++;
            if ((i + pass) % rewrite == 0) fill(page, i, ++gen[i]);
            checksum = mix(checksum ^ (i * 31 + gen[i]));
        }
        dprintf(console >= 0 ? console : 1, "WORKLOAD pass=%llu mib=%zu errors=%llu checksum=%016llx ms=%llu\n",
                (unsigned long long)pass, pages / 256, (unsigned long long)errors, (unsigned long long)checksum,
                (unsigned long long)(now_ms() - start));
        if (pass == 1) close(open("/run/work-ready", O_CREAT | O_WRONLY, 0644));
    }
}
