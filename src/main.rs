//! The `flumen` binary: the broker and the command-line client.

fn main() -> std::process::ExitCode {
    flumen::cli::main()
}
