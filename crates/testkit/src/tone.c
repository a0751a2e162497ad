/*
 * tone HZ MS: plays a square wave of HZ hertz for MS milliseconds on the PC speaker.
 *
 * Part of the vmgate test guest: the test kit builds it with
 * `cc -static -nostdlib` and puts it in the initramfs as /bin/tone. The guest's cloud
 * kernel has no sound drivers and no /dev/port, so this programs the hardware directly:
 * PIT channel 2 as a square-wave generator at 1193182/HZ, gated to the speaker by bits
 * 0-1 of port 0x61. QEMU's `pcspk` device turns that into audio on the VNC display's
 * audiodev.
 *
 * No C library: a static glibc would add 700 kB to an initramfs that every test boot
 * unpacks under TCG. So there are a few raw x86-64 system calls instead, and the wait is
 * rt_sigtimedwait with SIGINT, SIGTERM, SIGHUP and SIGQUIT blocked: it returns when the
 * time is up or one of them arrives, and either way the speaker is turned off (Ctrl-C
 * never leaves it sounding) without a signal handler.
 */

#define PIT_HZ 1193182L
#define SYS_write 1
#define SYS_rt_sigprocmask 14
#define SYS_rt_sigtimedwait 128
#define SYS_exit_group 231
#define SYS_ioperm 173
#define SYS_clock_gettime 228
#define CLOCK_MONOTONIC 1
#define EINTR 4
#define STOP_SIGNALS ((1UL << (1 - 1)) | (1UL << (2 - 1)) | (1UL << (3 - 1)) | (1UL << (15 - 1)))

struct timespec {
    long tv_sec;
    long tv_nsec;
};

static long sys(long n, long a, long b, long c, long d)
{
    long ret;
    register long r10 __asm__("r10") = d;
    __asm__ volatile("syscall"
                     : "=a"(ret)
                     : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10)
                     : "rcx", "r11", "memory");
    return ret;
}

static void outb(unsigned char value, unsigned short port)
{
    __asm__ volatile("outb %0, %1" : : "a"(value), "Nd"(port));
}

static unsigned char inb(unsigned short port)
{
    unsigned char value;
    __asm__ volatile("inb %1, %0" : "=a"(value) : "Nd"(port));
    return value;
}

static void say(const char *s)
{
    long n = 0;
    while (s[n])
        n++;
    sys(SYS_write, 2, (long)s, n, 0);
}

/* A decimal in [min, max], or -1. */
static long number(const char *s, long min, long max)
{
    long n = 0;
    if (!*s)
        return -1;
    for (; *s; s++) {
        if (*s < '0' || *s > '9' || n > max)
            return -1;
        n = n * 10 + (*s - '0');
    }
    return n >= min && n <= max ? n : -1;
}

static long now_ms(void)
{
    struct timespec t;
    sys(SYS_clock_gettime, CLOCK_MONOTONIC, (long)&t, 0, 0);
    return t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

static int tone(int argc, char **argv)
{
    long hz = argc == 3 ? number(argv[1], 20, 20000) : -1;
    long ms = argc == 3 ? number(argv[2], 0, 600000) : -1;
    if (hz < 0 || ms < 0) {
        say("usage: tone HZ MS   (20 <= HZ <= 20000, 0 <= MS <= 600000)\n");
        return 2;
    }
    if (sys(SYS_ioperm, 0x42, 2, 1, 0) || sys(SYS_ioperm, 0x61, 1, 1, 0)) {
        say("tone: ioperm failed (run as root)\n");
        return 1;
    }
    unsigned long stop = STOP_SIGNALS;
    sys(SYS_rt_sigprocmask, 0 /* SIG_BLOCK */, (long)&stop, 0, 8);

    long divisor = PIT_HZ / hz;
    outb(0xb6, 0x43); /* channel 2, low byte then high byte, mode 3 (square wave) */
    outb(divisor & 0xff, 0x42);
    outb(divisor >> 8, 0x42);
    outb(inb(0x61) | 3, 0x61); /* gate channel 2 on, speaker data on */

    long end = now_ms() + ms;
    long sig = 0;
    for (long left = ms; left > 0; left = end - now_ms()) {
        struct timespec wait = { left / 1000, (left % 1000) * 1000000L };
        sig = sys(SYS_rt_sigtimedwait, (long)&stop, 0, (long)&wait, 8);
        if (sig != -EINTR) /* a stop signal, or the time is up (-EAGAIN) */
            break;
    }
    outb(inb(0x61) & ~3, 0x61);
    return sig > 0 ? 128 + (int)sig : 0;
}

/* The process entry: argc and argv are on the stack. */
void start(long *stack);
void start(long *stack)
{
    sys(SYS_exit_group, tone((int)stack[0], (char **)(stack + 1)), 0, 0, 0);
}

__asm__(".globl _start\n"
        "_start:\n"
        "    xor %rbp, %rbp\n"
        "    mov %rsp, %rdi\n"
        "    and $-16, %rsp\n"
        "    call start\n"
        "    hlt\n");
