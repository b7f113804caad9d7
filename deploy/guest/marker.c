/* A recognisable guest process: fills MIB MiB of heap with MARKER repeated, then either sleeps for
 * ever or ("free") releases the memory and exits, leaving stale markers in free pages.
 * Writes /run/ready/<pid> once its memory is filled. Static, so the initramfs needs no libc. */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s MARKER MIB [free]\n", argv[0]);
        return 2;
    }
    const char *marker = argv[1];
    size_t len = strlen(marker), size = (size_t)atol(argv[2]) << 20;
    /* mmap, not malloc: the pages go straight back to the buddy allocator on munmap. */
    char *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    for (size_t i = 0; i < size; i++) p[i] = marker[i % len];
    if (argc > 3 && strcmp(argv[3], "free") == 0) munmap(p, size);
    char path[64];
    snprintf(path, sizeof path, "/run/ready/%d", (int)getpid());
    close(open(path, O_CREAT | O_WRONLY, 0644));
    if (argc > 3) return 0;
    for (;;) pause();
}
