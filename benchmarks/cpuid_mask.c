/* An LD_PRELOAD shim that makes a process see an AVX2-only x86-64 CPU (x86-64-v3), so that
 * every library in it -- ONNX Runtime's MLAS, OpenVINO's kernels, oneDNN, ATen, numpy --
 * dispatches as it would on an AVX2 machine, including the ones with no cap variable.
 *
 * How: Linux's CPUID faulting (arch_prctl ARCH_SET_CPUID, the cpuid_fault flag in
 * /proc/cpuinfo). With faulting on, the CPUID instruction raises SIGSEGV (si_code SI_KERNEL);
 * the handler runs the real CPUID with faulting briefly off, clears the AVX-512, AMX and AVX-VNNI
 * feature bits of leaf 7, writes the result into the faulting thread's registers and steps
 * over the 2-byte instruction. The setting is per thread, inherited by threads and forks, and
 * reset by exec (the shim's constructor sets it again in every process that preloads it).
 *
 * SIGSEGV handlers installed later through sigaction() or signal() are kept and chained behind
 * this one (faults that are not CPUID go to them), so Python's faulthandler, GCC's crash
 * handler and the like still work.
 *
 * Built and used by benchmarks/cpuid_mask.py for run.py --isa avx2. Code the process ran
 * before this constructor (glibc's own dispatch) saw the real CPU: the caller sets
 * GLIBC_TUNABLES for that. */
#define _GNU_SOURCE
#include <cpuid.h>
#include <dlfcn.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

#ifndef ARCH_SET_CPUID
#define ARCH_SET_CPUID 0x1012
#endif

typedef int (*sigaction_fn)(int, const struct sigaction *, struct sigaction *);

static volatile long traps;      /* CPUID instructions emulated so far */
static int active;               /* 1 once faulting is on and the handler installed */
static struct sigaction chained; /* SIGSEGV's handler before ours, or asked for after */

/* on: CPUID faults (ARCH_SET_CPUID 0); off: CPUID runs (1) */
static int cpuid_faulting(int on) {
    return (int)syscall(SYS_arch_prctl, ARCH_SET_CPUID, on ? 0 : 1);
}

/* Leaf 7 bits an AVX2-only CPU (x86-64-v3, e.g. AMD Zen 3) does not have. */
static void hide(unsigned leaf, unsigned sub, unsigned r[4]) {
    if (leaf == 7 && sub == 0) {
        /* EBX: avx512f, avx512dq, avx512ifma, avx512pf, avx512er, avx512cd, avx512bw, avx512vl */
        r[1] &= ~((1u << 16) | (1u << 17) | (1u << 21) | (1u << 26) | (1u << 27) |
                  (1u << 28) | (1u << 30) | (1u << 31));
        /* ECX: avx512vbmi, avx512vbmi2, avx512vnni, avx512bitalg, avx512vpopcntdq */
        r[2] &= ~((1u << 1) | (1u << 6) | (1u << 11) | (1u << 12) | (1u << 14));
        /* EDX: avx512_4vnniw, avx512_4fmaps, avx512_vp2intersect, amx-bf16, avx512fp16,
         * amx-tile, amx-int8 */
        r[3] &= ~((1u << 2) | (1u << 3) | (1u << 8) | (1u << 22) | (1u << 23) | (1u << 24) |
                  (1u << 25));
    } else if (leaf == 7 && sub == 1) {
        /* EAX: avx-vnni, avx512_bf16, amx-fp16, avx-ifma */
        r[0] &= ~((1u << 4) | (1u << 5) | (1u << 21) | (1u << 23));
    }
}

static sigaction_fn real_sigaction(void);

static void on_segv(int sig, siginfo_t *si, void *ctx) {
    ucontext_t *uc = ctx;
    greg_t *g = uc->uc_mcontext.gregs;
    const unsigned char *ip = (const unsigned char *)g[REG_RIP];
    /* a faulting CPUID is a general-protection fault (SI_KERNEL) at a readable address */
    if (si->si_code == SI_KERNEL && ip[0] == 0x0f && ip[1] == 0xa2) {
        unsigned r[4], leaf = (unsigned)g[REG_RAX], sub = (unsigned)g[REG_RCX];
        cpuid_faulting(0);
        __cpuid_count(leaf, sub, r[0], r[1], r[2], r[3]);
        cpuid_faulting(1);
        hide(leaf, sub, r);
        g[REG_RAX] = r[0];
        g[REG_RBX] = r[1];
        g[REG_RCX] = r[2];
        g[REG_RDX] = r[3];
        g[REG_RIP] += 2;
        traps++;
        return;
    }
    if (chained.sa_flags & SA_SIGINFO) {
        chained.sa_sigaction(sig, si, ctx);
        return;
    }
    if (chained.sa_handler != SIG_DFL && chained.sa_handler != SIG_IGN) {
        chained.sa_handler(sig);
        return;
    }
    /* no one else handles it: the default action, as without the shim (the fault repeats) */
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    real_sigaction()(sig, &dfl, NULL);
}

static sigaction_fn real_sigaction(void) {
    static sigaction_fn real;
    if (!real)
        real = (sigaction_fn)dlsym(RTLD_NEXT, "sigaction");
    return real;
}

int sigaction(int sig, const struct sigaction *act, struct sigaction *old) {
    if (sig == SIGSEGV && active) {
        if (old)
            *old = chained;
        if (act)
            chained = *act;
        return 0;
    }
    return real_sigaction()(sig, act, old);
}

/* signal() goes to the kernel without sigaction(), so it is interposed too (GCC's cc1plus
 * installs its crash handler with it, then runs CPUID). */
typedef void (*handler_fn)(int);

static handler_fn set_chained(handler_fn h) {
    handler_fn old = (chained.sa_flags & SA_SIGINFO) ? (handler_fn)chained.sa_sigaction
                                                     : chained.sa_handler;
    memset(&chained, 0, sizeof chained);
    chained.sa_handler = h;
    chained.sa_flags = SA_RESTART;
    return old;
}

static handler_fn interposed(const char *name, int sig, handler_fn h) {
    if (sig == SIGSEGV && active)
        return set_chained(h);
    handler_fn (*real)(int, handler_fn) = (handler_fn(*)(int, handler_fn))dlsym(RTLD_NEXT, name);
    return real(sig, h);
}

handler_fn signal(int sig, handler_fn h) { return interposed("signal", sig, h); }
handler_fn sysv_signal(int sig, handler_fn h) { return interposed("sysv_signal", sig, h); }

/* For the harness (ctypes): whether the mask is on in this process, and how many CPUID
 * instructions it answered. */
int rtinfer_cpuid_mask_active(void) { return active; }
long rtinfer_cpuid_mask_traps(void) { return traps; }

/* What CPUID leaf 7 now says: 1 when AVX512F is visible (it must not be). */
int rtinfer_cpuid_mask_avx512f_visible(void) {
    unsigned a, b, c, d;
    __cpuid_count(7, 0, a, b, c, d);
    return (b >> 16) & 1;
}

__attribute__((constructor)) static void rtinfer_cpuid_mask_init(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_segv;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    if (real_sigaction()(SIGSEGV, &sa, &chained) != 0) {
        fprintf(stderr, "rtinfer cpuid_mask: cannot install the SIGSEGV handler\n");
        return;
    }
    if (cpuid_faulting(1) != 0) {
        real_sigaction()(SIGSEGV, &chained, NULL);
        fprintf(stderr, "rtinfer cpuid_mask: CPUID faulting is not available here "
                        "(arch_prctl ARCH_SET_CPUID); the CPU is not masked\n");
        return;
    }
    active = 1;
}
