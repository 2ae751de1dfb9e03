/* Real compiled call sites for rule 9's check (crates/images/tests/real_code.rs):
 * ordinary C, built by mingw-w64 gcc -O2 for x64 and i686 (regen.sh), holding
 * the call forms compilers emit: direct calls, calls through a register, a
 * struct member, a table, an import (call [rip+X] / call [X]), tail calls,
 * and a `syscall` / `sysenter` / `int 2Eh` as the kernel transitions. The
 * functions are exported so the optimiser keeps them. */
#include <windows.h>

typedef int (*op_fn)(int, int);

struct ops {
    const char *name;
    op_fn apply;
    op_fn fallback;
};

__declspec(noinline) static int add(int a, int b) { return a + b; }
__declspec(noinline) static int sub(int a, int b) { return a - b; }
__declspec(noinline) static int mul(int a, int b) { return a * b; }

static const struct ops table[] = {
    {"add", add, sub},
    {"sub", sub, add},
    {"mul", mul, add},
};

volatile op_fn chosen = add;

__declspec(dllexport) int cs_direct(int a, int b) { return add(a, b) * sub(a, b) + mul(a, 3); }

__declspec(dllexport) int cs_register(op_fn f, int a, int b) { return f(a, b) + f(b, a); }

__declspec(dllexport) int cs_member(const struct ops *o, int a, int b)
{
    int r = o->apply(a, b);
    return r + o->fallback(r, b);
}

__declspec(dllexport) int cs_table(unsigned i, int a, int b)
{
    int r = table[i % 3].apply(a, b);
    return table[(i + 1) % 3].fallback(r, a) + 1;
}

__declspec(dllexport) int cs_volatile(int a, int b) { return chosen(a, b) + 7; }

__declspec(dllexport) DWORD cs_import(DWORD ms)
{
    Sleep(ms);
    DWORD t = GetTickCount();
    SetLastError(t);
    return GetLastError() + 1;
}

__declspec(dllexport) int cs_tail(int a, int b) { return chosen(a + 1, b); }

__declspec(dllexport) int cs_switch(int k, int a, int b)
{
    switch (k) {
    case 0: return add(a, b) + 1;
    case 1: return sub(a, b) + 2;
    case 2: return mul(a, b) + 3;
    case 3: return add(b, a) * 5;
    case 4: return sub(b, a) * 7;
    case 5: return chosen(a, b) + 9;
    default: return 0;
    }
}

/* The kernel transitions: never called by the tests (they only read the
 * bytes), each ends its instruction right before the code that runs after
 * the kernel returns. */
#ifdef _WIN64
__declspec(dllexport) long cs_syscall(long ssn, void *h)
{
    long status;
    register void *r10 __asm__("r10") = h;
    __asm__ volatile("syscall" : "=a"(status) : "a"(ssn), "r"(r10) : "rcx", "r11", "memory");
    return status + 1;
}
#else
__declspec(dllexport) long cs_sysenter(long ssn)
{
    long status;
    __asm__ volatile("mov %%esp, %%edx\n\tsysenter" : "=a"(status) : "a"(ssn) : "edx", "memory");
    return status + 1;
}
#endif

__declspec(dllexport) long cs_int2e(long ssn, void *args)
{
    long status;
    __asm__ volatile("int $0x2e" : "=a"(status) : "a"(ssn), "d"(args) : "memory");
    return status + 1;
}

BOOL WINAPI DllMainCRTStartup(HINSTANCE h, DWORD reason, void *reserved)
{
    (void)h;
    (void)reserved;
    return reason != 0xFFFF;
}
