"""The io_uring ABI as fastpass uses it: syscall numbers, flags, opcodes and the byte layouts of
the structures shared with the kernel, from include/uapi/linux/io_uring.h.  Names are the
kernel's without the IORING_ prefix; each is annotated with the Linux release that added it.
"""

from __future__ import annotations

import struct

# Syscall numbers: the same on every architecture (they come after the tables were unified).
SYS_SETUP = 425
SYS_ENTER = 426
SYS_REGISTER = 427

# io_uring_setup flags
SETUP_COOP_TASKRUN = 1 << 8  # 5.19: completions run when the task enters the kernel anyway
SETUP_SQE128 = 1 << 10  # 5.19: 128-byte SQEs (an 80-byte command area; FUSE-over-io_uring needs it)
SETUP_CQE32 = 1 << 11  # 5.19: 32-byte CQEs
SETUP_SINGLE_ISSUER = 1 << 12  # 6.0: one task submits
SETUP_DEFER_TASKRUN = 1 << 13  # 6.1: completions run only when the task asks for them

# io_uring_params.features
FEAT_SINGLE_MMAP = 1 << 0  # 5.4: the SQ and CQ rings are one mapping
FEAT_NODROP = 1 << 1  # 5.5: a full CQ keeps completions in a kernel list instead of dropping them

# io_uring_enter flags
ENTER_GETEVENTS = 1 << 0

# sq_ring flags (read by the application)
SQ_CQ_OVERFLOW = 1 << 1  # 5.8: completions wait in the kernel's overflow list

# io_uring_register opcodes
REGISTER_BUFFERS = 0  # 5.1
REGISTER_FILES = 2  # 5.1
REGISTER_PROBE = 8  # 5.6

# mmap offsets
OFF_SQ_RING = 0
OFF_CQ_RING = 0x8000000
OFF_SQES = 0x10000000

# SQE flags
SQE_FIXED_FILE = 1 << 0

# Opcodes (enum io_uring_op)
OP_NOP = 0  # 5.1
OP_READV = 1  # 5.1
OP_WRITEV = 2  # 5.1
OP_FSYNC = 3  # 5.1
OP_READ_FIXED = 4  # 5.1
OP_WRITE_FIXED = 5  # 5.1
OP_POLL_ADD = 6  # 5.1
OP_FALLOCATE = 17  # 5.6
OP_OPENAT = 18  # 5.6
OP_CLOSE = 19  # 5.6
OP_STATX = 21  # 5.6
OP_URING_CMD = 46  # 5.19
OP_NAMES = {
    OP_NOP: "NOP", OP_READV: "READV", OP_WRITEV: "WRITEV", OP_FSYNC: "FSYNC", OP_READ_FIXED: "READ_FIXED",
    OP_WRITE_FIXED: "WRITE_FIXED", OP_POLL_ADD: "POLL_ADD", OP_FALLOCATE: "FALLOCATE", OP_OPENAT: "OPENAT",
    OP_CLOSE: "CLOSE", OP_STATX: "STATX", OP_URING_CMD: "URING_CMD",
}  # fmt: skip

FSYNC_DATASYNC = 1 << 0

# struct io_uring_params (120 bytes): sq_entries, cq_entries, flags, sq_thread_cpu, sq_thread_idle,
# features, wq_fd, resv[3]; then io_sqring_offsets (head, tail, ring_mask, ring_entries, flags,
# dropped, array, resv1, user_addr) and io_cqring_offsets (head, tail, ring_mask, ring_entries,
# overflow, cqes, flags, resv1, user_addr).
PARAMS = struct.Struct("<7I12x" "7I4xQ" "7I4xQ")
PARAMS_FLAGS = 8  # byte offset of io_uring_params.flags, set before the call

# struct io_uring_sqe (64 bytes; SQE128 adds 64 more to the command area).  Every op writes all
# 64 bytes, padding zeroed by pack_into: the kernel refuses an SQE whose unused fields are not 0.
#   opcode u8, flags u8, ioprio u16, fd s32, off/addr2/cmd_op u64, addr u64, len u32,
#   op_flags u32 (rw_flags, fsync_flags, poll32_events, open_flags, statx_flags, ...), user_data u64,
#   buf_index u16, personality u16, splice_fd_in/file_index s32, addr3 u64, pad u64 (cmd[] from 48)
SQE = struct.Struct("<BBxxiQQIIQ24x")  # opcode, flags, fd, off, addr, len, op_flags, user_data
SQE_CMD_AT = 48  # the command area of URING_CMD: 16 bytes, 80 with SQE128
SQE_HEAD = struct.Struct("<BBxxiQQIIQ8x")  # SQE's fields up to the command area (its buf_index... zero)

# struct io_uring_cqe: user_data u64, res s32, flags u32 (CQE32: 16 more bytes)
CQE = struct.Struct("<Qi4x")  # (user_data, res)
CQE32 = struct.Struct("<Qi20x")

# struct io_uring_probe: last_op u8, ops_len u8, resv u16, resv2 u32[3]; then ops_len of
# struct io_uring_probe_op: op u8, resv u8, flags u16, resv2 u32.
PROBE_HEAD = 16
PROBE_OP = struct.Struct("<BxH4x")
PROBE_OPS = 256
OP_SUPPORTED = 1 << 0

IOVEC = struct.Struct("<QQ")  # struct iovec: base, len
