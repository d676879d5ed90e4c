//! Memory in small pages (Linux): transparent huge pages off for every sipcraft process;
//! and memory handed back when a worker goes quiet.
//!
//! mimalloc asks for huge pages on its arenas (`MADV_HUGEPAGE`), so under the kernel's
//! default `madvise` policy every process's heap grew and shrank in 2 MiB steps, and
//! khugepaged, scanning every 10 s, filled a partly used 2 MiB range into one huge page
//! (up to 511 pages of zeros each). Measured: the supervisor's RSS rose by 5.8 MiB ten
//! seconds after a burst of 9,000 registrations, with no traffic and no work of its own, in
//! about half the runs; `make bench`'s memory per registration at 10,000 moved between 313
//! and 2,129 bytes from run to run. A SIP server's heap is many small objects (bindings,
//! transactions) touched a few at a time, where huge pages buy little and cost memory.
//!
//! `PR_SET_THP_DISABLE` is per process, inherited by children and kept across exec, so the
//! supervisor sets it once for itself and for every child it starts. Measured with the
//! bench's load (15,000 REGISTERs a second): CPU per registration unchanged (0.0375 against
//! 0.0387 CPU-s per 1000, three rounds each); memory with 100,000 users loaded down by a
//! fifth (the dbagent 33 → 25.5 MiB, each worker about 50 → 37 MiB).

/// Turns transparent huge pages off for this process and its future children. Called first
/// thing in `main`; pages the allocator already took stay as they are. A kernel without the
/// call (before 3.15) keeps huge pages, which costs memory, not correctness.
pub fn small_pages() {
    #[cfg(target_os = "linux")]
    {
        #[allow(unsafe_code)]
        // SAFETY: prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0) takes no pointers and changes only
        // how this process's future page faults are served.
        unsafe {
            libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
        }
    }
}

/// Hands the memory this thread's heap has freed back to the system now. mimalloc returns
/// emptied pages lazily (a second after they empty, and only when the thread allocates
/// again), so a worker that fell quiet after a burst kept what the burst's transactions
/// had used, for as long as it stayed quiet: `make bench`'s memory per registration at
/// 10,000 moved between 313 and 2,129 bytes from run to run, a worker's share between
/// -195 and 723, with the same bindings in every replica. The worker calls this once it
/// has been quiet for a second after work (`sipcraft_sipworker::Args::give_back`).
pub fn give_back() {
    extern "C" {
        /// mimalloc's `void mi_collect(bool force)`, in the library the `mimalloc` crate
        /// links (declared here rather than through libmimalloc-sys's `extended` feature,
        /// which brings in one more crate for this single call).
        fn mi_collect(force: bool);
    }
    #[allow(unsafe_code)]
    // SAFETY: mi_collect takes no pointers; it frees and purges pages of the calling
    // thread's heap that hold no live allocation, and is safe to call at any time.
    unsafe {
        mi_collect(true);
    }
}
