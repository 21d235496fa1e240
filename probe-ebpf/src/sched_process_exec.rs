//! `sched_process_exec` (raw tracepoint): selects a process for stdout/stderr capture when it
//! execs a Wasm runtime, and deselects a selected one that execs something else (crun
//! exec'ing a normal container's entrypoint). Two longest-prefix lookups in WASM_RUNTIMES,
//! no loops: the executable file's name (its dentry: the full basename, after symlinks) and
//! the task's new comm (the basename it was invoked by, at most 15 bytes). A newly selected
//! process is also put in SELECTIONS, which wakes the agent at once: the write hooks are
//! attached only while something is selected.

use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_boot_ns,
        bpf_probe_read_kernel_str_bytes,
    },
    macros::{map, raw_tracepoint},
    maps::{RingBuf, lpm_trie::Key},
    programs::RawTracePointContext,
};
use probe_common::{EXE_NAME_LEN, Selection};

use crate::{
    common::{BPF_RB_FORCE_WAKEUP, read_kernel, task_offsets},
    wasm_capture::{WASM_PIDS, WASM_RUNTIMES},
};

/// Newly selected processes: woken at once, the agent attaches the write hooks.
#[map]
static SELECTIONS: RingBuf = RingBuf::with_byte_size(4096, 0);

const KEY_BITS: u32 = (EXE_NAME_LEN * 8) as u32;

#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn sched_process_exec(ctx: RawTracePointContext) -> i32 {
    // TP_PROTO(struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
    let bprm: u64 = ctx.arg(2);
    let t = task_offsets();
    let file: u64 = read_kernel(bprm, t.bprm_file).unwrap_or(0);
    let dentry: u64 = read_kernel(file, t.file_dentry).unwrap_or(0);
    let name_ptr: u64 = read_kernel(dentry, t.dentry_name).unwrap_or(0);

    let mut runtime = None;
    if name_ptr != 0 {
        let mut name = [0u8; EXE_NAME_LEN];
        // SAFETY: the helper validates the address and bounds the copy by the buffer; a name
        // longer than the buffer is cut, which prefix patterns still match.
        if unsafe { bpf_probe_read_kernel_str_bytes(name_ptr as *const u8, &mut name) }.is_ok() {
            runtime = WASM_RUNTIMES.get(&Key::new(KEY_BITS, name)).copied();
        }
    }
    if runtime.is_none() {
        let mut name = [0u8; EXE_NAME_LEN];
        name[..16].copy_from_slice(&bpf_get_current_comm().unwrap_or([0; 16]));
        runtime = WASM_RUNTIMES.get(&Key::new(KEY_BITS, name)).copied();
    }

    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    match runtime {
        Some(runtime) => {
            // SAFETY: the value is not kept.
            let known = unsafe { WASM_PIDS.get(&tgid) }.is_some();
            let _ = WASM_PIDS.insert(&tgid, &runtime, 0);
            if !known {
                // A full buffer only delays the attach to the agent's next periodic check.
                let _ = SELECTIONS.output::<Selection>(
                    &Selection {
                        // SAFETY: helper without preconditions.
                        ktime_ns: unsafe { bpf_ktime_get_boot_ns() },
                        tgid,
                        runtime,
                    },
                    BPF_RB_FORCE_WAKEUP,
                );
            }
        }
        None => {
            let _ = WASM_PIDS.remove(&tgid);
        }
    }
    0
}
