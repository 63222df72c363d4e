//! Probe placement: put each uprobe on an instruction the kernel *emulates*
//! rather than single-steps. A single-stepped probe hit costs a trap and a
//! return to user space for the step, around 30x an emulated hit in a VM and
//! about 2x on bare metal. The x86 kernel (arch/x86/kernel/uprobes.c)
//! emulates relative branches (jmp, jcc, call), `nop` and `push reg`.
//!
//! Moving the probe from the function's entry to its first emulated
//! instruction is correct only if, up to there:
//! - no instruction changes `rsp` (the caller's return address must still be
//!   at `[rsp]`), writes `[rsp]`, or writes a register the program reads
//!   (the arguments);
//! - no instruction transfers control (the probe must be reached once per
//!   call, and only on the entry path);
//! - no branch inside the function targets an instruction after the entry up
//!   to and including the probe (a loop back into the prologue would fire the
//!   probe twice per call or skip it).
//!
//! Indirect jumps (jump tables) have unknown targets; they are assumed not to
//! land inside the straight-line prologue before the first branch.

use iced_x86::{
    Code, Decoder, DecoderOptions, FlowControl, Instruction, InstructionInfoFactory, Mnemonic,
    OpAccess, Register,
};

/// How far into a function a probe may move.
const MAX_PROLOGUE_INSTRUCTIONS: usize = 16;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    /// Byte offset from the function's start.
    pub offset: u64,
    /// The instruction at that offset, disassembled.
    pub instruction: String,
    /// Whether the kernel emulates it (false: the fallback, offset 0).
    pub emulated: bool,
    /// Why this offset was chosen.
    pub reason: String,
}

/// Chooses the probe offset in `code`, the bytes of a whole function loaded at
/// `address`. `reads` are the registers the probe program reads (besides
/// `rsp`, which is always kept).
pub fn place(code: &[u8], address: u64, reads: &[Register]) -> Placement {
    place_with(code, address, reads, false)
}

/// Like [`place`], for a probe whose program tolerates firing twice in one
/// call: a loop may branch back to an instruction before the probe (a
/// compare-and-swap retry, as in `sem_trywait` and `sem_post`) provided the
/// loop does not change `rsp`, the stack or the registers the program reads,
/// so that the second hit sees the same call.
pub fn place_repeat_safe(code: &[u8], address: u64, reads: &[Register]) -> Placement {
    place_with(code, address, reads, true)
}

fn place_with(code: &[u8], address: u64, reads: &[Register], repeat_safe: bool) -> Placement {
    let instructions: Vec<Instruction> = Decoder::with_ip(64, code, address, DecoderOptions::NONE)
        .into_iter()
        .collect();
    let Some(first) = instructions.first() else {
        return fallback(
            String::new(),
            "the function's code could not be decoded".into(),
        );
    };
    let end = address + code.len() as u64;
    let mut info = InstructionInfoFactory::new();
    for insn in instructions.iter().take(MAX_PROLOGUE_INSTRUCTIONS) {
        if is_emulated(insn, code, address) {
            let offset = insn.ip() - address;
            if let Some(source) = branch_into(&instructions, address, end, offset) {
                let tolerated = repeat_safe
                    && loops_keep_the_call(&mut info, &instructions, address, end, offset, reads);
                if !tolerated {
                    return fallback(
                        text(first),
                        format!(
                            "the instruction at +{offset} is reached by a branch at {source:#x}"
                        ),
                    );
                }
                return Placement {
                    offset,
                    instruction: text(insn),
                    emulated: true,
                    reason: format!(
                        "first emulated instruction; the loop back from {source:#x} may fire \
                         it again in the same call, which this program tolerates"
                    ),
                };
            }
            return Placement {
                offset,
                instruction: text(insn),
                emulated: true,
                reason: if offset == 0 {
                    "the first instruction is emulated".into()
                } else {
                    "first emulated instruction; nothing before it changes rsp, [rsp] or the arguments".into()
                },
            };
        }
        if insn.flow_control() != FlowControl::Next {
            return fallback(
                text(first),
                format!(
                    "`{}` transfers control before any emulated instruction",
                    text(insn)
                ),
            );
        }
        if let Some(why) = clobbers(&mut info, insn, reads) {
            return fallback(
                text(first),
                format!("`{}` {why} before any emulated instruction", text(insn)),
            );
        }
    }
    fallback(
        text(first),
        "no emulated instruction in the prologue".into(),
    )
}

/// A function of an ELF file, where the kernel wants it: its file offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FunctionLocation {
    pub address: u64,
    pub file_offset: u64,
}

/// Places a probe on `symbol` of the ELF file `elf` (its bytes). Returns the
/// placement and the function's location.
///
/// Of several versions of a symbol (glibc keeps `pthread_cond_wait@GLIBC_2.2.5`
/// for old binaries beside the default `pthread_cond_wait@@GLIBC_2.3.2`), the
/// default one is taken: it is what programs linked today call.
pub fn place_symbol(
    elf: &[u8],
    symbol: &str,
    reads: &[Register],
    repeat_safe: bool,
) -> anyhow::Result<(Placement, FunctionLocation)> {
    use object::read::elf::ElfFile64;
    use object::{Object, ObjectSection, ObjectSymbol};
    let file = ElfFile64::<object::Endianness>::parse(elf)?;
    let versions = file
        .elf_section_table()
        .versions(file.endian(), file.data())?;
    let is_default = |s: &object::read::elf::ElfSymbol64<'_, '_, object::Endianness>| {
        versions
            .as_ref()
            .is_none_or(|v| !v.version_index(file.endian(), s.index()).is_hidden())
    };
    let sym = file
        .dynamic_symbols()
        .find(|s| s.name() == Ok(symbol) && !s.is_undefined() && is_default(s))
        .or_else(|| {
            file.symbols()
                .find(|s| s.name() == Ok(symbol) && !s.is_undefined())
        })
        .ok_or_else(|| anyhow::anyhow!("no symbol {symbol}"))?;
    let section = sym
        .section_index()
        .and_then(|i| file.section_by_index(i).ok())
        .ok_or_else(|| anyhow::anyhow!("{symbol} is in no section"))?;
    let code = section
        .data_range(sym.address(), sym.size().max(1))?
        .ok_or_else(|| anyhow::anyhow!("{symbol}'s code is outside its section"))?;
    let (section_offset, _) = section
        .file_range()
        .ok_or_else(|| anyhow::anyhow!("{symbol}'s section has no file data"))?;
    let location = FunctionLocation {
        address: sym.address(),
        file_offset: sym.address() - section.address() + section_offset,
    };
    Ok((
        place_with(code, sym.address(), reads, repeat_safe),
        location,
    ))
}

fn fallback(instruction: String, reason: String) -> Placement {
    Placement {
        offset: 0,
        instruction,
        emulated: false,
        reason,
    }
}

/// The kernel's emulated forms, with no prefix it would reject: relative
/// jmp/jcc/call, one-byte and multi-byte nop, and `push r64`.
fn is_emulated(insn: &Instruction, code: &[u8], address: u64) -> bool {
    let start = (insn.ip() - address) as usize;
    let bytes = &code[start..start + insn.len()];
    match insn.code() {
        Code::Jmp_rel8_64 | Code::Jmp_rel32_64 | Code::Call_rel32_64 => {
            matches!(bytes[0], 0xe8 | 0xe9 | 0xeb)
        }
        _ if insn.is_jcc_short_or_near() => matches!(bytes[0], 0x70..=0x7f | 0x0f),
        Code::Nopd | Code::Nopq | Code::Nopw => {
            bytes[0] == 0x90 || (bytes[0] == 0x0f && bytes[1] == 0x1f)
        }
        Code::Push_r64 => matches!(bytes[0], 0x50..=0x57) || (bytes[0] == 0x41 && bytes.len() == 2),
        _ => insn.mnemonic() == Mnemonic::Nop && bytes[0] == 0x0f && bytes.get(1) == Some(&0x1f),
    }
}

/// What `insn` changes that the probe needs, if anything.
fn clobbers(
    info: &mut InstructionInfoFactory,
    insn: &Instruction,
    reads: &[Register],
) -> Option<&'static str> {
    let info = info.info(insn);
    let writes = |access: OpAccess| {
        matches!(
            access,
            OpAccess::Write | OpAccess::ReadWrite | OpAccess::CondWrite | OpAccess::ReadCondWrite
        )
    };
    for used in info.used_registers() {
        if !writes(used.access()) {
            continue;
        }
        let full = used.register().full_register();
        if full == Register::RSP {
            return Some("changes rsp");
        }
        if reads.iter().any(|r| r.full_register() == full) {
            return Some("writes an argument register");
        }
    }
    if info
        .used_memory()
        .iter()
        .any(|m| writes(m.access()) && m.base().full_register() == Register::RSP)
    {
        return Some("writes the stack");
    }
    None
}

/// A direct branch in the function whose target is in (start, start+offset].
fn branch_into(instructions: &[Instruction], start: u64, end: u64, offset: u64) -> Option<u64> {
    instructions.iter().find_map(|insn| {
        let direct = matches!(
            insn.flow_control(),
            FlowControl::UnconditionalBranch | FlowControl::ConditionalBranch | FlowControl::Call
        );
        if !direct
            || !insn.is_call_near() && !insn.is_jmp_short_or_near() && !insn.is_jcc_short_or_near()
        {
            return None;
        }
        let target = insn.near_branch_target();
        (target > start && target <= start + offset && target < end).then_some(insn.ip())
    })
}

/// Whether every instruction from the probe (+`offset`) to the last branch
/// back into (0, offset] leaves `rsp`, the stack and `reads` alone.
fn loops_keep_the_call(
    info: &mut InstructionInfoFactory,
    instructions: &[Instruction],
    start: u64,
    end: u64,
    offset: u64,
    reads: &[Register],
) -> bool {
    let last_source = instructions
        .iter()
        .filter(|insn| {
            (insn.is_jmp_short_or_near() || insn.is_jcc_short_or_near())
                && (start + 1..=start + offset).contains(&insn.near_branch_target())
                && insn.near_branch_target() < end
        })
        .map(|insn| insn.ip())
        .max();
    let Some(last_source) = last_source else {
        return false;
    };
    instructions
        .iter()
        .filter(|insn| (start + offset..=last_source).contains(&insn.ip()))
        .all(|insn| {
            // A call inside the loop would leave the function: not a retry.
            !insn.is_call_near() && clobbers(info, insn, reads).is_none()
        })
}

fn text(insn: &Instruction) -> String {
    let mut out = String::new();
    let mut formatter = iced_x86::FastFormatter::new();
    formatter.format(insn, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Debian 12 glibc 2.36 `sem_trywait` (0x90e00): a compare-and-swap loop
    /// branches back to +3.
    const SEM_TRYWAIT: &[u8] = &[
        0x48, 0x8b, 0x07, // mov (%rdi),%rax
        0x85, 0xc0, // test %eax,%eax
        0x74, 0x11, // je +0x18
        0x48, 0x8d, 0x50, 0xff, // lea -0x1(%rax),%rdx
        0xf0, 0x48, 0x0f, 0xb1, 0x17, // lock cmpxchg %rdx,(%rdi)
        0x75, 0xf1, // jne +3
        0x31, 0xc0, // xor %eax,%eax
        0xc3, // ret
        0x0f, 0x1f, 0x00, // nopl (%rax)
        0x48, 0x8b, 0x05, 0xc1, 0x1f, 0x14, 0x00, // mov ...(%rip),%rax
        0x64, 0xc7, 0x00, 0x0b, 0x00, 0x00, 0x00, // movl $0xb,%fs:(%rax)
        0xb8, 0xff, 0xff, 0xff, 0xff, // mov $-1,%eax
        0xc3, // ret
    ];

    #[test]
    fn a_retry_loop_keeps_the_probe_at_the_entry_unless_repeat_safe() {
        let strict = place(SEM_TRYWAIT, 0x90e00, &[Register::RDI]);
        assert_eq!(strict.offset, 0);
        let tolerant = place_repeat_safe(SEM_TRYWAIT, 0x90e00, &[Register::RDI]);
        assert_eq!(tolerant.offset, 5, "{}", tolerant.reason);
        assert!(tolerant.emulated);
    }

    #[test]
    fn a_loop_that_changes_the_argument_is_not_tolerated() {
        // mov (%rdi),%rax; test; je +9; add $8,%rdi; jmp +3; ret
        let code = [
            0x48, 0x8b, 0x07, 0x85, 0xc0, 0x74, 0x09, 0x48, 0x83, 0xc7, 0x08, 0xeb, 0xf6, 0x90,
            0x90, 0xc3,
        ];
        let p = place_repeat_safe(&code, 0x1000, &[Register::RDI]);
        assert_eq!(p.offset, 0, "{}", p.reason);
    }

    fn recorded(name: &str) -> Vec<u8> {
        let path = format!(
            "{}/testdata/glibc-2.36-debian12-{name}.hex",
            env!("CARGO_MANIFEST_DIR")
        );
        let text = std::fs::read_to_string(path).unwrap();
        let hex: String = text.lines().filter(|l| !l.starts_with('#')).collect();
        (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn mutex_lock_moves_to_the_first_branch() {
        // mov eax,[rdi+10h]; mov edx,eax; and edx,17Fh; and eax,7Ch; jne ...
        let p = place(&recorded("pthread_mutex_lock"), 0x8c370, &[Register::RDI]);
        assert_eq!(p.offset, 14, "{p:?}");
        assert!(p.emulated && p.instruction.starts_with("jne"), "{p:?}");
    }

    #[test]
    fn mutex_trylock_stays_at_its_push() {
        let p = place(
            &recorded("pthread_mutex_trylock"),
            0x8d220,
            &[Register::RDI],
        );
        assert_eq!((p.offset, p.emulated), (0, true), "{p:?}");
        assert!(p.instruction.starts_with("push"), "{p:?}");
    }

    #[test]
    fn mutex_unlock_moves_past_a_write_to_an_unread_register() {
        // mov esi,1; jmp __pthread_mutex_unlock_usercnt: esi is not read.
        let p = place(&recorded("pthread_mutex_unlock"), 0x8dd50, &[Register::RDI]);
        assert_eq!((p.offset, p.emulated), (5, true), "{p:?}");
        // ... but not when the program reads rsi.
        let p = place(
            &recorded("pthread_mutex_unlock"),
            0x8dd50,
            &[Register::RDI, Register::RSI],
        );
        assert_eq!((p.offset, p.emulated), (0, false), "{p:?}");
    }

    #[test]
    fn stack_changes_keep_the_probe_at_the_entry() {
        // sub rsp,8; jmp +0
        let code = [0x48, 0x83, 0xec, 0x08, 0xeb, 0x00];
        let p = place(&code, 0x1000, &[Register::RDI]);
        assert_eq!((p.offset, p.emulated), (0, false), "{p:?}");
        assert!(p.reason.contains("rsp"), "{p:?}");
    }

    #[test]
    fn a_branch_back_into_the_prologue_keeps_the_probe_at_the_entry() {
        // 0: mov eax,[rdi]; 2: test eax,eax; 4: jne 2 (back into the prologue)
        let code = [0x8b, 0x07, 0x85, 0xc0, 0x75, 0xfc, 0xc3];
        let p = place(&code, 0x2000, &[Register::RDI]);
        assert_eq!((p.offset, p.emulated), (0, false), "{p:?}");
        assert!(p.reason.contains("branch"), "{p:?}");
    }

    #[test]
    fn a_return_before_any_emulated_instruction_keeps_the_entry() {
        let code = [0x31, 0xc0, 0xc3]; // xor eax,eax; ret
        let p = place(&code, 0x3000, &[Register::RDI]);
        assert_eq!((p.offset, p.emulated), (0, false), "{p:?}");
    }
}
