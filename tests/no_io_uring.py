"""A process refused io_uring, as `kernel.io_uring_disabled=2` refuses it to every process, but
for this process and its children only (the sysctl is global, and other mounts run meanwhile):
a seccomp filter answers io_uring_setup with an errno.

    python3 -m tests.no_io_uring ERRNO COMMAND...   runs COMMAND that way
    refuse(errno)                                   makes the calling process so, for good
"""

from __future__ import annotations

import ctypes
import os
import struct
import sys

from fastpass.uring import abi

_PR_SET_NO_NEW_PRIVS = 38
_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2
_SECCOMP_RET_ERRNO = 0x00050000
_SECCOMP_RET_ALLOW = 0x7FFF0000
_INSN = struct.Struct("<HBBI")  # struct sock_filter: code, jt, jf, k
_LD_W_ABS, _JEQ_K, _RET_K = 0x20, 0x15, 0x06  # BPF_LD|BPF_W|BPF_ABS, BPF_JMP|BPF_JEQ|BPF_K, BPF_RET|BPF_K


def refuse(err: int) -> None:
    """From now on io_uring_setup fails with `err` in this process and every child it makes."""
    program = b"".join([
        _INSN.pack(_LD_W_ABS, 0, 0, 0),  # the syscall number (seccomp_data.nr)
        _INSN.pack(_JEQ_K, 0, 1, abi.SYS_SETUP),
        _INSN.pack(_RET_K, 0, 0, _SECCOMP_RET_ERRNO | err),
        _INSN.pack(_RET_K, 0, 0, _SECCOMP_RET_ALLOW),
    ])  # fmt: skip
    insns = ctypes.create_string_buffer(program, len(program))
    fprog = ctypes.create_string_buffer(struct.pack("<H6xQ", len(program) // _INSN.size, ctypes.addressof(insns)))
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) or libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, fprog):
        raise OSError(ctypes.get_errno(), "seccomp filter refused")


if __name__ == "__main__":
    refuse(int(sys.argv[1]))
    os.execvp(sys.argv[2], sys.argv[2:])
