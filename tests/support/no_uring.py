#!/usr/bin/env python3
"""no_uring: run a command with io_uring refused, as Docker's default seccomp
profile refuses it: a seccomp filter makes io_uring_setup fail with EPERM and
lets every other syscall through. The filter is kept across exec. With
`--bpf` it refuses bpf(2) instead (as that profile does without CAP_BPF).

    python3 tests/support/no_uring.py target/debug/sluice -c proxy.yaml
    python3 tests/support/no_uring.py --bpf target/debug/sluice -c proxy.yaml

The tests use it to check that `relay: uring` and `relay: sockmap` fall back
to `auto` and that `sluice doctor` says why. Python 3 standard library only
(ctypes).
"""

import ctypes
import os
import platform
import struct
import sys

PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_ERRNO = 0x00050000
EPERM = 1
# io_uring_setup is 425 on both (x86_64's table and the generic one aarch64 uses);
# bpf is 321 on x86_64 and 280 in the generic table.
ARCHES = {"x86_64": (0xC000003E, 425, 321), "aarch64": (0xC00000B7, 425, 280)}
LD_W_ABS, JEQ_K, RET_K = 0x20, 0x15, 0x06


def insn(code, k, jt=0, jf=0):
    return struct.pack("HBBI", code, jt, jf, k)


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]


def main():
    args = sys.argv[1:]
    bpf = args[:1] == ["--bpf"]
    if bpf:
        args = args[1:]
    if not args:
        sys.exit("usage: no_uring.py [--bpf] COMMAND [ARGS...]")
    arch, uring_nr, bpf_nr = ARCHES[platform.machine()]
    nr = bpf_nr if bpf else uring_nr
    prog = b"".join(
        [
            insn(LD_W_ABS, 4),  # seccomp_data.arch
            insn(JEQ_K, arch, 1, 0),
            insn(RET_K, SECCOMP_RET_ALLOW),
            insn(LD_W_ABS, 0),  # seccomp_data.nr
            insn(JEQ_K, nr, 0, 1),
            insn(RET_K, SECCOMP_RET_ERRNO | EPERM),
            insn(RET_K, SECCOMP_RET_ALLOW),
        ]
    )
    fprog = SockFprog(len(prog) // 8, prog)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        sys.exit(f"prctl(PR_SET_NO_NEW_PRIVS): {os.strerror(ctypes.get_errno())}")
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
        sys.exit(f"prctl(PR_SET_SECCOMP): {os.strerror(ctypes.get_errno())}")
    os.execvp(args[0], args)


if __name__ == "__main__":
    main()
