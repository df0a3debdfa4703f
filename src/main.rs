//! The `autofunnel` binary: parses the command line and hands over to the library.

/// mimalloc: composing and sending many small emails is allocation-heavy, and glibc's malloc
/// cost a fifth of the sender's CPU (BENCHMARKS.md, delivery).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    autofunnel::cli::main()
}
