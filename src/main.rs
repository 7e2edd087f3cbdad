//! The `portcullis` binary: parse arguments, set up logging, dispatch.

fn main() -> std::process::ExitCode {
    portcullis::cli::main()
}
