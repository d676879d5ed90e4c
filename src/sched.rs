//! How each process role asks to be scheduled (issue 7, bench/PROFILE.md). Set by the role's
//! entry point before its runtime starts, so every thread it makes inherits it. Only on Linux;
//! elsewhere, and where the kernel refuses, the defaults stay and a debug line says so.

/// A SIP worker asks for a short scheduling slice (100 µs). It runs in bursts of tens of
/// microseconds per message. Without the hint, a packet that arrives while another task holds
/// the CPU (the load generator, the other worker, the supervisor) waits until that task's
/// slice ends, 1.4 ms by default on the bench machine. Since Linux 6.12 (EEVDF), a task with a
/// shorter slice gets an earlier deadline and preempts on wake-up (`PREEMPT_SHORT`). The
/// worker's share of the CPU does not change. Measured: p99 REGISTER → 200 at 1,000/s
/// 151 → 135 µs. Older kernels ignore the size.
pub fn worker() {
    #[cfg(target_os = "linux")]
    linux::short_slice(100_000);
}

/// The dbagent runs at nice 10, below the SIP workers, so its bursts (journal batches, the
/// cache file: ~40 ms with 100k bindings, 200 ms when it was JSON) never hold up a request on a
/// busy CPU. It still gets any CPU the workers leave.
pub fn dbagent() {
    #[cfg(target_os = "linux")]
    linux::nice_at_least(10);
}

#[cfg(target_os = "linux")]
mod linux {
    /// Lowers this process's priority to `nice`, unless it is already that low.
    pub fn nice_at_least(nice: i32) {
        let now = rustix::process::getpriority_process(None).unwrap_or(0);
        if now < nice {
            if let Err(e) = rustix::process::nice(nice - now) {
                tracing::debug!(error = %e, "keeping the inherited priority");
            }
        }
    }

    /// `struct sched_attr` (include/uapi/linux/sched/types.h), its first version.
    #[repr(C)]
    struct SchedAttr {
        size: u32,
        policy: u32,
        flags: u64,
        nice: i32,
        priority: u32,
        runtime: u64,
        deadline: u64,
        period: u64,
    }
    const _: () = assert!(
        std::mem::size_of::<SchedAttr>() == 48,
        "SCHED_ATTR_SIZE_VER0"
    );

    /// Asks for a slice of `ns` nanoseconds for the calling thread, keeping its nice value.
    #[allow(unsafe_code)]
    pub fn short_slice(ns: u64) {
        let nice = rustix::process::getpriority_process(None).unwrap_or(0);
        let mut attr = SchedAttr {
            size: std::mem::size_of::<SchedAttr>() as u32,
            policy: libc::SCHED_OTHER as u32,
            flags: 0,
            // SCHED_OTHER takes its nice value from here: keep the one we have.
            nice,
            priority: 0,
            // For SCHED_OTHER, the requested slice.
            runtime: ns,
            deadline: 0,
            period: 0,
        };
        // SAFETY: `attr` is a valid `sched_attr` of the size it declares, alive for the call,
        // and mutable because the kernel may write `size` back (E2BIG); pid 0 is the calling
        // thread.
        let rc = unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &raw mut attr, 0) };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            tracing::debug!(error = %e, "keeping the kernel's default slice");
        }
    }
}
