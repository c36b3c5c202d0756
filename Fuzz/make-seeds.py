#!/usr/bin/env python3
"""Writes the seed corpus of Sources/NetDMAFuzz (one small input per target) to Fuzz/corpus."""
import os, struct

here = os.path.dirname(os.path.abspath(__file__))
out = os.path.join(here, "corpus")
os.makedirs(out, exist_ok=True)

def desc(size, control, src, dst, nxt):
    """A NetDMA descriptor (64 bytes): size, control, source, destination, next, 4 more words."""
    return struct.pack("<IIQQQQQQQ", size, control, src, dst, nxt, 0, 0, 0, 0)

NULL, STATUS, FENCE, IRQ = 0x20, 0x08, 0x10, 0x01

# 0: CBDMA model (icx, profile 7): a NULL and a copy in the arena, started by the helper op.
arena = desc(1, NULL | STATUS, 0, 0, 0x10040) + desc(256, STATUS | IRQ, 0x10800, 0x10C00, 0)
seed = bytes([0, 7]) + struct.pack("<H", len(arena)) + arena + bytes([0])
seed += bytes([7, 0]) + struct.pack("<HQQH", 0x0120, 0xF00, 0, 2) + bytes([4, 40])
open(os.path.join(out, "ioat-model-start"), "wb").write(seed)
# The same on CB 1.2 (profile 0) with raw register writes: CHANCMD START.
seed = bytes([0, 0, 0, 0, 0]) + bytes([0x10]) + struct.pack("<HQ", 0x80 + 0x14, 1) + bytes([4, 20, 1 | 0x18]) + struct.pack("<H", 0x80)
open(os.path.join(out, "ioat-model-v1"), "wb").write(seed)

# 1: DSA model: read the capabilities, then a portal write of a memory move.
seed = bytes([1, 0]) + struct.pack("<H", 0) + bytes([0, 0, 0])
for off in (0x00, 0x10, 0x20, 0x30, 0x40, 0x90):
    seed += bytes([1 | 8]) + struct.pack("<H", off)
move = struct.pack("<IIQQQIHH", 0, 0x03 << 24 | 0x0C, 0x100, 0x800, 0xC00, 128, 0, 0) + bytes(20)
seed += bytes([2]) + move + struct.pack("<H", 0) + bytes([4, 30])
open(os.path.join(out, "dsa-model-portal"), "wb").write(seed)

# 2, 3: providers: a ring of copies, fills and NULLs, started and appended to.
def chain_seed(target):
    ds = b""
    for i in range(32):
        nxt = 0x100 | (i + 1) % 32
        kind = i % 4
        if kind == 0:
            ds += desc(1, NULL | STATUS, 0, 0, nxt)
        elif kind == 1:
            ds += desc(64 * i + 1, 0x01 << 24 | STATUS, 0x0102030405060708, 64 * i, nxt)
        else:
            ds += desc(32 * i + 8, STATUS | (FENCE if i % 5 == 0 else 0), 4096 + 64 * i, 128 * i, nxt)
    calls = bytes([0, 0, 4, 0]) + bytes([2, 4, 8, 0]) + bytes([4]) + bytes([5]) + bytes([2, 12, 6, 0]) + bytes([7, 30]) + bytes([6])
    return bytes([target, 0]) + ds + calls

open(os.path.join(out, "ioat-provider-chain"), "wb").write(chain_seed(2))
open(os.path.join(out, "dsa-provider-chain"), "wb").write(chain_seed(3))
