//! The `autofunnel` binary: parses the command line and hands over to the library.

/// mimalloc: composing and sending many small emails is allocation-heavy, and glibc's malloc
/// cost a fifth of the sender's CPU (BENCHMARKS.md, delivery). Built without transparent huge
/// pages (`no_thp`): asked for them, each 4 KiB it touched could fault in 2 MiB, and a node's
/// peak RSS was a third higher for no speed (BENCHMARKS.md, 2026-12-07).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    autofunnel::allocator::configure();
    autofunnel::cli::main()
}
