/* Cortex-M harness without libc: file I/O, arguments and exit through Arm semihosting
 * (bkpt 0xab), as QEMU's -semihosting-config provides. Arguments (the arg= items):
 *   otl IN.ppm OUT.bin       raw int8 latents, as otl_host writes them
 * Paths are relative to the emulator's working folder and must not contain spaces.
 * Errors: a message on the semihosting console, exit code 1, no output file. */
#include <stddef.h>
#include <stdint.h>

#include "otl_harness.h"
#include "otl_model.h"

enum { SYS_OPEN = 0x01, SYS_CLOSE = 0x02, SYS_WRITE0 = 0x04, SYS_WRITE = 0x05, SYS_READ = 0x06, SYS_SEEK = 0x0A,
       SYS_REMOVE = 0x0E, SYS_RENAME = 0x0F, SYS_GET_CMDLINE = 0x15, SYS_EXIT_EXTENDED = 0x20 };
enum { MODE_RB = 1, MODE_WB = 5 };

static int32_t semihost(int32_t op, void *arg) {
    register int32_t r0 __asm__("r0") = op;
    register void *r1 __asm__("r1") = arg;
    __asm__ volatile("bkpt 0xab" : "+r"(r0) : "r"(r1) : "memory");
    return r0;
}

void otl_semihost_exit(int code) {
    uint32_t block[2] = {0x20026u, (uint32_t)code};  /* ADP_Stopped_ApplicationExit, code */
    semihost(SYS_EXIT_EXTENDED, block);
    for (;;) {
    }
}

static size_t length(const char *s) {
    size_t n = 0;
    while (s[n]) n++;
    return n;
}

static void say(const char *s) { semihost(SYS_WRITE0, (void *)s); }

static int32_t open_file(const char *path, int32_t mode) {
    uint32_t block[3] = {(uint32_t)(uintptr_t)path, (uint32_t)mode, (uint32_t)length(path)};
    return semihost(SYS_OPEN, block);
}

static void close_file(int32_t handle) {
    uint32_t block[1] = {(uint32_t)handle};
    semihost(SYS_CLOSE, block);
}

static int read_file(void *file, uint8_t *buf, size_t n) {
    uint32_t block[3] = {(uint32_t)(uintptr_t)file, (uint32_t)(uintptr_t)buf, (uint32_t)n};
    return semihost(SYS_READ, block) != 0;  /* returns the bytes NOT read */
}

static int write_at(void *file, size_t offset, const uint8_t *buf, size_t n) {
    uint32_t seek[2] = {(uint32_t)(uintptr_t)file, (uint32_t)offset};
    uint32_t block[3] = {(uint32_t)(uintptr_t)file, (uint32_t)(uintptr_t)buf, (uint32_t)n};
    if (semihost(SYS_SEEK, seek) != 0) return 1;
    return semihost(SYS_WRITE, block) != 0;  /* returns the bytes NOT written */
}

static int fail(const char *path, const char *message) {
    say("otl: ");
    say(path);
    say(": ");
    say(message);
    say("\n");
    return 1;
}

static uint32_t work[OTL_MCU_WORK_BYTES / 4];  /* rows up to OTL_MCU_MAX_WIDTH pixels */
static char cmdline[512], part[300];

int main(void) {
    uint32_t block[2] = {(uint32_t)(uintptr_t)cmdline, sizeof(cmdline)};
    char *argv[4];
    int argc = 0, width, height;
    char *p = cmdline;
    int32_t in, out;
    otl_files io;
    size_t written, n;
    const char *error;
    if (semihost(SYS_GET_CMDLINE, block) != 0) return fail("otl", "no semihosting command line");
    while (*p && argc < 4) {  /* split on spaces */
        while (*p == ' ') *p++ = 0;
        if (*p) argv[argc++] = p;
        while (*p && *p != ' ') p++;
    }
    if (argc != 3) return fail("otl", "usage: otl IN.ppm OUT.bin (semihosting arguments)");
    if ((n = length(argv[2])) + 6 > sizeof(part)) return fail(argv[2], "path too long");
    for (n = 0; argv[2][n]; n++) part[n] = argv[2][n];
    part[n] = '.', part[n + 1] = 'p', part[n + 2] = 'a', part[n + 3] = 'r', part[n + 4] = 't', part[n + 5] = 0;
    if ((in = open_file(argv[1], MODE_RB)) < 0) return fail(argv[1], "cannot open");
    io.in = (void *)(uintptr_t)in;
    io.read = read_file;
    io.write_at = write_at;
    if ((error = otl_read_ppm_header(&io, &width, &height))) return fail(argv[1], error);
    if (width > OTL_MCU_MAX_WIDTH) return fail(argv[1], "image wider than OTL_MCU_MAX_WIDTH, the rows the static work buffer holds");
    if ((out = open_file(part, MODE_WB)) < 0) return fail(part, "cannot create");
    io.out = (void *)(uintptr_t)out;
    error = otl_encode_ppm(&io, width, height, 0, (uint8_t *)work, sizeof(work), &written);
    close_file(in);
    close_file(out);
    if (error) {
        uint32_t remove[2] = {(uint32_t)(uintptr_t)part, (uint32_t)length(part)};
        semihost(SYS_REMOVE, remove);
        return fail(argv[1], error);
    } else {
        uint32_t rename[4] = {(uint32_t)(uintptr_t)part, (uint32_t)length(part), (uint32_t)(uintptr_t)argv[2],
                              (uint32_t)length(argv[2])};
        if (semihost(SYS_RENAME, rename) != 0) return fail(argv[2], "cannot rename the finished output into place");
    }
    return 0;
}
