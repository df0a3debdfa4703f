//! The process allocator's settings: mimalloc gives freed memory back to the system sooner
//! than by its default, so a node's resident memory follows its working set.

use std::ffi::c_long;

/// mimalloc's `mi_option_purge_delay` (`mimalloc.h` of mimalloc 3: the sixteenth option). The
/// bindings do not name it; `the_option_is_the_purge_delay` checks the number against the
/// variable mimalloc reads for it.
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Milliseconds mimalloc keeps freed memory before it gives it back to the system (its own
/// default is 1,000): a million leads' scheduler peaked at 110.7 MB with mimalloc's default,
/// 100.2 MB with 100 ms and 89.1 MB with 10 ms, for the same CPU time (BENCHMARKS.md,
/// 2026-12-07).
const PURGE_DELAY_MS: c_long = 10;

/// Sets the allocator's defaults; `MIMALLOC_PURGE_DELAY` in the environment still decides.
/// Call it first thing in `main`, before any thread starts (mimalloc's options are plain
/// variables).
pub fn configure() {
    // SAFETY: sets an integer option of the linked mimalloc, a valid option number; mimalloc
    // reads it each time it purges.
    unsafe { libmimalloc_sys::mi_option_set_default(PURGE_DELAY, PURGE_DELAY_MS) }
}

/// The purge delay in effect, in milliseconds.
pub fn purge_delay_ms() -> c_long {
    // SAFETY: reads an integer option of the linked mimalloc.
    unsafe { libmimalloc_sys::mi_option_get(PURGE_DELAY) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Run as a child with `MIMALLOC_PURGE_DELAY` set: prints the option numbered
    /// [`PURGE_DELAY`].
    #[test]
    #[ignore = "run by the_option_is_the_purge_delay in a child process"]
    fn print_purge_delay() {
        println!("purge delay: {}", purge_delay_ms());
    }

    #[test]
    fn the_option_is_the_purge_delay() {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "allocator::tests::print_purge_delay",
                "--ignored",
                "--nocapture",
            ])
            .env("MIMALLOC_PURGE_DELAY", "437")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains("purge delay: 437"), "{stdout}");
    }

    #[test]
    fn configure_sets_the_default_unless_the_environment_did() {
        configure();
        let want: c_long = match std::env::var("MIMALLOC_PURGE_DELAY") {
            Ok(v) => v.parse().unwrap(),
            Err(_) => PURGE_DELAY_MS,
        };
        assert_eq!(purge_delay_ms(), want);
    }
}
