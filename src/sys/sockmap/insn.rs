//! The verdict program, as eBPF instructions written out by hand: the
//! `struct bpf_insn` encoding (include/uapi/linux/bpf.h) and the ten
//! instructions sluice loads. No compiler (clang, bpf-linker) is needed to
//! build sluice: the program is small enough to read here.

/// One eBPF instruction, laid out as the kernel's `struct bpf_insn`:
/// opcode, destination and source registers in one byte (dst low nibble),
/// a signed 16-bit offset and a signed 32-bit immediate.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

/// The registers the program uses: R0 return value, R1–R5 helper
/// arguments (R1 holds the context, the `__sk_buff`, on entry), R6 kept
/// across calls, R10 the read-only frame pointer.
#[derive(Debug, Clone, Copy)]
#[repr(u8)]
pub enum Reg {
    R0 = 0,
    R1 = 1,
    R2 = 2,
    R3 = 3,
    R4 = 4,
    R6 = 6,
    R10 = 10,
}

// Opcode bits: class | operation | source (BPF_K: the immediate, BPF_X: a register).
const BPF_ALU64: u8 = 0x07;
const BPF_JMP: u8 = 0x05;
const BPF_LD: u8 = 0x00;
const BPF_LDX: u8 = 0x01;
const BPF_STX: u8 = 0x03;
const BPF_W: u8 = 0x00;
const BPF_JNE: u8 = 0x50;
const BPF_MOV: u8 = 0xb0;
const BPF_ADD: u8 = 0x00;
const BPF_CALL: u8 = 0x80;
const BPF_EXIT: u8 = 0x90;
const BPF_K: u8 = 0x00;
const BPF_X: u8 = 0x08;
const BPF_MEM: u8 = 0x60;
const BPF_IMM: u8 = 0x00;
const BPF_DW: u8 = 0x18;
/// `src_reg` of a 64-bit immediate load whose immediate is a map fd the
/// kernel swaps for the map's address when it loads the program.
const BPF_PSEUDO_MAP_FD: u8 = 1;

/// Helper numbers (`enum bpf_func_id`): stable kernel ABI.
pub const BPF_FUNC_GET_SOCKET_COOKIE: i32 = 46;
/// `bpf_sk_redirect_hash(skb, map, key, flags)`.
pub const BPF_FUNC_SK_REDIRECT_HASH: i32 = 72;

const fn insn(code: u8, dst: Reg, src: Reg, off: i16, imm: i32) -> Insn {
    Insn { code, regs: (dst as u8) | ((src as u8) << 4), off, imm }
}

/// `dst = src` (64-bit): `BPF_ALU64 | BPF_MOV | BPF_X`.
pub const fn mov64_reg(dst: Reg, src: Reg) -> Insn {
    insn(BPF_ALU64 | BPF_MOV | BPF_X, dst, src, 0, 0)
}

/// `dst = imm` (64-bit, sign-extended): `BPF_ALU64 | BPF_MOV | BPF_K`.
pub const fn mov64_imm(dst: Reg, imm: i32) -> Insn {
    insn(BPF_ALU64 | BPF_MOV | BPF_K, dst, Reg::R0, 0, imm)
}

/// `dst += imm` (64-bit): `BPF_ALU64 | BPF_ADD | BPF_K`.
pub const fn add64_imm(dst: Reg, imm: i32) -> Insn {
    insn(BPF_ALU64 | BPF_ADD | BPF_K, dst, Reg::R0, 0, imm)
}

/// `*(u64 *)(dst + off) = src`: `BPF_STX | BPF_MEM | BPF_DW`.
pub const fn store64(dst: Reg, off: i16, src: Reg) -> Insn {
    insn(BPF_STX | BPF_MEM | BPF_DW, dst, src, off, 0)
}

/// `dst = *(u32 *)(src + off)`: `BPF_LDX | BPF_MEM | BPF_W`.
pub const fn load32(dst: Reg, src: Reg, off: i16) -> Insn {
    insn(BPF_LDX | BPF_MEM | BPF_W, dst, src, off, 0)
}

/// `if dst != imm goto +off`: `BPF_JMP | BPF_JNE | BPF_K`.
pub const fn jne_imm(dst: Reg, imm: i32, off: i16) -> Insn {
    insn(BPF_JMP | BPF_JNE | BPF_K, dst, Reg::R0, off, imm)
}

/// `call helper`: `BPF_JMP | BPF_CALL`, the helper's number in the immediate.
pub const fn call(helper: i32) -> Insn {
    insn(BPF_JMP | BPF_CALL, Reg::R0, Reg::R0, 0, helper)
}

/// `exit`, returning R0: `BPF_JMP | BPF_EXIT`.
pub const fn exit() -> Insn {
    insn(BPF_JMP | BPF_EXIT, Reg::R0, Reg::R0, 0, 0)
}

/// `dst = map` (`BPF_LD | BPF_IMM | BPF_DW` with `BPF_PSEUDO_MAP_FD`): a
/// 64-bit load taking two instruction slots, the second holding the upper
/// half of the immediate (zero for an fd).
pub const fn load_map_fd(dst: Reg, map_fd: i32) -> [Insn; 2] {
    [
        Insn { code: BPF_LD | BPF_IMM | BPF_DW, regs: (dst as u8) | (BPF_PSEUDO_MAP_FD << 4), off: 0, imm: map_fd },
        Insn { code: 0, regs: 0, off: 0, imm: 0 },
    ]
}

/// The stream-verdict program: send every skb arriving on a socket out of
/// the socket stored in `target_map` under the arriving socket's cookie.
///
/// ```text
/// r2 = *(u32 *)(r1 + 0)        ; skb->len
/// if r2 != 0 goto +2           ; bytes: redirect them
/// r0 = 0                       ; SK_DROP: a bare FIN has no bytes to lose
/// exit
/// r6 = r1                      ; keep the skb: calls clobber r1–r5
/// call get_socket_cookie       ; r0 = cookie of the socket the skb arrived on
/// *(u64 *)(r10 - 8) = r0       ; the key, on the stack
/// r1 = r6                      ; skb
/// r2 = target_map              ; map
/// r3 = r10; r3 += -8           ; &key
/// r4 = 0                       ; flags: no BPF_F_INGRESS, so egress: out of the peer
/// call sk_redirect_hash        ; r0 = SK_PASS (redirected), or SK_DROP if no entry
/// exit
/// ```
///
/// A segment with no bytes (a bare FIN) is dropped, neither redirected nor
/// passed: either way it reaches a psock's send queue (`SK_PASS` falls
/// back to it when the socket's own ingress refuses an empty message),
/// where writing nothing counts as a broken pipe: `sk_psock_backlog` sets
/// `EPIPE` on that socket and stops its psock sending, stranding every
/// byte queued behind (measured: a 64 MiB echo stalled with 52 MB held).
/// TCP has handled the FIN before the program runs: the source reads EOF.
///
/// A cookie with no entry in the target map gets `SK_DROP`: the bytes are
/// lost, which is why `Sockmap::arm` fills the target map first and the
/// target entry outlives the attach entry.
pub fn verdict_program(target_map: i32) -> Vec<Insn> {
    let [ld, ld_hi] = load_map_fd(Reg::R2, target_map);
    vec![
        load32(Reg::R2, Reg::R1, 0),
        jne_imm(Reg::R2, 0, 2),
        mov64_imm(Reg::R0, 0),
        exit(),
        mov64_reg(Reg::R6, Reg::R1),
        call(BPF_FUNC_GET_SOCKET_COOKIE),
        store64(Reg::R10, -8, Reg::R0),
        mov64_reg(Reg::R1, Reg::R6),
        ld,
        ld_hi,
        mov64_reg(Reg::R3, Reg::R10),
        add64_imm(Reg::R3, -8),
        mov64_imm(Reg::R4, 0),
        call(BPF_FUNC_SK_REDIRECT_HASH),
        exit(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The encodings as `bpftool prog dump xlated opcodes` prints them.
    #[test]
    fn instructions_encode_as_the_kernel_expects() {
        assert_eq!(mov64_reg(Reg::R6, Reg::R1), Insn { code: 0xbf, regs: 0x16, off: 0, imm: 0 });
        assert_eq!(store64(Reg::R10, -8, Reg::R0), Insn { code: 0x7b, regs: 0x0a, off: -8, imm: 0 });
        assert_eq!(call(72), Insn { code: 0x85, regs: 0, off: 0, imm: 72 });
        assert_eq!(add64_imm(Reg::R3, -8), Insn { code: 0x07, regs: 0x03, off: 0, imm: -8 });
        assert_eq!(mov64_imm(Reg::R4, 0), Insn { code: 0xb7, regs: 0x04, off: 0, imm: 0 });
        assert_eq!(exit(), Insn { code: 0x95, regs: 0, off: 0, imm: 0 });
        assert_eq!(load32(Reg::R2, Reg::R1, 0), Insn { code: 0x61, regs: 0x12, off: 0, imm: 0 });
        assert_eq!(jne_imm(Reg::R2, 0, 2), Insn { code: 0x55, regs: 0x02, off: 2, imm: 0 });
        assert_eq!(load_map_fd(Reg::R2, 7)[0], Insn { code: 0x18, regs: 0x12, off: 0, imm: 7 });
        assert_eq!(std::mem::size_of::<Insn>(), 8);
    }
}
