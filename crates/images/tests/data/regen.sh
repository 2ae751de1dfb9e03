#!/usr/bin/env bash
# Rebuilds the real binaries of crates/images/tests/real_code.rs and their
# oracle listings (GNU objdump's disassembly, as it prints it):
#   crates/images/tests/data/regen.sh
# Needs mingw-w64 (gcc-mingw-w64-x86-64, gcc-mingw-w64-i686; objdump comes
# with them). The listings are objdump's output with the header line naming
# the file's path removed, nothing else changed.
set -euo pipefail
cd "$(dirname "$0")"
flags=(-O2 -s -shared -nostdlib -fno-asynchronous-unwind-tables -Wall -Wextra -Werror
       -Wl,--dynamicbase -Wl,--nxcompat -Wl,--no-insert-timestamp)
x86_64-w64-mingw32-gcc "${flags[@]}" -Wl,--entry,DllMainCRTStartup -o callsites-x64.dll callsites.c -lkernel32
i686-w64-mingw32-gcc "${flags[@]}" -Wl,--entry,_DllMainCRTStartup@12 -o callsites-x86.dll callsites.c -lkernel32
x86_64-w64-mingw32-objdump -d -w -M intel callsites-x64.dll | tail -n +3 > callsites-x64.objdump.txt
i686-w64-mingw32-objdump -d -w -M intel callsites-x86.dll | tail -n +3 > callsites-x86.objdump.txt
ls -l callsites-*.dll callsites-*.objdump.txt
